"""`ustack serve` argument handling: everything that fails before a TUN device exists.

The in-process tests call `main()` directly; they return before any socket or device is
touched. The last two run the real command as an unprivileged user and without
/dev/net/tun, inside a namespace of their own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, Netns

from ustack.cli import build_config, build_parser, main
from ustack.config import KNOBS, ConfigError


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_unknown_knob_exits_2_with_the_knob_list_on_one_line(capsys):
    assert main(["serve", "--set", "tcp_bogus=1"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1
    assert "tcp_bogus" in lines[0]
    assert all(knob in lines[0] for knob in KNOBS)


def test_setting_without_equals_sign_is_an_unknown_knob(capsys):
    assert main(["serve", "--set", "tcp_msl"]) == 2
    assert len(stderr_lines(capsys)) == 1


@pytest.mark.parametrize("setting", ["tcp_msl=0", "tcp_sack=2", "tcp_rmem=lots",
                                     "ip_local_port_range=5"])
def test_bad_value_exits_2_with_one_line(capsys, setting):
    assert main(["serve", "--set", setting]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1
    assert setting.split("=")[0] in lines[0]
    assert all(knob in lines[0] for knob in KNOBS)  # the line names the valid knobs


def test_a_bad_value_is_not_rescued_by_a_later_good_one(capsys):
    # Last value wins for valid values; every value must still be valid.
    assert main(["serve", "--set", "tcp_msl=0", "--set", "tcp_msl=5"]) == 2
    assert len(stderr_lines(capsys)) == 1


def test_set_last_value_wins():
    args = build_parser().parse_args(
        ["serve", "--set", "tcp_msl=5", "--set", "tcp_sack=0", "--set", "tcp_msl=7"])
    assert args.settings == ["tcp_msl=5", "tcp_sack=0", "tcp_msl=7"]
    config = build_config(args.settings)
    assert config.tcp_msl == 7
    assert config.tcp_sack == 0


def test_set_accepts_sysctl_prefix_and_port_range():
    config = build_config(["net.ipv4.ip_local_port_range=40000 40010"])
    assert config.ip_local_port_range == (40000, 40010)


def test_build_config_raises_config_error():
    with pytest.raises(ConfigError):
        build_config(["nope=1"])


def test_serve_defaults():
    args = build_parser().parse_args(["serve"])
    assert args.tun == "ustack0"
    assert str(args.address) == "10.77.0.2/24"
    assert str(args.host_address) == "10.77.0.1/24"
    assert (args.http, args.echo, args.discard) == (80, 7, 9)
    assert args.root is None and args.control is None and args.pcap is None
    assert args.settings == []


def test_control_and_pcap_are_accepted():
    args = build_parser().parse_args(["serve", "--control", "/run/u.sock", "--pcap", "x.pcap"])
    assert (args.control, args.pcap) == ("/run/u.sock", "x.pcap")


@pytest.mark.parametrize("argv", [
    ["--address", "10.77.0.300/24"],
    ["--address", "banana"],
    ["--host-address", "10.77.0.1/33"],
    ["--http", "65536"],
    ["--echo", "-1"],
    ["--discard", "nine"],
    ["--root", "/nonexistent/ustack-root"],
    ["--tun", "a-name-far-too-long-for-linux"],
    ["--log-level", "chatty"],
])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(["serve", *argv])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv", [
    ["connect", "10.77.0.1", "65536"],
    ["connect", "10.77.0.1", "0"],
    ["connect", "10.77.0.1", "http"],
    ["connect", "10.77.0.1", "80", "--linger", "-1"],
    ["capture", "start"],
    ["ladder", "--text"],
])
def test_tool_usage_errors_exit_2_before_any_control_socket(argv, capsys):
    """A wrong command line is a usage error (status 2, one `error:` line), told apart
    from a daemon that is not there (status 1)."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--control", "/nonexistent/ustack.sock"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv", [
    ["--address", "10.77.1.2/24"],           # not in the host side's network
    ["--address", "10.77.0.1/24"],           # same as the host side
])
def test_inconsistent_addresses_exit_2_with_one_line(capsys, argv):
    assert main(["serve", *argv]) == 2
    assert len(stderr_lines(capsys)) == 1


def test_no_command_exits_2(capsys):
    assert main([]) == 2


def test_port_zero_is_accepted(tmp_path: Path):
    args = build_parser().parse_args(
        ["serve", "--http", "0", "--echo", "0", "--discard", "0", "--root", str(tmp_path)])
    assert (args.http, args.echo, args.discard) == (0, 0, 0)
    assert args.root == tmp_path.resolve()


def test_module_entry_point_exit_status():
    # The real process, not main(): `python -m ustack` must turn main()'s value into
    # the exit status.
    proc = subprocess.run([PYTHON, "-m", "ustack", "serve", "--set", "x=1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1


def assert_one_line_exit_1(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("ustack: ")
    for word in words:
        assert word in lines[0]


@pytest.mark.tun
def test_serve_as_unprivileged_user_exits_1(netns: Netns):
    # In a namespace of our own so that, were the privilege drop to fail, the TUN
    # device would still be created (and deleted) there and nowhere else.
    proc = netns.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     PYTHON, "-m", "ustack", "serve", timeout=60)
    assert_one_line_exit_1(proc, "permission denied", "root")
    assert "ustack0" not in netns.run("ip", "link").stdout


@pytest.mark.tun
def test_serve_without_dev_net_tun_exits_1(netns: Netns):
    # A private mount namespace where /dev/net is an empty tmpfs: the device is missing.
    script = f"mount -t tmpfs none /dev/net && exec {PYTHON} -m ustack serve"
    proc = netns.run("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                     timeout=60)
    assert_one_line_exit_1(proc, "/dev/net/tun")
    assert "ustack0" not in netns.run("ip", "link").stdout


@pytest.mark.tun
def test_serve_when_name_is_taken_by_another_kind_of_link_exits_1(netns: Netns):
    made = netns.run("ip", "link", "add", "ustack0", "type", "veth", "peer", "name", "ustk-peer")
    assert made.returncode == 0, made.stderr
    proc = netns.run(PYTHON, "-m", "ustack", "serve", timeout=60)
    assert_one_line_exit_1(proc, "ustack0", "not a TUN device")

"""`serve --workers N` without a device: the steering program against its Python twin
(by interpreting the hand-assembled eBPF), the port slices, the divided budgets, the
fan-out merge, and the command line."""

from __future__ import annotations

import random
import struct
import subprocess

import pytest
from conftest import PYTHON, REPO

from ustack.config import Config
from ustack.fanout import merge
from ustack.io import steering
from ustack.workers import part_path, worker_config


def run_program(code: bytes, pkt: bytes) -> int:
    """A minimal eBPF interpreter for the instructions steering.program() uses."""
    regs = [0] * 11
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
    pc = 0
    mask = (1 << 64) - 1
    while True:
        op, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 15, regs_byte >> 4
        pc += 1
        cls = op & 7
        if cls == 0:  # LD ABS/IND
            size = {0x00: 4, 0x08: 2, 0x10: 1}[op & 0x18]
            at = imm + (regs[src] if op & 0xE0 == 0x40 else 0)
            if at + size > len(pkt):
                return 0  # an out-of-bounds load ends the program with 0
            regs[0] = int.from_bytes(pkt[at:at + size], "big")
        elif cls in (4, 7):  # ALU, ALU64
            b = regs[src] if op & 0x08 else imm & mask
            a = regs[dst]
            if cls == 4:
                a, b = a & 0xFFFFFFFF, b & 0xFFFFFFFF
            kind = op & 0xF0
            if kind == 0xB0:
                r = b
            elif kind == 0x50:
                r = a & b
            elif kind == 0x60:
                r = a << b
            elif kind == 0x70:
                r = a >> b
            elif kind == 0xA0:
                r = a ^ b
            elif kind == 0x20:
                r = a * b
            elif kind == 0x10:
                r = a - b
            else:
                r = a // b
            regs[dst] = r & (0xFFFFFFFF if cls == 4 else mask)
        elif cls == 5:
            if op == 0x95:
                return regs[0] & 0xFFFFFFFF
            a, b = regs[dst], imm & mask
            taken = {0x50: a != b, 0x20: a > b, 0xA0: a < b}[op & 0xF0]
            if taken:
                pc += off


def tcp_packet(saddr: bytes, sport: int, dport: int, ihl: int = 5, frag: int = 0,
               proto: int = 6) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 40 + 4 * (ihl - 5), 1, frag, 64,
                     proto, 0, saddr, bytes([10, 77, 0, 2]))
    return ip + bytes(4 * (ihl - 5)) + struct.pack("!HH", sport, dport) + bytes(16)


@pytest.mark.parametrize("n,lo,hi", [(2, 32768, 60999), (3, 40000, 40010), (4, 1024, 65535)])
def test_the_program_picks_what_steer_tcp_says(n, lo, hi):
    code = steering.program(lo, hi, n)
    rng = random.Random(n)
    slices = steering.port_slices(lo, hi, n)
    for _ in range(3000):
        saddr = bytes([10, 77, rng.randrange(256), rng.randrange(256)])
        sport = rng.randrange(1, 65536)
        dport = rng.choice([80, 7, rng.randrange(lo, hi + 1), rng.randrange(1, 65536)])
        ihl = rng.choice([5, 5, 8])
        want = steering.steer_tcp(n, lo, hi, saddr, sport, dport)
        assert run_program(code, tcp_packet(saddr, sport, dport, ihl)) % n == want
        if lo <= dport <= hi:  # an active open's SYN-ACK goes to the slice's owner
            assert slices[want][0] <= dport <= slices[want][1]
    assert run_program(code, tcp_packet(b"\x0a\x4d\0\1", 1, 40005, proto=1)) == 0  # ICMP
    assert run_program(code, tcp_packet(b"\x0a\x4d\0\1", 1, 40005, frag=185)) == 0
    assert run_program(code, b"\x45" + bytes(10)) == 0  # too short


def test_passive_opens_spread_even_over_even_ports():
    # Linux's connect() prefers even ports: the hash must still use both workers.
    host = bytes([10, 77, 0, 1])
    counts = [0, 0]
    for port in range(32768, 33768, 2):
        counts[steering.steer_tcp(2, 32768, 60999, host, port, 80)] += 1
    assert min(counts) > 200, counts  # of 500


def test_port_slices_cover_the_range_without_overlap():
    assert steering.port_slices(32768, 60999, 2) == [(32768, 46883), (46884, 60999)]
    assert steering.port_slices(40000, 40010, 3) == [(40000, 40002), (40003, 40005),
                                                      (40006, 40010)]
    with pytest.raises(ValueError, match="fewer ports than workers"):
        steering.port_slices(40000, 40001, 3)


def test_worker_config_divides_the_per_host_budgets():
    c = Config()
    w = worker_config(c, 2, 1, (46884, 60999))
    assert w.ip_local_port_range == (46884, 60999)
    assert w.tcp_max_tw_buckets == c.tcp_max_tw_buckets // 2
    assert w.tcp_challenge_ack_limit == c.tcp_challenge_ack_limit // 2
    c.tcp_challenge_ack_limit = 2**31 - 1  # "no limit" stays no limit
    c.tcp_max_tw_buckets = 1
    w = worker_config(c, 4, 0, (1, 2))
    assert w.tcp_challenge_ack_limit == 2**31 - 1 and w.tcp_max_tw_buckets == 0
    assert part_path("/run/ustack/x.sock", None) == "/run/ustack/x.sock"
    assert part_path("/run/ustack/x.sock", 1) == "/run/ustack/x.sock.w1"


def test_merge_sums_counters_concatenates_rows_and_keeps_identity():
    replies = [
        {"ok": True, "now": 10.0, "address": "10.77.0.2", "time_wait": 3,
         "connections": [{"local": "a"}], "counters": {"TcpInSegs": 5, "TcpCurrEstab": 1},
         "interval": 1.5, "first": False, "extra": {"nested": [1]}},
        {"ok": True, "now": 10.2, "address": "10.77.0.2", "time_wait": 4,
         "connections": [{"local": "b"}, {"local": "c"}],
         "counters": {"TcpInSegs": 7, "TcpCurrEstab": 2, "NewCounter": 1},
         "interval": 1.6, "first": False, "extra": {"nested": [2]}},
    ]
    m = merge(replies)
    assert m["ok"] is True and m["now"] == 10.0 and m["interval"] == 1.5
    assert m["address"] == "10.77.0.2" and m["first"] is False
    assert m["time_wait"] == 7
    assert m["counters"] == {"TcpInSegs": 12, "TcpCurrEstab": 3, "NewCounter": 1}
    assert m["connections"] == [{"local": "a", "worker": 0}, {"local": "b", "worker": 1},
                                {"local": "c", "worker": 1}]
    assert m["extra"] == {"nested": [1, 2]}


def serve(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "ustack", "serve", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_bad_workers_values_are_usage_errors():
    for bad in ("0", "-1", "x", "257"):
        r = serve("--workers", bad)
        assert r.returncode == 2 and "bad --workers" in r.stderr, (bad, r.stderr)


def test_a_port_range_smaller_than_the_workers_is_refused_before_any_device():
    r = serve("--workers", "3", "--set", "ip_local_port_range=40000 40001")
    assert r.returncode == 2
    assert "fewer ports than workers" in r.stderr

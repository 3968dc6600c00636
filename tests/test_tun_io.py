"""FdDevice, the frame I/O under TunDevice, over a datagram socketpair (no root needed).

A SOCK_DGRAM socketpair keeps message boundaries like a TUN fd does, and its small
buffer makes the kernel say EAGAIN, which a TUN fd rarely does on demand.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from ustack.io.tun import READ_BATCH, FdDevice, TunError, parse_interface


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def drain(sock: socket.socket) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(sock.recv(65536))
        except BlockingIOError:
            return frames


async def until(predicate, limit: int = 10000) -> None:
    """Let the loop run until predicate() holds (bounded by iterations, not time)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_reads_are_delivered_frame_by_frame(pair):
    ours, theirs = pair
    device = FdDevice(ours.fileno())
    got: list[bytes] = []
    device.start(asyncio.get_running_loop(), got.append)
    frames = [i.to_bytes(2, "big") * (i % 700 + 1) for i in range(READ_BATCH + 10)]
    for frame in frames:
        while True:  # the peer's queue is short (net.unix.max_dgram_qlen): yield on EAGAIN
            try:
                theirs.send(frame)
                break
            except BlockingIOError:
                await asyncio.sleep(0)
    await until(lambda: len(got) == len(frames))
    assert got == frames
    assert device.rx_frames == len(frames)
    device.close()


async def test_writes_queue_on_eagain_and_flush_in_order(pair):
    ours, theirs = pair
    device = FdDevice(ours.fileno(), queue_limit=100_000)
    device.start(asyncio.get_running_loop(), lambda frame: None)
    frames = [i.to_bytes(4, "big") * 256 for i in range(5000)]  # far more than the buffer
    for frame in frames:
        device.write(frame)
    assert device.queued > 0  # the socket buffer filled up
    received: list[bytes] = []
    for _ in range(10000):
        received += drain(theirs)
        if len(received) == len(frames):
            break
        await asyncio.sleep(0)
    assert received == frames
    assert device.queued == 0 and device.tx_dropped == 0
    assert device.tx_frames == len(frames)
    device.close()


async def test_full_queue_drops_and_counts(pair):
    ours, theirs = pair
    device = FdDevice(ours.fileno(), queue_limit=10)
    device.start(asyncio.get_running_loop(), lambda frame: None)
    for _ in range(5000):
        device.write(b"x" * 1024)
    assert device.queued == 10
    assert device.tx_dropped > 0
    assert device.tx_frames + device.queued + device.tx_dropped == 5000
    device.close()
    assert device.queued == 0
    device.write(b"after close")  # ignored, not an error
    device.close()  # idempotent


async def test_close_stops_reading(pair):
    ours, theirs = pair
    device = FdDevice(ours.fileno())
    got: list[bytes] = []
    device.start(asyncio.get_running_loop(), got.append)
    device.close()
    theirs.send(b"late")
    for _ in range(10):
        await asyncio.sleep(0)
    assert got == []


def test_parse_interface_defaults_to_24():
    assert str(parse_interface("10.77.0.1")) == "10.77.0.1/24"
    assert str(parse_interface("10.77.3.1/16")) == "10.77.3.1/16"
    with pytest.raises(ValueError):
        parse_interface("10.77.0.256/24")


def test_tun_error_is_an_exception():
    assert issubclass(TunError, Exception)

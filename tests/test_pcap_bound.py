"""The pcap writer when the disk is slow: frames queue for the writer thread up to a
bound in bytes, then are dropped and counted; the stack's side never waits on the disk
and the queue never grows past the bound. Without the thread and the bound, every frame
would wait for the slow write (or pile up in memory)."""

from __future__ import annotations

import threading

import dpkt

from ustack.pcap import PcapTap
from ustack.stats import Stats


def test_slow_disk_drops_and_counts(tmp_path):
    stats = Stats()
    tap = PcapTap(tmp_path / "slow.pcap", stats=stats, queue_bytes=10_000)
    gate = threading.Event()
    real = tap._writer.writepkt_time

    def stalled(frame, ts):  # a disk that does not answer until we say so
        gate.wait(10)
        real(frame, ts)

    tap._writer.writepkt_time = stalled
    frame = bytes(range(100))
    peak = 0
    for _ in range(1000):
        tap("in", frame)
        peak = max(peak, tap._queued)
    assert peak <= 10_000
    assert tap.dropped >= 1000 - 10_000 // 100 - 1  # all but what fits (and one in hand)
    assert stats["UstackPcapDropped"] == tap.dropped
    assert tap.frames + tap.dropped == 1000
    gate.set()
    tap.close()
    with open(tmp_path / "slow.pcap", "rb") as f:
        got = [buf for _ts, buf in dpkt.pcap.Reader(f)]
    assert len(got) == tap.frames and all(buf == frame for buf in got)


def test_fast_disk_keeps_every_frame(tmp_path):
    tap = PcapTap(tmp_path / "fast.pcap", queue_bytes=1 << 20)
    for i in range(500):
        tap("out", bytes([i % 256]) * 60)
    tap.close()
    with open(tmp_path / "fast.pcap", "rb") as f:
        got = [buf for _ts, buf in dpkt.pcap.Reader(f)]
    assert tap.dropped == 0 and len(got) == 500
    assert [buf[0] for buf in got] == [i % 256 for i in range(500)]

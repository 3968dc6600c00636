"""Packet capture: every frame in and out of the device, written as a pcap file.

A `PcapTap` is a stack tap (`stack.taps`, called with ("in" | "out", frame)) that writes
each frame with dpkt's pcap writer. TUN frames are bare IPv4 packets, so the file's link
type is LINKTYPE_RAW (101; libpcap maps it to DLT_RAW): `tcpdump -r FILE` and Wireshark
read it as raw IP. The timestamp is the wall clock when the stack saw the frame.

Frames are written by a thread of the capture's own, fed through a queue bounded in
bytes (`QUEUE_BYTES`): a slow or stalled disk never blocks the stack's loop nor grows
the daemon's memory; frames that find the queue full are dropped and counted
(`UstackPcapDropped`, and per capture in `ustack capture list`). The thread flushes
the file at most every `FLUSH_EVERY` seconds (and on stop), so a file being captured
can be read with `tcpdump -r` a moment later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dpkt

if TYPE_CHECKING:
    from .stack import StackShell

log = logging.getLogger("ustack.pcap")

LINKTYPE_RAW = 101  # pcap file header value for raw IPv4/IPv6 (libpcap LINKTYPE_RAW)
SNAPLEN = 65535
FLUSH_EVERY = 0.2
QUEUE_BYTES = 8 * 1024 * 1024  # frames waiting for the disk, at most
_STOP = None


class PcapTap:
    """One capture file. Call it as a tap; `close()` writes what is queued, flushes and
    closes the file."""

    def __init__(self, path: str | os.PathLike, loop: asyncio.AbstractEventLoop | None = None,
                 *, stats: dict | None = None, queue_bytes: int = QUEUE_BYTES) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - lives as long as the capture
        self._writer = dpkt.pcap.Writer(self._file, snaplen=SNAPLEN, linktype=LINKTYPE_RAW)
        self._file.flush()
        self._loop = loop  # unused since the writer thread; kept for callers
        self._stats = stats
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0  # bytes in the queue; the stack's thread adds, the writer subtracts
        self._lock = threading.Lock()
        self.queue_bytes = queue_bytes
        self.frames = 0
        self.dropped = 0
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=f"pcap {self.path.name}",
                                        daemon=True)
        self._thread.start()

    def __call__(self, direction: str, frame: bytes) -> None:
        if self.closed:
            return
        size = len(frame)
        with self._lock:
            if self._queued + size > self.queue_bytes:
                full = True
            else:
                full = False
                self._queued += size
        if full:  # the disk is behind: drop, count, carry on
            self.dropped += 1
            if self._stats is not None:
                self._stats["UstackPcapDropped"] += 1
            return
        self.frames += 1
        self._queue.put((time.time(), bytes(frame)))

    def _run(self) -> None:
        """The writer thread: frames to the file, a flush when the queue runs dry (at
        most every FLUSH_EVERY seconds), until close() sends _STOP."""
        last_flush = time.monotonic()
        dirty = False
        failed = False
        while True:
            try:
                item = self._queue.get(timeout=FLUSH_EVERY)
            except queue.Empty:
                item = False
            if item is _STOP:
                break
            if item:
                ts, frame = item
                with self._lock:
                    self._queued -= len(frame)
                if failed:
                    continue
                try:
                    self._writer.writepkt_time(frame, ts)
                    dirty = True
                except OSError as exc:  # disk full, file system gone: stop writing
                    log.warning("capture to %s stopped: %s", self.path, exc)
                    failed = True
                    self.closed = True
                    continue
            now = time.monotonic()
            if dirty and not failed and (item is False or now - last_flush >= FLUSH_EVERY):
                try:
                    self._file.flush()
                except OSError as exc:
                    log.warning("capture to %s stopped: %s", self.path, exc)
                    failed = True
                    self.closed = True
                dirty = False
                last_flush = now
        try:
            self._file.close()
        except OSError as exc:
            log.warning("closing capture %s: %s", self.path, exc)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: what is queued is written (for up to `timeout` seconds), then the file
        is closed."""
        if self._thread is None:
            return
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None  # type: ignore[assignment]


class Captures:
    """The captures running on one stack, by absolute file path."""

    def __init__(self, stack: StackShell) -> None:
        self.stack = stack
        self.taps: dict[str, PcapTap] = {}

    def start(self, path: str | os.PathLike) -> PcapTap:
        key = str(Path(path).absolute())
        if key in self.taps:
            raise ValueError(f"already capturing to {key}")
        tap = PcapTap(key, self.stack.loop, stats=self.stack.stats)
        self.taps[key] = tap
        self.stack.taps.append(tap)
        log.info("capture started: %s", key)
        return tap

    def stop(self, path: str | os.PathLike | None = None) -> list[PcapTap]:
        """Stop one capture (by path) or all of them (path None). Returns those stopped."""
        if path is None:
            keys = list(self.taps)
        else:
            key = str(Path(path).absolute())
            if key not in self.taps:
                raise ValueError(f"no capture to {key}")
            keys = [key]
        stopped = []
        for key in keys:
            tap = self.taps.pop(key)
            if tap in self.stack.taps:
                self.stack.taps.remove(tap)
            tap.close()
            stopped.append(tap)
            log.info("capture stopped: %s (%d frames)", key, tap.frames)
        return stopped

    def list(self) -> list[dict]:
        return [{"file": k, "frames": t.frames, "dropped": t.dropped}
                for k, t in self.taps.items()]

"""Packet capture: every frame in and out of the device, written as a pcap file.

A `PcapTap` is a stack tap (`stack.taps`, called with ("in" | "out", frame)) that writes
each frame with dpkt's pcap writer. TUN frames are bare IPv4 packets, so the file's link
type is LINKTYPE_RAW (101; libpcap maps it to DLT_RAW): `tcpdump -r FILE` and Wireshark
read it as raw IP. The timestamp is the wall clock when the stack saw the frame.

Writes go through a buffered file that is flushed at most every `FLUSH_EVERY` seconds
(and on stop), so a capture costs one buffered write per frame, yet a file being
captured can be read with `tcpdump -r` a moment later.
"""

from __future__ import annotations

import asyncio
import logging
import os
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


class PcapTap:
    """One capture file. Call it as a tap; `close()` flushes and closes the file."""

    def __init__(self, path: str | os.PathLike, loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - lives as long as the capture
        self._writer = dpkt.pcap.Writer(self._file, snaplen=SNAPLEN, linktype=LINKTYPE_RAW)
        self._file.flush()
        self._loop = loop
        self._flush_handle: asyncio.TimerHandle | None = None
        self.frames = 0
        self.closed = False

    def __call__(self, direction: str, frame: bytes) -> None:
        if self.closed:
            return
        try:
            self._writer.writepkt_time(bytes(frame), time.time())
        except OSError as exc:  # disk full, file system gone: stop, do not kill the stack
            log.warning("capture to %s stopped: %s", self.path, exc)
            self.close()
            return
        self.frames += 1
        if self._loop is None:
            self._file.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self.closed:
            try:
                self._file.flush()
            except OSError as exc:
                log.warning("capture to %s stopped: %s", self.path, exc)
                self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        try:
            self._file.close()
        except OSError as exc:
            log.warning("closing capture %s: %s", self.path, exc)


class Captures:
    """The captures running on one stack, by absolute file path."""

    def __init__(self, stack: StackShell) -> None:
        self.stack = stack
        self.taps: dict[str, PcapTap] = {}

    def start(self, path: str | os.PathLike) -> PcapTap:
        key = str(Path(path).absolute())
        if key in self.taps:
            raise ValueError(f"already capturing to {key}")
        tap = PcapTap(key, self.stack.loop)
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
        return [{"file": k, "frames": t.frames} for k, t in self.taps.items()]

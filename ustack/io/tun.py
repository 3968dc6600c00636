"""A Linux TUN interface as a stack device.

The kernel sees an ordinary point-to-point interface (`ustack0`, 10.77.0.1/24 by
default) and routes the rest of that subnet into it; every IPv4 packet it sends there
arrives here as one `read()`, and every frame we `write()` is delivered to the kernel
as if it came off a wire. `IFF_NO_PI` means frames are bare IP packets, no 4-byte
packet-information header. The device is not persistent: closing the fd removes the
interface, so a crashed daemon leaves nothing behind.

With offloads (`offload=` "on" or "auto", the daemon's default) the device is opened
with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4) (LINUX-SPEC-2 section 1):
every packet, both ways, then has a 10-byte virtio-net header in front
(ustack.wire.vnet). The kernel hands us TCP super-segments of up to 64 KB with their
checksum left for us to trust (NEEDS_CSUM), and completes the checksums of, and
segments, the super-segments we write.

This module knows nothing about TCP; it moves frames and counts what it had to drop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import os
import struct
from collections import deque
from collections.abc import Callable

import pytun

from ..wire import vnet
from . import MAX_MTU, MIN_MTU, OFFLOAD_CHOICES

log = logging.getLogger("ustack.tun")

TUN_PATH = "/dev/net/tun"
# Frames drained per readiness callback. Without a cap a flood from the kernel could
# starve timers and application callbacks; with it, the loop gets a turn every batch.
READ_BATCH = 512
# Biggest possible IPv4 packet; a read never truncates whatever MTU is configured, nor
# a super-segment (LINUX-SPEC-2 item 203: a short buffer truncates silently).
READ_SIZE = 65535

# if_tun.h (LINUX-SPEC-2 item 212; the asm-generic _IOC layout of x86-64 and arm64).
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02


class TunError(Exception):
    """The TUN device could not be opened or configured; the message says why."""


def parse_interface(text: str, default_prefix: int = 24) -> ipaddress.IPv4Interface:
    """`"10.77.0.1/24"` (or a bare address, taking `default_prefix`) -> IPv4Interface."""
    if "/" not in text:
        text = f"{text}/{default_prefix}"
    return ipaddress.IPv4Interface(text)


def _open_error(name: str, exc: OSError | pytun.Error) -> TunError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code == errno.ENOENT or not os.path.exists(TUN_PATH):
        return TunError(f"{TUN_PATH} does not exist (load the tun module: modprobe tun)")
    if code in (errno.EPERM, errno.EACCES):
        return TunError(f"permission denied creating TUN device {name}: "
                        "run as root or with CAP_NET_ADMIN")
    if code == errno.EBUSY:
        return TunError(f"TUN device name {name} is already in use")
    if code == errno.EINVAL and os.path.exists(f"/sys/class/net/{name}"):
        return TunError(f"an interface named {name} exists and is not a TUN device")
    detail = exc.args[1] if len(exc.args) > 1 else str(exc)
    return TunError(f"cannot create TUN device {name}: {detail}")


class FdDevice:
    """Frame I/O over any non-blocking, message-preserving fd (a TUN fd; in tests, one
    end of a socketpair): batched reads into `receive`, writes with a bounded queue."""

    def __init__(self, fd: int, *, name: str = "fd", queue_limit: int = 4096,
                 vnet: bool = False, tso: bool = False) -> None:
        self.fd = fd
        self.name = name
        # vnet: every packet has a virtio-net header (IFF_VNET_HDR); tso: the kernel
        # takes partial checksums and super-segments (TUNSETOFFLOAD accepted). The
        # shell reads `tso` to decide how it builds TCP frames.
        self.vnet = vnet
        self.tso = tso
        os.set_blocking(fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Frames the kernel could not take right now, oldest first. Bounded: when it is
        # full we drop, the way a NIC's ring does, and TCP retransmits.
        self._queue: deque[tuple] = deque()  # the buffers of one writev() each
        self._queue_limit = queue_limit
        self._writer_armed = False
        self.rx_frames = 0
        self.rx_gso = 0  # super-segments among them
        self.rx_bad_vnet = 0  # a header the kernel should never send: dropped
        self.tx_frames = 0
        self.tx_gso = 0
        self.tx_dropped = 0
        self.closed = False

    def start(self, loop: asyncio.AbstractEventLoop, receive: Callable[..., None]) -> None:
        """Deliver every frame read from the fd to `receive(frame)`, from `loop`'s
        reader; with a virtio-net header, `receive(frame, csum_ok=, gso=)`: the frame
        as a memoryview past the header, whether the kernel vouches for its checksums,
        and the segment size of a super-segment."""
        self._loop = loop
        fd = self.fd

        def on_readable() -> None:
            for _ in range(READ_BATCH):
                try:
                    frame = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:  # e.g. EIO while the link is being torn down
                    log.debug("read from %s failed: %s", self.name, exc)
                    return
                if not frame:  # EOF (a socketpair peer closed); a TUN fd never says so
                    loop.remove_reader(fd)
                    return
                self.rx_frames += 1
                receive(frame)

        def on_readable_vnet() -> None:
            size = vnet.SIZE
            unpack = vnet.HDR.unpack_from
            for _ in range(READ_BATCH):
                try:
                    buf = os.read(fd, READ_SIZE + size)
                except BlockingIOError:
                    return
                except OSError as exc:
                    log.debug("read from %s failed: %s", self.name, exc)
                    return
                if len(buf) <= size:
                    if not buf:
                        loop.remove_reader(fd)
                    else:
                        self.rx_bad_vnet += 1
                    return
                self.rx_frames += 1
                flags, gso_type, _, gso_size, _, _ = unpack(buf)
                if gso_type & ~vnet.GSO_ECN not in (vnet.GSO_NONE, vnet.GSO_TCPV4):
                    self.rx_bad_vnet += 1  # UDP or IPv6 GSO: never ours
                    continue
                if gso_type:
                    self.rx_gso += 1
                # NEEDS_CSUM: built by a local socket, never on a wire; Linux trusts
                # it too (skb_csum_unnecessary()). DATA_VALID: verified before us.
                # A view past the header, not a copy of up to 64 KB.
                receive(memoryview(buf)[size:], csum_ok=bool(flags & 3),
                        gso=gso_size if gso_type else 0)

        loop.add_reader(fd, on_readable_vnet if self.vnet else on_readable)
        if self._queue and not self._writer_armed:  # written to before start()
            loop.add_writer(fd, self._flush)
            self._writer_armed = True

    def write(self, frame: bytes) -> None:
        """Hand one IPv4 frame with complete checksums to the kernel; queue it if the
        kernel is busy. On a `vnet` device it goes behind a header that says so."""
        self._send((vnet.PLAIN, frame) if self.vnet else (frame,))

    def write_parts(self, hdr: bytes, *parts: bytes) -> None:
        """One packet given in pieces (e.g. headers, then a payload that stays where it
        lies) behind its virtio-net header: one writev(), one packet (item 200)."""
        self._send((hdr, *parts) if self.vnet else parts)

    def _send(self, bufs: tuple) -> None:
        if self.closed:
            return
        if self._queue:  # keep order: nothing overtakes frames already waiting
            self._enqueue(bufs)
            return
        try:
            self._write(bufs)
        except BlockingIOError:
            self._enqueue(bufs)
        except OSError as exc:
            # A frame the kernel refuses (EINVAL, EIO during teardown) is lost like
            # any other packet; raising here would unwind the stack's flush.
            self.tx_dropped += 1
            log.debug("write to %s failed: %s", self.name, exc)

    def _write(self, bufs: tuple) -> None:
        os.writev(self.fd, bufs)
        if self.vnet and bufs[0][1]:
            self.tx_gso += 1
        self.tx_frames += 1

    def _enqueue(self, bufs: tuple) -> None:
        if len(self._queue) >= self._queue_limit:
            self.tx_dropped += 1
            return
        self._queue.append(bufs)
        if not self._writer_armed and self._loop is not None:
            self._loop.add_writer(self.fd, self._flush)
            self._writer_armed = True

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            try:
                self._write(queue[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self.tx_dropped += 1
                log.debug("write to %s failed: %s", self.name, exc)
            queue.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.fd)
        self._writer_armed = False

    @property
    def queued(self) -> int:
        """Frames waiting for the fd to become writable."""
        return len(self._queue)

    def close(self) -> None:
        """Stop reading and writing; queued frames are dropped. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
            if self._writer_armed:
                self._loop.remove_writer(self.fd)
        self._writer_armed = False
        self._queue.clear()


class TunDevice(FdDevice):
    """One TUN interface: opened and configured in `__init__`, driven by a loop after
    `start()`, removed by `close()`."""

    def __init__(self, name: str = "ustack0", host_address: str = "10.77.0.1/24", *,
                 mtu: int = 1500, queue_limit: int = 4096, offload: str = "off",
                 multi_queue: bool = False) -> None:
        """`offload`: "on" (fail unless the kernel takes TUN_F_CSUM | TUN_F_TSO4),
        "auto" (use them if it does) or "off" (no virtio-net header at all).
        `multi_queue`: IFF_MULTI_QUEUE, this fd is queue 0 (see MultiQueueTun)."""
        if offload not in OFFLOAD_CHOICES:
            raise TunError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)}, not {offload!r}")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise TunError(f"MTU {mtu} is outside {MIN_MTU}..{MAX_MTU}")
        iface = parse_interface(host_address)
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI
        if offload != "off":
            flags |= pytun.IFF_VNET_HDR
        if multi_queue:
            flags |= pytun.IFF_MULTI_QUEUE
        try:
            dev = pytun.TunTapDevice(name=name, flags=flags)
        except (OSError, pytun.Error) as exc:
            raise _open_error(name, exc) from None
        tso = False
        if offload != "off":
            try:
                # By value, not by pointer (item 204); TSO4 needs CSUM, and EINVAL is
                # the documented answer of a kernel without them.
                fcntl.ioctl(dev.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
                tso = True
            except OSError as exc:
                if offload == "on":
                    dev.close()
                    raise TunError(f"the kernel refuses TUN offloads on {name}: "
                                   f"{exc.strerror} (use --offload off or auto)") from None
                log.info("no TUN offloads on %s (%s): one packet per frame", name, exc)
        try:
            dev.addr = str(iface.ip)
            dev.netmask = str(iface.netmask)
            dev.mtu = mtu
            dev.up()
        except (OSError, pytun.Error) as exc:
            dev.close()
            detail = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise TunError(f"cannot configure {name} as {iface}: {detail}") from None
        super().__init__(dev.fileno(), name=dev.name, queue_limit=queue_limit,
                         vnet=offload != "off", tso=tso)
        self._dev = dev
        self.host_address = iface
        self.mtu = mtu

    def __repr__(self) -> str:
        return f"<TunDevice {self.name} {self.host_address}>"

    def close(self) -> None:
        """Stop I/O and close the fd; the (non-persistent) interface disappears."""
        if self.closed:
            return
        super().close()
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- multi-queue
# LINUX-SPEC-2 items 212-216: every queue of an IFF_MULTI_QUEUE device is its own
# open("/dev/net/tun") + TUNSETIFF with the same name and flags; queue index = attach
# order; a packet for queue i is read from fd i only.
TUNSETIFF = 0x400454CA
IFF_MULTI_QUEUE = 0x0100


class TunQueue(FdDevice):
    """One queue of a multi-queue TUN device, as one worker's device: it reads and
    writes this queue's fd only. Closing it closes the fd; the interface goes when the
    last fd of every process is closed (the supervisor holds them all until the end)."""

    def __init__(self, fd: int, index: int, *, name: str, mtu: int,
                 host_address: ipaddress.IPv4Interface, queue_limit: int = 4096,
                 vnet: bool = False, tso: bool = False) -> None:
        super().__init__(fd, name=name, queue_limit=queue_limit, vnet=vnet, tso=tso)
        self.index = index
        self.mtu = mtu
        self.host_address = host_address

    def __repr__(self) -> str:
        return f"<TunQueue {self.name}#{self.index}>"

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        try:
            os.close(self.fd)
        except OSError:
            pass


class MultiQueueTun:
    """A TUN interface with `n` queues and a steering program (ustack.io.steering)
    that sends every connection's packets to one queue; `queues[k]` is worker k's.
    The supervisor opens it before forking and `close()`s it at the end."""

    def __init__(self, name: str, host_address: str, n: int, *, port_range: tuple[int, int],
                 mtu: int = 1500, queue_limit: int = 4096, offload: str = "off") -> None:
        from . import steering

        if not 2 <= n <= 256:  # MAX_TAP_QUEUES (item 214)
            raise TunError(f"a multi-queue TUN device has 2 to 256 queues, not {n}")
        first = TunDevice(name, host_address, mtu=mtu, queue_limit=queue_limit,
                          offload=offload, multi_queue=True)
        self.name = first.name
        self.mtu = mtu
        self.host_address = first.host_address
        self.vnet, self.tso = first.vnet, first.tso
        self._first = first
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | IFF_MULTI_QUEUE
        if first.vnet:
            flags |= pytun.IFF_VNET_HDR
        fds = [os.dup(first.fd)]  # queue 0, closable without closing pytun's fd
        try:
            for _ in range(n - 1):
                fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
                fds.append(fd)
                # Same name, same flags: the kernel attaches the fd as the next queue.
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", self.name.encode(), flags))
            try:
                prog = steering.load(*port_range, n)
            except (OSError, ValueError) as exc:
                raise TunError(f"cannot load the steering program for {n} workers: {exc}"
                               " (--workers needs bpf(2); use --workers 1)") from None
            try:
                fcntl.ioctl(first.fd, steering.TUNSETSTEERINGEBPF, struct.pack("i", prog))
            except OSError as exc:
                raise TunError(f"TUNSETSTEERINGEBPF on {self.name}: {exc.strerror}") from None
            finally:
                os.close(prog)  # the device holds its own reference
        except BaseException:
            for fd in fds:
                os.close(fd)
            first.close()
            raise
        self.queues = [TunQueue(fd, k, name=self.name, mtu=mtu, host_address=self.host_address,
                                queue_limit=queue_limit, vnet=self.vnet, tso=self.tso)
                       for k, fd in enumerate(fds)]

    def close(self) -> None:
        """Close every queue's fd (the parent's references); the interface disappears
        once the workers' references are gone too."""
        for q in self.queues:
            q.close()
        self._first.close()

    def keep_only(self, index: int) -> TunQueue:
        """In worker `index` after fork(): drop this process's references to the other
        queues (and to pytun's fd); the supervisor still holds them."""
        for q in self.queues:
            if q.index != index:
                q.close()
        # pytun's fd (queue 0's file too) stays: closing it under the pytun object
        # would let a later fd reuse the number it closes at exit.
        return self.queues[index]

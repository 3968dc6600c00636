"""A TUN steering program: which queue (worker) gets each kernel -> ustack packet.

Without one, a multi-queue TUN device picks the queue of a packet from its flow table
or a keyed hash that userspace cannot compute (LINUX-SPEC-2 items 216-218,
tun_automq_select_queue()). That is fine for connections the kernel opens (the hash of
the SYN and of every later segment is the same, and the worker that answers writes on
its own queue), but not for connections ustack opens: the first SYN-ACK is sent before
the flow entry of our SYN exists, and entries expire 3-4 s after the last write. So the
daemon installs its own choice with TUNSETSTEERINGEBPF (item 216: the program's return
value modulo the number of queues, tun_ebpf_select_queue()), deterministic per
four-tuple and the same for every segment of a connection:

- the destination port (ustack's port) in the ephemeral range `lo..hi`: worker
  `(dport - lo) // span`, capped to `n - 1`; each worker connects only from its own
  slice of the range (span ports each, the last one takes the rest), so the SYN-ACK of
  its active open comes back to it;
- any other TCP packet (a connection the kernel opened to one of our listeners): a
  multiplicative hash of the kernel's port and address, which spreads clients over the
  workers (the kernel's connect() prefers even ports, Linux __inet_hash_connect(), so a
  bare `sport % n` would give every connection to worker 0 of two);
- not TCP, or a non-first fragment: queue 0.

The program is eBPF (the ioctl takes a BPF_PROG_TYPE_SOCKET_FILTER program fd, not a
classic BPF filter), loaded with the bpf(2) system call through ctypes and assembled
here by hand: 28 instructions using the legacy packet loads (LD_ABS/LD_IND, allowed in
socket filters, offsets from the IP header on a TUN device since it has no link header;
they return 0 from the program when the packet is too short).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct

# bpf(2) (include/uapi/linux/bpf.h); the syscall number is per architecture.
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int), LINUX-SPEC-2 item 212

# Instruction classes and fields (include/uapi/linux/bpf_common.h, bpf.h).
_LD, _JMP, _ALU, _ALU64 = 0x00, 0x05, 0x04, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND = 0x20, 0x40
_K, _X = 0x00, 0x08
_MOV, _AND, _LSH, _RSH, _XOR, _MUL, _SUB, _DIV = 0xB0, 0x50, 0x60, 0x70, 0xA0, 0x20, 0x10, 0x30
_JNE, _JGT, _JLT, _EXIT = 0x50, 0x20, 0xA0, 0x90

GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant (2^32 / phi)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    if imm >= 1 << 31:
        imm -= 1 << 32  # imm is an s32
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def port_slices(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """The ephemeral range `lo..hi` cut into `n` slices (first port, last port), in
    worker order; the last slice takes the remainder."""
    span = (hi - lo + 1) // n
    if span < 1:
        raise ValueError(f"ip_local_port_range {lo}-{hi} has fewer ports than workers ({n})")
    return [(lo + k * span, hi if k == n - 1 else lo + (k + 1) * span - 1) for k in range(n)]


def program(lo: int, hi: int, n: int) -> bytes:
    """The steering program for `n` workers and the ephemeral range `lo..hi`."""
    span = (hi - lo + 1) // n
    code = [
        _insn(_ALU64 | _MOV | _X, dst=6, src=1),            # r6 = skb (LD_ABS needs it)
        _insn(_LD | _ABS | _B, imm=9),                       # r0 = IP protocol
        _insn(_JMP | _JNE | _K, dst=0, imm=6, off=0),        # not TCP -> queue 0
        _insn(_LD | _ABS | _H, imm=6),                       # r0 = flags + fragment offset
        _insn(_ALU64 | _AND | _K, dst=0, imm=0x1FFF),
        _insn(_JMP | _JNE | _K, dst=0, imm=0, off=0),        # a later fragment -> queue 0
        _insn(_LD | _ABS | _B, imm=0),                       # r0 = version + IHL
        _insn(_ALU64 | _AND | _K, dst=0, imm=0x0F),
        _insn(_ALU64 | _LSH | _K, dst=0, imm=2),             # IHL * 4
        _insn(_ALU64 | _MOV | _X, dst=7, src=0),             # r7 = TCP header offset
        _insn(_LD | _IND | _H, src=7, imm=2),                # r0 = dport (ustack's port)
        _insn(_JMP | _JLT | _K, dst=0, imm=lo, off=7),       # below the range -> hash
        _insn(_JMP | _JGT | _K, dst=0, imm=hi, off=6),       # above the range -> hash
        _insn(_ALU64 | _SUB | _K, dst=0, imm=lo),
        _insn(_ALU64 | _DIV | _K, dst=0, imm=span),          # (dport - lo) // span
        _insn(_JMP | _JGT | _K, dst=0, imm=n - 1, off=1),
        _insn(_JMP | _EXIT),
        _insn(_ALU64 | _MOV | _K, dst=0, imm=n - 1),         # the remainder: last worker
        _insn(_JMP | _EXIT),
        _insn(_LD | _IND | _H, src=7, imm=0),                # hash: r0 = sport
        _insn(_ALU64 | _MOV | _X, dst=8, src=0),
        _insn(_LD | _ABS | _W, imm=12),                      # r0 = source address
        _insn(_ALU64 | _XOR | _X, dst=0, src=8),
        _insn(_ALU | _MUL | _K, dst=0, imm=GOLDEN),          # 32-bit multiply
        _insn(_ALU | _RSH | _K, dst=0, imm=16),              # its top 16 bits
        _insn(_JMP | _EXIT),
        _insn(_ALU64 | _MOV | _K, dst=0, imm=0),             # queue 0
        _insn(_JMP | _EXIT),
    ]
    # The two "-> queue 0" jumps (patched here) go to the last two instructions.
    target = len(code) - 2
    for i in (2, 5):
        c, regs, _, imm = struct.unpack("<BBhi", code[i])
        code[i] = struct.pack("<BBhi", c, regs, target - i - 1, imm)
    return b"".join(code)


def steer_tcp(n: int, lo: int, hi: int, saddr: bytes, sport: int, dport: int) -> int:
    """The queue `program(lo, hi, n)` picks for a TCP segment kernel -> ustack (to
    ustack's port `dport` from the kernel's `saddr`:`sport`): the same rule in Python,
    for the tests and for the worker that reports where a connection belongs."""
    if lo <= dport <= hi:
        return min((dport - lo) // ((hi - lo + 1) // n), n - 1)
    h = ((int.from_bytes(saddr, "big") ^ sport) * GOLDEN & 0xFFFFFFFF) >> 16
    return h % n


class SteeringError(OSError):
    pass


def load(lo: int, hi: int, n: int) -> int:
    """Load the program; its fd (the caller closes it once the device holds it)."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise SteeringError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    insns = program(lo, hi, n)
    buf = ctypes.create_string_buffer(insns)
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name[16]; the rest zero.
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_SOCKET_FILTER, len(insns) // 8,
                       ctypes.addressof(buf), ctypes.addressof(license_), 1,
                       ctypes.sizeof(log), ctypes.addressof(log), 0, 0, b"ustack_steer")
    attr_buf = ctypes.create_string_buffer(attr, 128)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_PROG_LOAD), attr_buf,
                      ctypes.c_uint(128))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise SteeringError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}"
                            + (f" ({detail[-1]})" if detail else ""))
    return fd

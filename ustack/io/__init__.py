"""Devices a `Stack` can be attached to.

A device is anything with `write(frame: bytes) -> None` that calls `stack.receive(frame)`
for each IPv4 frame it gets:

- `tun.TunDevice`: a real Linux TUN interface (needs root). Its frame I/O lives in
  `tun.FdDevice`, which works over any datagram fd, so it can be tested without root.
- `memory.MemoryLink`: two stacks wired together in-process, for tests and benchmarks.
"""

# Link settings the command line checks before anything opens a device (kept here, not
# in tun.py, so that parsing arguments does not import pytun).
MAX_MTU = 65535
MIN_MTU = 576  # RFC 791's datagram every host must accept; an MSS of 536 fits
OFFLOAD_CHOICES = ("auto", "on", "off")

"""Devices a `Stack` can be attached to.

A device is anything with `write(frame: bytes) -> None` that calls `stack.receive(frame)`
for each IPv4 frame it gets:

- `tun.TunDevice`: a real Linux TUN interface (needs root). Its frame I/O lives in
  `tun.FdDevice`, which works over any datagram fd, so it can be tested without root.
- `memory.MemoryLink`: two stacks wired together in-process, for tests and benchmarks.
"""

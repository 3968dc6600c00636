"""ustack: a userspace TCP/IPv4 stack over a TUN device, built to get the close path right."""

__version__ = "0.1.0"

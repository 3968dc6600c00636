"""Congestion control as modules that own their state, chosen by name like Linux's
`net.ipv4.tcp_congestion_control` (`ustack serve --set tcp_congestion_control=reno`).

A new algorithm is a new module with a `CongestionControl` subclass, registered here.
"""

from __future__ import annotations

from .base import IW_SEGMENTS, CongestionControl
from .reno import Reno

_REGISTRY: dict[str, type[CongestionControl]] = {}


def register(cls: type[CongestionControl]) -> type[CongestionControl]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    """Linux's tcp_available_congestion_control."""
    return tuple(_REGISTRY)


def create(name: str, mss: int) -> CongestionControl:
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} "
                         f"(available: {', '.join(available())})") from None
    return cls(mss)


register(Reno)

__all__ = ["CongestionControl", "IW_SEGMENTS", "Reno", "available", "create", "register"]

"""Congestion control as modules that own their state, chosen by name like Linux's
`net.ipv4.tcp_congestion_control` (`ustack serve --set tcp_congestion_control=reno`);
the default is `cubic`, as Linux's.

A new algorithm is a new module with a `CongestionControl` subclass, registered here.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from .base import IW_SEGMENTS, CongestionControl
from .cubic import Cubic
from .reno import Reno

_REGISTRY: dict[str, type[CongestionControl]] = {}


def register(cls: type[CongestionControl]) -> type[CongestionControl]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    """Linux's tcp_available_congestion_control."""
    return tuple(_REGISTRY)


def create(name: str, mss: int, config: Any = None,
           stats: MutableMapping[str, int] | None = None) -> CongestionControl:
    """A controller by name; `config` (a Config) carries its knobs, `stats` the
    counters it increments."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} "
                         f"(available: {', '.join(available())})") from None
    ctl = cls(mss)
    if config is not None or stats is not None:
        ctl.configure(config, stats)
    return ctl


# Linux's order in tcp_available_congestion_control: reno is built in, cubic the default.
register(Reno)
register(Cubic)

__all__ = ["CongestionControl", "Cubic", "IW_SEGMENTS", "Reno", "available", "create",
           "register"]

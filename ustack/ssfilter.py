"""Connection filters (the control protocol's "filter" field; trace, ladder, ss, the
status page): a tiny tcpdump-like language. A leaf module: no ustack imports.

A filter is a list of terms, all of which must match (AND). A term matches a connection
if either of its two endpoints matches it:

    host 10.77.0.1     an address
    port 80            a port
    10.77.0.1:43120    an endpoint (address and port)
    10.77.0.1          same as `host 10.77.0.1`
    :80  or  80        same as `port 80`

The empty filter matches everything. `parse()` raises ValueError with a message that
names the bad term.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Term:
    host: str | None = None
    port: int | None = None

    def matches(self, ep: Endpoint) -> bool:
        return (self.host is None or self.host == ep[0]) and \
            (self.port is None or self.port == ep[1])

    def __str__(self) -> str:
        if self.host is not None and self.port is not None:
            return f"{self.host}:{self.port}"
        if self.host is not None:
            return f"host {self.host}"
        return f"port {self.port}"


@dataclass(frozen=True, slots=True)
class Filter:
    terms: tuple[Term, ...] = ()

    def matches(self, a: Endpoint, b: Endpoint) -> bool:
        return all(t.matches(a) or t.matches(b) for t in self.terms)

    def __str__(self) -> str:
        return " ".join(str(t) for t in self.terms) or "(all)"

    def __bool__(self) -> bool:
        return bool(self.terms)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"bad port {text!r}: must be 0..65535")
    return value


def _host(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"bad IPv4 address {text!r}") from None


def parse(words: Sequence[str] | str | None) -> Filter:
    if words is None:
        return Filter()
    if isinstance(words, str):
        words = words.split()
    terms: list[Term] = []
    it = iter(words)
    for w in it:
        if w in ("host", "port"):
            value = next(it, None)
            if value is None:
                raise ValueError(f"filter: {w!r} needs a value")
            terms.append(Term(host=_host(value)) if w == "host" else Term(port=_port(value)))
        elif w == "and":
            continue
        elif ":" in w:
            h, _, p = w.rpartition(":")
            terms.append(Term(host=_host(h) if h else None, port=_port(p)))
        elif w.isdigit():
            terms.append(Term(port=_port(w)))
        else:
            try:
                terms.append(Term(host=_host(w)))
            except ValueError:
                raise ValueError(
                    f"filter: cannot understand {w!r} (use host ADDR, port N or ADDR:PORT)"
                ) from None
    return Filter(tuple(terms))


def split_endpoint(text: str) -> Endpoint:
    """'10.77.0.1:80' -> ('10.77.0.1', 80)."""
    h, _, p = text.rpartition(":")
    return h, int(p)

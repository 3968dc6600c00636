"""The dashboard's URLs, answered without I/O: `respond()` maps a path and query to
(status, content type, body), and http.py sends it.

    /ustack/                       the page (also `/` when the server has no --root)
    /ustack/static/NAME            its script, style sheet and the vendored uPlot
    /ustack/status.json?QUERY      one bounded frame: summary, ring, one table page
        filter=host 10.77.0.1 port 80   the ss filter grammar (ustack/ssfilter.py), with
                                        ss's `state NAME` and `exclude NAME` words too:
                                        "state time-wait host 10.77.0.1", "exclude bucket"
        state=ESTAB,TIME-WAIT           states, comma-separated: as the table prints them
                                        (ESTAB) or as ss spells them (established,
                                        connected, bucket ...); default: all
        offset=N&limit=N                the table page (limit at most model.PAGE_MAX)
        since=T                         only ring samples newer than T (epoch seconds)
    /ustack/ladder/ID.svg          the live ladder of connection ID (LOCAL-PEER)
    /ustack/plot/ID.svg            the sender plot (`ustack plot`'s SVG, plots.py): 404
                                   "not recorded" until a recording covers it

Bad input (a filter that does not parse, a state that does not exist, an offset that is
not a number) is a 400 with the reason, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from importlib import resources
from urllib.parse import parse_qs

from ...ctlproto import SS_FILTERS, SS_STATES
from ...ssfilter import parse as parse_filter
from ...tools.ss import ALIASES
from .model import PAGE_MAX, Dashboard, parse_conn_id

log = logging.getLogger(__name__)

PREFIX = "/ustack/"
JSON = "application/json"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
SVG = "image/svg+xml"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": HTML, ".png": "image/png", ".svg": SVG, ".LICENSE": TEXT}
# The states as the table prints them (ss's column), and ss's own filter names.
STATE_NAMES = frozenset(SS_STATES)

_STATIC_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")

Reply = tuple[int, str, bytes]
# The sender plot's hook: a function (local, peer) -> SVG bytes, or None for "not
# recorded". The lead wires `ustack plot`'s recorder in here.
PlotHook = Callable[[str, str], bytes | None]


class BadRequest(ValueError):
    pass


def _static(name: str) -> bytes | None:
    """A file of the package's static/ directory (package data), or None."""
    if not _STATIC_NAME.fullmatch(name) or ".." in name:
        return None
    try:
        return resources.files(__package__).joinpath("static", *name.split("/")).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, OSError):
        return None


class Web:
    def __init__(self, dashboard: Dashboard, plot: PlotHook | None = None) -> None:
        self.dashboard = dashboard
        self.plot = plot
        self._cache: dict[str, bytes | None] = {}

    def respond(self, path: str, query: str, *, root: bool) -> Reply | None:
        """The reply for `path`, or None when the dashboard does not own it (the caller
        goes on: files, /status.json, 404). `root`: the server has a --root, so `/`
        is the files' and the page is only at /ustack/."""
        if path in ("/", "/index.html") and not root:
            return self._page()
        if path == "/ustack":
            return self._page()  # the page's own URLs are absolute
        if not path.startswith(PREFIX):
            return None
        rest = path[len(PREFIX):]
        try:
            if rest in ("", "index.html"):
                return self._page()
            if rest == "status.json":
                return 200, JSON, self.status_json(query)
            if rest.startswith("static/"):
                return self._file(rest[len("static/"):])
            if rest.startswith("ladder/") and rest.endswith(".svg"):
                return self._ladder(rest[len("ladder/"):-len(".svg")])
            if rest.startswith("plot/") and rest.endswith(".svg"):
                return self._plot(rest[len("plot/"):-len(".svg")])
        except BadRequest as exc:
            return 400, TEXT, f"bad request: {exc}\n".encode()
        return 404, TEXT, b"not found\n"

    def _page(self) -> Reply:
        body = self._cached("index.html")
        if body is None:
            return 500, TEXT, b"dashboard files missing from the installation\n"
        return 200, HTML, body

    def _file(self, name: str) -> Reply:
        body = self._cached(name)
        if body is None:
            return 404, TEXT, b"not found\n"
        ext = name[name.rfind("."):] if "." in name else ""
        return 200, STATIC_TYPES.get(ext, "application/octet-stream"), body

    def _cached(self, name: str) -> bytes | None:
        if name not in self._cache:
            self._cache[name] = _static(name)  # a handful of files, read once
        return self._cache[name]

    def _ladder(self, ident: str) -> Reply:
        conn = parse_conn_id(ident)
        if conn is None:
            raise BadRequest(f"connection id {ident!r} is not LOCAL-PEER "
                             "(e.g. 10.77.0.2:80-10.77.0.1:43120)")
        return 200, SVG, self.dashboard.ladders.svg(*conn)

    def _plot(self, ident: str) -> Reply:
        conn = parse_conn_id(ident)
        if conn is None:
            raise BadRequest(f"connection id {ident!r} is not LOCAL-PEER")
        body = self.plot(*conn) if self.plot is not None else None
        if body is None:
            return 404, TEXT, b"not recorded\n"
        return 200, SVG, body

    def status_json(self, query: str) -> bytes:
        q = parse_qs(query, keep_blank_values=True, max_num_fields=16)
        words = q.get("filter", [""])[0].split()
        states, words = _state_words(words)
        try:
            flt = parse_filter(words)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        text = q.get("state", [""])[0].strip()
        if text:
            asked = frozenset().union(*(state_set(w) for w in text.split(",") if w.strip()))
            states = asked if states is None else states & asked
        offset = _int(q, "offset", 0, 0, 1 << 31)
        limit = _int(q, "limit", 50, 1, PAGE_MAX)
        since = q.get("since", [""])[0]
        try:
            since_t = float(since) if since else None
        except ValueError:
            raise BadRequest(f"since={since!r} is not a number") from None
        snap = self.dashboard.summary(flt, states, offset, limit, since_t)
        return json.dumps(snap, separators=(",", ":")).encode()


def state_set(name: str) -> frozenset[str]:
    """The table's states a name stands for: ESTAB (as printed) or established,
    connected, bucket ... (as `ss state NAME` takes them)."""
    name = name.strip()
    if name.upper() in STATE_NAMES:
        return frozenset((name.upper(),))
    key = ALIASES.get(name.lower(), name.lower())
    if key in SS_FILTERS:
        return SS_FILTERS[key]
    raise BadRequest(f"unknown state {name!r} (as ss spells them: {', '.join(SS_FILTERS)}; "
                     f"or as the table prints them: {', '.join(SS_STATES)})")


def _state_words(words: list[str]) -> tuple[frozenset[str] | None, list[str]]:
    """ss's `state NAME` and `exclude NAME` taken out of a filter: (the states, None for
    no state word; the remaining words, for ssfilter). Several `state`s add up, as in
    ss; `exclude` alone starts from all states."""
    wanted: set[str] | None = None
    excluded: set[str] = set()
    rest: list[str] = []
    it = iter(words)
    for w in it:
        if w.lower() in ("state", "exclude"):
            name = next(it, None)
            if name is None:
                raise BadRequest(f"filter: {w!r} needs a state name")
            if w.lower() == "state":
                wanted = (wanted or set()) | state_set(name)
            else:
                excluded |= state_set(name)
        else:
            rest.append(w)
    if wanted is None and not excluded:
        return None, rest
    return frozenset((set(SS_STATES) if wanted is None else wanted) - excluded), rest


def _int(q: dict, name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name, [""])[0]
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r} is not a number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={value} out of range {lo}..{hi}")
    return value

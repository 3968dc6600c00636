"""The dashboard's sender plots: `ustack plot`'s SVG of one connection, drawn from the
daemon's recordings (ustack/record.py).

A connection some recording already covers (`serve --record`, `ustack record start`)
is drawn from it. One that none covers starts being recorded, in memory, when the page
first asks for its plot: the answer is 404 "not recorded" that once, and the plot from
then on. At most MAX_WATCHED such recordings are kept; the oldest stops first.
"""

from __future__ import annotations

from collections import deque

from ...record import Recordings
from ...tools import plot as plotter

MAX_WATCHED = 8


class Plots:
    """The PlotHook of web.Web: (local, peer) -> SVG bytes, or None."""

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings
        self.watched: deque[int] = deque()  # the recordings this hook started

    def __call__(self, local: str, peer: str) -> bytes | None:
        name = f"{local} {peer}"
        covered = False
        for session in list(self.recordings.sessions.values()):
            if name not in session.conns.values():
                continue
            covered = True
            if session.path is not None:
                session.flush()
                with open(session.path, encoding="utf-8") as f:
                    records = plotter.read_records(f)
            else:
                records = session.snapshot()
            for conn in plotter.load(records).values():
                if (conn.head.get("local"), conn.head.get("peer")) == (local, peer) \
                        and conn.samples:
                    return plotter.render_svg(conn).encode()
        if not covered:
            session = self.recordings.start(name)
            self.watched.append(session.id)
            while len(self.watched) > MAX_WATCHED:
                old = self.watched.popleft()
                if old in self.recordings.sessions:
                    self.recordings.stop(old)
        return None

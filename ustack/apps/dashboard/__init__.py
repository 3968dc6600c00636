"""The live dashboard of the HTTP server (`/` without --root, `/ustack/` always).

model.py gathers the figures inside the daemon (bounded), ladders.py records and draws
the connections a visitor clicked, web.py maps URLs to replies, and static/ holds the
page, its script and style sheet, and the vendored uPlot (MIT, static/vendor/).
"""

from .model import CLOSE_WAIT_WARN, Dashboard
from .web import Web

__all__ = ["CLOSE_WAIT_WARN", "Dashboard", "Web"]

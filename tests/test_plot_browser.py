"""`ustack plot`'s SVG in a real browser: headless Chromium (Debian's `chromium`, from
scripts/setup; nothing here downloads one) parses it (--dump-dom) and draws it
(--screenshot), and the picture has what the plot promises in its colours.

The screenshot and the SVG are kept as test artifacts under tests/artifacts/ (ignored
by git): plot-lossy.png, plot-lossy.svg.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from test_sender_view import check_plot_svg, lossy_transfer

from ustack.tools.plot import load, render_svg

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WIDTH, HEIGHT = 1100, 1000


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG (RFC 2083)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack_from(">IIBB", body)
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # the five filters of RFC 2083 6
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe is not None
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={profile}", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=timeout)


async def test_plot_renders_in_chromium(tmp_path: Path):
    stack, peer, _tcb, records, got = await lossy_transfer(0.03, seed=11)
    stack.close()
    peer.close()
    conn = max(load(records).values(), key=lambda c: c.samples)
    svg = render_svg(conn, WIDTH)
    check_plot_svg(svg)
    ARTIFACTS.mkdir(exist_ok=True)
    svg_path = ARTIFACTS / "plot-lossy.svg"
    svg_path.write_text(svg)
    png_path = ARTIFACTS / "plot-lossy.png"
    png_path.unlink(missing_ok=True)

    dom = chromium("--dump-dom", svg_path.as_uri(), profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Chromium parsed it as SVG (an XML error would give its error page instead).
    assert "<svg" in dom.stdout and "parsererror" not in dom.stdout
    for label in ("data sent", "retransmission", "cwnd", "ssthresh", "SRTT", "RTO",
                  "receive window"):
        assert label in dom.stdout, label

    shot = chromium(f"--screenshot={png_path}", f"--window-size={WIDTH},{HEIGHT}",
                    svg_path.as_uri(), profile=tmp_path / "p2")
    assert shot.returncode == 0 and png_path.exists(), shot.stderr[-2000:]
    width, height, rows = read_png(png_path.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    channels = len(rows[0]) // width
    ink = red = green = blue = 0
    for row in rows:
        for x in range(0, len(row), channels):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if r < 235 or g < 235 or b < 235:
                ink += 1
            if r > 180 and g < 90 and b < 90:
                red += 1  # retransmissions (#d62728)
            elif g > 130 and r < 90 and b < 90:
                green += 1  # the ACK line (#2ca02c)
            elif b > 120 and r < 80 and g < 100:
                blue += 1  # data sent (#1f3b99) and cwnd (#1f77b4)
    # Not blank, not a solid colour: drawn lines and text in the plot's colours.
    assert 0.02 * width * height < ink < 0.6 * width * height, ink
    assert red > 50 and green > 200 and blue > 200, (red, green, blue)

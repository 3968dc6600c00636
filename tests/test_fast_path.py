"""Header prediction (Linux tcp_rcv_established(), issue 11): the fast path must do
exactly what the general ladder does. The same seeded lossy, reordering, duplicating
transfers run with it on and off must send the same segments at the same times and
end with the same counters, and the fast path must have been taken."""

from __future__ import annotations

import hashlib

import pytest
import test_core_lossy as lossy

from ustack.tcp.tcb import Tcb


def run(monkeypatch: pytest.MonkeyPatch, fast: bool, *args, down: int = 300_000
        ) -> tuple[str, dict, float]:
    """One transfer; a digest of every segment built on the way, the counters, the end."""
    digest = hashlib.sha256()
    build = lossy.build_tcp

    def recording(seg, src, dst):
        out = build(seg, src, dst)
        digest.update(out)
        return out

    monkeypatch.setattr(lossy, "build_tcp", recording)
    monkeypatch.setattr(Tcb, "fast_path", fast)
    a, b, end = lossy.transfer(*args, up=400_000, down=down, fin_when_acked=True)
    stats = {k: a.ctx.stats[k] + b.ctx.stats[k] for k in a.ctx.stats}
    return digest.hexdigest(), stats, end


@pytest.mark.parametrize("seed, loss, reorder, dup, knobs, down", [
    (1, 0.0, 0.0, 0.0, "sack+ts", 300_000),  # both ways at once: ACKs ride on data
    (1, 0.0, 0.0, 0.0, "sack+ts", 2_000),  # one way: pure ACKs come back
    (2, 0.02, 0.1, 0.05, "sack+ts", 300_000),
    (3, 0.05, 0.0, 0.0, "newreno", 2_000),
    (4, 0.01, 0.3, 0.0, "sack", 300_000),
    (5, 0.03, 0.1, 0.1, "newreno+ts", 2_000),
])
def test_the_fast_path_changes_nothing_on_the_wire(monkeypatch, seed, loss, reorder, dup,
                                                   knobs, down):
    args = (seed, loss, reorder, dup, *lossy.KNOBS[knobs])
    fast = run(monkeypatch, True, *args, down=down)
    slow = run(monkeypatch, False, *args, down=down)
    hp = {k: fast[1].pop(k) - slow[1].pop(k) for k in ("TcpExtTCPHPHits", "TcpExtTCPHPAcks")}
    assert fast == slow
    assert hp["TcpExtTCPHPHits"] > 0  # and it was taken
    if down < 10_000:
        assert hp["TcpExtTCPHPAcks"] > 0

"""ECN (RFC 3168) on the drill's virtual clock, as Linux negotiates and answers it
(tcp_ecn 0/1/2, tcp_ecn_fallback): the handshake from both sides, ECT(0) on new data
only, CE answered by ECE until CWR, ECE answered by one reduction per window.

The drill peer is 10.77.0.1 with TS (1448-byte segments) and window scale 7; segments
carry their IP ECN field as `Segment.ecn` (0 Not-ECT, 2 ECT(0), 3 CE)."""

from __future__ import annotations

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)

from ustack.tcp.ecn import CE, ECT0, NOT_ECT
from ustack.tcp.state import State
from ustack.wire.ip import header_ok, set_ce

MSS = 1448


def passive(*settings: str, syn: str = "SEW 0:0(0) win 65535", synack: str = "SE. 0:0(0) ack 1",
            **syn_kw) -> Drill:
    d = Drill(*settings)
    d.listen(80)
    d.inject(syn, **syn_kw)
    d.expect(synack)
    d.inject(". 1:1(0) ack 1")
    d.accept()
    assert d.tcb.state == State.ESTABLISHED
    return d


def active(*settings: str, syn: str, synack: str) -> Drill:
    d = Drill(*settings)
    d.connect()
    d.expect(syn)
    d.inject(synack)
    d.expect(". 1:1(0) ack 1")
    return d


# ------------------------------------------------------------------ negotiation

@pytest.mark.parametrize("tcp_ecn,ok", [(0, False), (1, True), (2, True)])
def test_passive_open_accepts_an_ecn_setup_syn(tcp_ecn: int, ok: bool):
    """RFC 3168 6.1.1: SYN with ECE|CWR, SYN-ACK with ECE alone, unless tcp_ecn=0
    (Linux tcp_ecn_create_request(), tcp_ecn_make_synack())."""
    d = passive(f"tcp_ecn={tcp_ecn}", synack="SE. 0:0(0) ack 1" if ok else "S. 0:0(0) ack 1")
    assert (d.tcb.ecn is not None) == ok
    assert d.stats["UstackTcpEcnOk"] == ok


def test_passive_open_without_an_ecn_setup_syn_or_with_ect_on_it():
    """A plain SYN (or one with ECE but no CWR) gets a plain SYN-ACK; so does an
    ECN-setup SYN that itself arrived ECT: a middlebox mangles the TOS byte."""
    for syn, kw in (("S 0:0(0) win 65535", {}), ("SE 0:0(0) win 65535", {}),
                    ("SEW 0:0(0) win 65535", {"ecn": ECT0})):
        d = passive("tcp_ecn=1", syn=syn, synack="S. 0:0(0) ack 1", **kw)
        assert d.tcb.ecn is None


@pytest.mark.parametrize("tcp_ecn", [0, 2])
def test_active_open_asks_only_with_tcp_ecn_1(tcp_ecn: int):
    """Linux's default 2 and 0 send a plain SYN; an ECE in the SYN-ACK then means
    nothing (we did not ask)."""
    d = active(f"tcp_ecn={tcp_ecn}", syn="S 0:0(0)", synack="SE. 0:0(0) ack 1 win 65535")
    assert d.tcb.ecn is None


@pytest.mark.parametrize("synack,ok", [("SE. 0:0(0) ack 1 win 65535", True),
                                       ("S. 0:0(0) ack 1 win 65535", False),
                                       ("SEW. 0:0(0) ack 1 win 65535", False)])
def test_active_open_with_tcp_ecn_1(synack: str, ok: bool):
    """tcp_ecn=1: an ECN-setup SYN; ECN is on only for a SYN-ACK with ECE and without
    CWR (RFC 3168 6.1.1, Linux tcp_ecn_rcv_synack())."""
    d = active("tcp_ecn=1", syn="SEW 0:0(0)", synack=synack)
    assert (d.tcb.ecn is not None) == ok


@pytest.mark.parametrize("fallback", [1, 0])
def test_retransmitted_syn_drops_the_ecn_request_with_fallback(fallback: int):
    """tcp_ecn_fallback=1 (Linux tcp_ecn_clear_syn()): the SYN retransmitted after the
    1 s RTO asks no more; a late ECE SYN-ACK (to the first SYN) still turns ECN on."""
    d = Drill("tcp_ecn=1", f"tcp_ecn_fallback={fallback}")
    d.connect()
    d.expect("SEW 0:0(0)", at=0.0)
    d.expect("S 0:0(0)" if fallback else "SEW 0:0(0)", at=1.0)
    d.inject("SE. 0:0(0) ack 1 win 65535")
    d.expect(". 1:1(0) ack 1")
    assert d.tcb.ecn is not None


# ------------------------------------------------------------------ ECT on data

def test_ect0_on_new_data_only():
    """RFC 3168 6.1.5, Linux tcp_ecn_send(): new data ECT(0); pure ACKs, the SYN-ACK
    and retransmissions (here after the RTO) Not-ECT."""
    d = Drill()
    d.listen(80)
    d.inject("SEW 0:0(0) win 65535")
    assert d.expect("SE. 0:0(0) ack 1").ecn == NOT_ECT
    d.inject(". 1:1(0) ack 1")
    d.accept()
    d.send(2 * MSS)
    first = d.expect(f". 1:{1 + MSS}({MSS}) ack 1")
    second = d.expect(f"P. {1 + MSS}:{1 + 2 * MSS}({MSS}) ack 1")
    assert first.ecn == second.ecn == ECT0
    d.inject(". 1:101(100) ack 1")  # data from the peer, Not-ECT
    assert d.expect(". 2897:2897(0) ack 101").ecn == NOT_ECT  # a pure ACK
    # Unacknowledged: the tail loss probe and/or the RTO (200 ms floor) resend it,
    # Not-ECT.
    d.advance(0.25)
    rtx = [seg for seg in d.take() if seg.payload]
    assert rtx and d.stats["TcpRetransSegs"] == len(rtx)
    assert all(seg.ecn == NOT_ECT for seg in rtx)
    d.inject(f". 101:101(0) ack {1 + 2 * MSS}")


def test_no_ect_without_ecn():
    d = passive(syn="S 0:0(0) win 65535", synack="S. 0:0(0) ack 1")
    d.send(MSS)
    assert d.expect(f"P. 1:{1 + MSS}({MSS}) ack 1").ecn == NOT_ECT


# ------------------------------------------------------------------ receiver: CE -> ECE

def test_ce_sets_ece_on_every_ack_until_cwr():
    """RFC 3168 6.1.3, Linux tcp_ecn_check_ce() / tcp_ecn_accept_cwr(): a CE-marked
    segment is ACKed at once with ECE; ECE stays on every ACK until a data segment with
    CWR arrives, which is also ACKed at once."""
    d = passive()
    d.tcb.quickacks = 0  # past the quick ACKs of a connection's start
    d.inject(". 1:101(100) ack 1", ecn=ECT0)
    d.expect(". 1:1(0) ack 101", after=0.04)  # an unmarked small segment: delayed ACK
    d.inject(". 101:201(100) ack 1", ecn=CE)
    d.expect("E. 1:1(0) ack 201", after=0.0)  # at once (quick-ACK mode), with ECE
    d.tcb.quickacks = 0
    d.inject(". 201:1201(1000) ack 1", ecn=ECT0)
    d.inject(". 1201:2201(1000) ack 1", ecn=ECT0)
    d.expect("E. 1:1(0) ack 2201")  # every ACK echoes until CWR
    d.inject("W. 2201:2301(100) ack 1", ecn=ECT0)  # the sender reduced: CWR
    d.expect(". 1:1(0) ack 2301", after=0.0)  # at once, and ECE off
    d.inject(". 2301:3301(1000) ack 1", ecn=ECT0)
    d.expect(". 1:1(0) ack 3301")


def test_ce_on_a_connection_without_ecn_is_ignored():
    d = passive(syn="S 0:0(0) win 65535", synack="S. 0:0(0) ack 1")
    d.inject(". 1:1001(1000) ack 1", ecn=CE)
    d.expect(". 1:1(0) ack 1001")  # the first ACK (quick-ACK mode), no ECE


# ------------------------------------------------------------------ sender: ECE -> CWR

def test_ece_reduces_once_per_window_and_cwr_goes_on_the_next_new_data():
    """RFC 3168 6.1.2, Linux tcp_enter_cwr(): an ECE is a congestion event: ssthresh from
    the controller (CUBIC: 0.7 cwnd), cwnd down to it, CWR on the next new data
    segment; the ECEs of the same window are one event; an ECE acknowledging data sent
    after the reduction is a new one."""
    d = passive()
    tcb = d.tcb
    d.send(10 * MSS)  # the initial window
    assert len(d.take()) == 10
    assert tcb.cc.cwnd == 10 * MSS
    d.inject(f"E. 1:1(0) ack {1 + MSS}")
    assert d.stats["UstackTcpEcnCwr"] == 1
    assert tcb.cc.ssthresh == tcb.cc.cwnd == 7 * MSS  # 10 * 717 // 1024
    assert d.stats["TcpExtTCPDeliveredCE"] == 1
    d.send(MSS)  # 9 segments out, cwnd 7: nothing may go yet
    d.expect_nothing()
    for k in range(2, 4):  # more ECEs for the same window: no new reduction
        d.inject(f"E. 1:1(0) ack {1 + k * MSS}")
    assert d.stats["UstackTcpEcnCwr"] == 1 and tcb.cc.ssthresh == 7 * MSS
    assert d.take() == []
    d.inject(f"E. 1:1(0) ack {1 + 4 * MSS}")  # 6 out: room for the new segment
    assert d.stats["UstackTcpEcnCwr"] == 1
    seg = d.expect(f"PW. {1 + 10 * MSS}:{1 + 11 * MSS}({MSS}) ack 1")  # CWR, once
    assert seg.ecn == ECT0
    d.inject(f". 1:1(0) ack {1 + 5 * MSS}")
    d.send(MSS)
    d.expect(f"P. {1 + 11 * MSS}:{1 + 12 * MSS}({MSS}) ack 1")  # no CWR again
    d.inject(f"E. 1:1(0) ack {1 + 10 * MSS}")  # still the reduced window (<= high_seq)
    assert d.stats["UstackTcpEcnCwr"] == 1
    d.inject(f"E. 1:1(0) ack {1 + 11 * MSS}")  # beyond it: a new congestion event
    assert d.stats["UstackTcpEcnCwr"] == 2
    assert d.take() == []


def test_ece_ignored_without_ecn_and_on_nothing_outstanding():
    d = passive(syn="S 0:0(0) win 65535", synack="S. 0:0(0) ack 1")
    d.send(2 * MSS)
    d.take()
    d.inject(f"E. 1:1(0) ack {1 + MSS}")
    assert d.stats["UstackTcpEcnCwr"] == 0 and d.tcb.cc.cwnd >= 10 * MSS
    e = passive()
    e.inject("E. 1:1(0) ack 1")  # nothing in flight (Linux: no prior_packets)
    assert e.stats["UstackTcpEcnCwr"] == 0


def test_flags_print_as_tcpdump_prints_them():
    from ustack.wire.tcp import ACK, CWR, ECE, PSH, SYN, flag_string
    assert [flag_string(f) for f in (SYN | ECE | CWR, SYN | ACK | ECE, ACK | ECE,
                                     PSH | ACK | CWR)] == ["SEW", "S.E", ".E", "P.W"]


def test_set_ce_keeps_the_header_checksum_valid():
    from ustack.wire.tcp import Segment, build_tcp_ipv4
    for ecn in (1, 2):
        frame = build_tcp_ipv4(Segment(1, 2, 3, 4, 0x10, 5, b"x", ecn=ecn),
                               bytes((10, 77, 0, 1)), bytes((10, 77, 0, 2)), 7)
        assert frame[1] & 3 == ecn and header_ok(frame, 20)
        marked = set_ce(frame)
        assert marked[1] & 3 == CE and header_ok(marked, 20)
        assert marked[2:10] == frame[2:10] and marked[12:] == frame[12:]


# ------------------------------------------------------------------ the impairment layer

def test_impair_ce_marks_only_ect_frames():
    """`--impair ce=P`: CE on ECT(0)/ECT(1) frames with probability P, the header
    checksum kept valid; Not-ECT frames untouched and no random number drawn for them
    (so ce= does not change which frames loss= drops)."""
    import random

    from ustack.impair import Channel, parse_spec
    from ustack.stats import Stats
    from ustack.wire.tcp import Segment, build_tcp_ipv4

    spec = parse_spec("out.ce=1,seed=3")
    assert spec.outbound.ce == 1.0 and spec.inbound.ce == 0.0 and spec.active
    assert "ce=0.05" in str(parse_spec("ce=5%").inbound)
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_spec("ce=2")

    def frame(ecn: int) -> bytes:
        return build_tcp_ipv4(Segment(1, 2, 3, 4, 0x10, 5, b"data", ecn=ecn),
                              bytes((10, 77, 0, 1)), bytes((10, 77, 0, 2)), 9)

    stats = Stats()
    rng = random.Random(1)
    ch = Channel(spec.outbound, rng, stats)
    for ecn in (NOT_ECT, 1, ECT0, CE):
        ch.push(frame(ecn), 0.0)
    out = ch.pop_due(0.0)
    assert [f[1] & 3 for f in out] == [NOT_ECT, CE, CE, CE]
    assert out[0] == frame(NOT_ECT) and all(header_ok(f, 20) for f in out)
    assert stats["UstackImpairCeMarked"] == 2  # the CE frame was CE already
    half = Channel(parse_spec("ce=0.5").outbound, random.Random(7), Stats())
    for _ in range(400):
        half.push(frame(ECT0), 0.0)
        half.push(frame(NOT_ECT), 0.0)
    marks = sum(f[1] & 3 == CE for f in half.pop_due(0.0))
    assert 150 < marks < 250


def test_tcp_info_reports_ecn_and_ecn_seen():
    """Linux tcp_get_info(): TCPI_OPT_ECN when ECN was negotiated, TCPI_OPT_ECN_SEEN
    once an ECT or CE segment arrived (ss -i prints `ecn`, `ecnseen`)."""
    from ustack.tcp.info import TCPI_OPT_ECN, TCPI_OPT_ECN_SEEN, tcp_info

    d = passive()
    opts = tcp_info(d.tcb, d.now).options
    assert opts & TCPI_OPT_ECN and not opts & TCPI_OPT_ECN_SEEN
    d.inject(". 1:101(100) ack 1", ecn=ECT0)
    d.take()
    assert tcp_info(d.tcb, d.now).options & TCPI_OPT_ECN_SEEN
    plain = passive(syn="S 0:0(0) win 65535", synack="S. 0:0(0) ack 1")
    assert not tcp_info(plain.tcb, plain.now).options & (TCPI_OPT_ECN | TCPI_OPT_ECN_SEEN)

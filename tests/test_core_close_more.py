"""More close-path behaviours of the core, one scripted test each, from the audit of
issue 3 against RFC 9293 3.10, RFC 5961 and LINUX-SPEC ("LS n"): the orphaned FIN_WAIT_2
(LS 41-44), a SYN in SYN_RECEIVED (Linux tcp_check_req()), a listener's close (LS 34),
SO_LINGER and ABORT state by state (RFC 9293 3.10.5, LS 29-31), segments without ACK
(LS 13), FIN with data in the closing states, and the issue's --set knobs."""

from __future__ import annotations

import pytest
from drill import PEER_ISN, Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import drill_in

from ustack.config import KNOBS, Config, apply_settings
from ustack.tcp.events import DataReceived, EofReceived, StateChanged
from ustack.tcp.state import State
from ustack.wire.tcp import ACK, RST

MASK = 0xFFFFFFFF
FAR = 100_000_000  # relative sequence number far right of any receive window

# ---------------------------------------------------------------------- FIN_WAIT_2


@pytest.mark.parametrize("orphan", [True, False], ids=["orphan", "half_closed"])
def test_fin_wait_2_lifetime_orphan_vs_half_closed(orphan):
    """LS 8, 41-42 / issue ("FIN_WAIT_2: an orphaned connection is dropped after
    tcp_fin_timeout; a connection whose application only half-closed waits for the peer
    as long as it takes"): the orphan goes silently after tcp_fin_timeout, and then the
    peer's FIN finds no socket (R seq=SEG.ACK); the half-closed one is still there after
    a day and takes the peer's FIN into TIME_WAIT."""
    d = drill_in(State.FIN_WAIT_2, "tcp_fin_timeout=20", orphan=orphan)
    d.advance(19.9)
    assert d.state == State.FIN_WAIT_2
    d.advance(86400)
    d.expect_nothing()  # silent either way: no RST, no probe
    if orphan:
        assert d.state == State.CLOSED
        d.inject("F. 1:1(0) ack 2")
        d.expect("R 2:2(0)")
    else:
        assert d.state == State.FIN_WAIT_2
        d.inject("F. 1:1(0) ack 2")
        d.expect(". 2:2(0) ack 2")
        assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTCPAbortOnTimeout"] == 0


# (segment, reply or None, state after, counter that must be 1 or None)
ORPHAN_FW2 = [
    # duplicate/pure ACK at RCV.NXT: ignored
    (". 1:1(0) ack 2", None, State.FIN_WAIT_2, None),
    # out of window: ACK <SEQ=SND.NXT><ACK=RCV.NXT> (data-bearing: never rate-limited)
    (f"P. {FAR}:{FAR + 10}(10) ack 2", ". 2:2(0) ack 1", State.FIN_WAIT_2, None),
    (f". {FAR}:{FAR}(0) ack 2", ". 2:2(0) ack 1", State.FIN_WAIT_2, None),
    # new data, FIN with data, FIN not at RCV.NXT: R seq=SEG.ACK and gone
    ("P. 1:11(10) ack 2", "R 2:2(0)", State.CLOSED, "TcpExtTCPAbortOnData"),
    ("FP. 1:11(10) ack 2", "R 2:2(0)", State.CLOSED, "TcpExtTCPAbortOnData"),
    ("F. 11:11(0) ack 2", "R 2:2(0)", State.CLOSED, "TcpExtTCPAbortOnData"),
    # the FIN at RCV.NXT: ACK, TIME_WAIT
    ("F. 1:1(0) ack 2", ". 2:2(0) ack 2", State.TIME_WAIT, "TcpExtTW"),
    # exact RST: gone silently
    ("R. 1:1(0) ack 2", None, State.CLOSED, None),
    # Deliberate deviations (tcb.py _arm_fin_wait_2): RFC 5961 challenge ACKs where the
    # Linux minisocket would discard itself silently (RST) or send R (SYN).
    ("R. 101:101(0) ack 2", ". 2:2(0) ack 1", State.FIN_WAIT_2, "TcpExtTCPChallengeACK"),
    ("S 101:101(0) win 65535", ". 2:2(0) ack 1", State.FIN_WAIT_2, "TcpExtTCPSYNChallenge"),
]


@pytest.mark.parametrize("seg, reply, after, counter", ORPHAN_FW2, ids=[
    "pure_ack", "oow_data", "oow_ack", "data", "fin_data", "fin_beyond_rcv_nxt",
    "exact_fin", "exact_rst", "inexact_rst_challenged", "syn_challenged"])
def test_segments_to_orphaned_fin_wait_2(seg, reply, after, counter):
    """LS 44 (Linux tcp_timewait_state_process(), substate FIN_WAIT2), RFC 1122 4.2.2.13,
    RFC 9293 3.10.7.4, RFC 5961 3.2/4.2: what an orphaned FIN_WAIT_2 answers."""
    d = drill_in(State.FIN_WAIT_2)
    d.inject(seg)
    if reply is None:
        d.expect_nothing()
    else:
        d.expect(reply)
        d.expect_nothing()
    assert d.state == after
    if counter is not None:
        assert d.stats[counter] == 1
    if after == State.CLOSED:
        assert d.stats["TcpOutRsts"] == (1 if reply and reply.startswith("R") else 0)
        assert d.stats["TcpEstabResets"] == 0


def test_orphaned_fin_wait_2_out_of_window_pure_ack_is_rate_limited():
    """LS 44, 113-114: out-of-window pure ACKs are answered at most once per
    tcp_invalid_ratelimit; data-bearing ones always."""
    d = drill_in(State.FIN_WAIT_2)
    d.inject(f". {FAR}:{FAR}(0) ack 2")
    d.expect(". 2:2(0) ack 1")
    d.inject(f". {FAR}:{FAR}(0) ack 2")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedSeq"] == 1
    d.inject(f"P. {FAR}:{FAR + 1}(1) ack 2")
    d.expect(". 2:2(0) ack 1")
    d.advance(0.5)
    d.inject(f". {FAR}:{FAR}(0) ack 2")
    d.expect(". 2:2(0) ack 1")


def test_fin_beyond_rcv_nxt_after_shutdown_only_waits_for_the_hole():
    """LS 32 and 152: the abort on a FIN beyond RCV.NXT is for orphans only; after
    shutdown() the FIN waits in the out-of-order queue and the hole is ACKed."""
    d = drill_in(State.FIN_WAIT_2, orphan=False)
    d.inject("F. 11:11(0) ack 2")
    d.expect(". 2:2(0) ack 1")
    assert d.state == State.FIN_WAIT_2
    d.inject("P. 1:11(10) ack 2")
    d.expect(". 2:2(0) ack 12")
    assert d.state == State.TIME_WAIT
    assert d.stats["TcpExtTCPAbortOnData"] == 0


def test_orphan_fin_wait_1_fin_beyond_rcv_nxt_is_reset():
    """LS 32 (tcp_rcv_state_process() step 7, END_SEQ - FIN > RCV.NXT): in an orphaned
    FIN_WAIT_1 a bare FIN with a hole before it means data that can never be read."""
    d = drill_in(State.FIN_WAIT_1)
    d.inject("F. 11:11(0) ack 1")
    d.expect("R 1:1(0)")
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnData"] == 1


# ---------------------------------------------------------------------- FIN with data


@pytest.mark.parametrize("state", [State.FIN_WAIT_1, State.FIN_WAIT_2],
                         ids=["fin_wait_1", "fin_wait_2"])
def test_fin_with_data_after_shutdown_goes_to_time_wait(state):
    """RFC 9293 3.10.7.4 seventh/eighth / LS 7, 8, 14: after shutdown() a segment with
    data and FIN that (also) ACKs our FIN takes FIN_WAIT_1 or FIN_WAIT_2 to TIME_WAIT;
    the ACK covers data + 1 and the data stays readable."""
    d = drill_in(state, orphan=False)
    d.inject("FP. 1:11(10) ack 2")
    d.expect(". 2:2(0) ack 12")
    d.expect_nothing()
    assert d.state == State.TIME_WAIT
    assert DataReceived() in d.events and EofReceived() in d.events
    assert d.read() == b"x" * 10


# ---------------------------------------------------------------------- no ACK bit


@pytest.mark.parametrize("seg", ["P 1:11(10)", "F 1:1(0)", "FP 1:11(10)", "none 1:1(0)"],
                         ids=["data", "fin", "fin_data", "no_flags"])
def test_segment_without_ack_is_dropped_in_synchronized_state(seg):
    """RFC 9293 3.10.7.4 fifth ("if the ACK bit is off, drop the segment") / LS 13: no
    reply, nothing queued, nothing delivered, RCV.NXT unchanged."""
    d = drill_in(State.ESTABLISHED)
    d.inject(seg)
    d.expect_nothing()
    assert d.state == State.ESTABLISHED
    assert d.events == [] and d.tcb.recv_queue == 0
    d.inject("P. 1:11(10) ack 1")  # the same bytes with ACK are taken from RCV.NXT
    d.expect(". 1:1(0) ack 11")


# ---------------------------------------------------------------------- SYN in SYN_RECEIVED


def test_in_window_syn_with_another_isn_resets_passive_syn_received():
    """RFC 9293 3.10.7.4 fourth (passive SYN-RECEIVED: return to LISTEN) / Linux
    tcp_check_req() embryonic_reset: a SYN inside the window whose sequence number is not
    the original ISN drops the embryo and is answered in the no-socket form (LS 19:
    R. seq 0 ack SEG.SEQ+1, no options); TcpAttemptFails, TcpExtEmbryonicRsts, no
    challenge counted. A late ACK of our SYN-ACK then gets R seq=SEG.ACK (LS 101)."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("S 100:100(0) win 65535")
    [rst] = d.take()  # seq 0, not relative to our ISS: checked by hand
    d.expect_nothing()
    assert rst.flags == RST | ACK and rst.seq == 0 and rst.ts is None
    assert rst.ack == (PEER_ISN + 101) & MASK
    assert d.state == State.CLOSED
    lst = d.table.listeners[80]
    assert lst.half_open == 0 and lst.accept_queue == []
    assert d.stats["TcpAttemptFails"] == 1 and d.stats["TcpExtEmbryonicRsts"] == 1
    assert d.stats["TcpExtTCPSYNChallenge"] == 0 and d.stats["TcpExtTCPChallengeACK"] == 0
    d.inject(". 1:1(0) ack 1")
    d.expect("R 1:1(0)")


def test_out_of_window_syn_in_passive_syn_received_gets_rate_limited_ack():
    """Linux tcp_check_req() ("Out of window: send ACK and drop"): a SYN far outside the
    window gets <SEQ=ISS+1><ACK=RCV.NXT>, at most once per tcp_invalid_ratelimit
    (TcpExtTCPACKSkippedSynRecv), and is not counted as a challenge; the handshake
    then completes as usual."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("S 3000000000:3000000000(0) win 65535")
    d.expect(". 1:1(0) ack 1")
    d.inject("S 3000000000:3000000000(0) win 65535")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedSynRecv"] == 1
    assert d.stats["TcpExtTCPSYNChallenge"] == 0 and d.stats["TcpExtTCPChallengeACK"] == 0
    assert d.state == State.SYN_RECEIVED
    d.inject(". 1:1(0) ack 1")
    assert d.accept().state == State.ESTABLISHED


def test_retransmitted_syn_in_passive_syn_received_is_rate_limited():
    """Linux tcp_check_req() (pure retransmitted SYN): the SYN-ACK is resent at most once
    per tcp_invalid_ratelimit (TcpExtTCPACKSkippedSynRecv)."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject("S 0:0(0) win 65535")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedSynRecv"] == 1
    d.advance(0.5)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")


def test_syn_with_another_isn_after_simultaneous_open_is_challenged():
    """RFC 5961 4.2 / LS 112: a SYN_RECEIVED reached by a simultaneous open is a full
    connection (Linux tcp_validate_incoming()): another SYN gets a challenge ACK."""
    d = Drill()
    d.connect()
    d.expect("S 0:0(0)")
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject("S 5000:5000(0) win 65535")
    d.expect(". 1:1(0) ack 1")
    assert d.state == State.SYN_RECEIVED
    assert d.stats["TcpExtTCPSYNChallenge"] == 1 and d.stats["TcpExtTCPChallengeACK"] == 1


def test_out_of_window_rst_in_syn_received_is_dropped():
    """RFC 9293 3.10.7.4 first / RFC 5961 3.2: a RST outside the window is dropped
    silently in SYN_RECEIVED too."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject(f"R {FAR}:{FAR}(0)")
    d.expect_nothing()
    assert d.state == State.SYN_RECEIVED
    assert d.stats["TcpExtEmbryonicRsts"] == 0


# ---------------------------------------------------------------------- listener close


def test_listener_close_resets_children_not_yet_accepted():
    """LS 34: close() on a listener resets each established child still in its accept
    queue (R. seq=SND.NXT ack=RCV.NXT)."""
    d = Drill()
    lst = d.listen(80)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    d.inject(". 1:1(0) ack 1")
    assert len(lst.accept_queue) == 1
    d.table.unlisten(lst, d.now)
    d.drain()
    d.expect("R. 1:1(0) ack 1")
    assert d.state == State.CLOSED and lst.accept_queue == []


def test_listener_close_drops_half_open_children_silently():
    """LS 34: a half-open child (SYN_RECEIVED) goes silently when its listener closes,
    and the peer's handshake ACK then gets a no-socket RST (LS 101) instead of
    completing a connection that nobody would accept."""
    d = drill_in(State.SYN_RECEIVED)
    lst = d.table.listeners[80]
    d.table.unlisten(lst, d.now)
    d.drain()
    d.expect_nothing()
    assert d.state == State.CLOSED and lst.half_open == 0 and lst.accept_queue == []
    d.advance(5.0)  # no SYN-ACK retransmission either
    d.expect_nothing()
    d.inject(". 1:1(0) ack 1")
    d.expect("R 1:1(0)")
    assert d.state == State.CLOSED and lst.accept_queue == []


# ---------------------------------------------------------------------- SO_LINGER, ABORT


@pytest.mark.parametrize("state, reply", [
    (State.ESTABLISHED, "R. 1:1(0) ack 1"),
    (State.CLOSE_WAIT, "R. 1:1(0) ack 2"),
    (State.FIN_WAIT_1, "R. 2:2(0) ack 1"),
    (State.FIN_WAIT_2, "R. 2:2(0) ack 1"),
    (State.CLOSING, None),
    (State.LAST_ACK, None),
], ids=["established", "close_wait", "fin_wait_1", "fin_wait_2", "closing", "last_ack"])
def test_linger_zero_close_in_each_state(state, reply):
    """RFC 9293 3.10.5 ABORT / LS 31 (Linux tcp_disconnect(), tcp_need_reset()):
    SO_LINGER {1, 0}: R. seq=SND.NXT ack=RCV.NXT from ESTABLISHED, CLOSE_WAIT and
    FIN_WAIT_1/2; from CLOSING and LAST_ACK, where everything including our FIN was
    sent, no RST. Always CLOSED at once, no TIME_WAIT, counted in TcpExtTCPAbortOnData;
    TcpEstabResets only from ESTABLISHED/CLOSE_WAIT."""
    d = drill_in(state, orphan=False)  # the application still holds the socket
    d.tcb.linger = 0
    d.close()
    if reply is None:
        d.expect_nothing()
    else:
        d.expect(reply)
        d.expect_nothing()
    assert d.state == State.CLOSED
    assert len(d.table.tw) == 0
    assert d.stats["TcpExtTCPAbortOnData"] == 1
    assert d.stats["TcpEstabResets"] == (1 if state in (State.ESTABLISHED,
                                                        State.CLOSE_WAIT) else 0)
    d.advance(120)
    d.expect_nothing()


def test_linger_zero_in_last_ack_with_unsent_data_resets():
    """LS 31 (tcp_disconnect(): CLOSING/LAST_ACK with SND.NXT != write_seq): data and FIN
    still unsent behind a zero window: the abort sends R. and discards them."""
    d = drill_in(State.CLOSE_WAIT)
    d.inject(". 2:2(0) ack 1 win 0")
    d.send(b"q" * 100)
    d.shutdown()
    d.expect_nothing()
    assert d.state == State.LAST_ACK
    d.tcb.linger = 0
    d.close()
    d.expect("R. 1:1(0) ack 2")
    assert d.state == State.CLOSED and d.tcb.send_queue == 0


@pytest.mark.parametrize("state", [State.CLOSING, State.LAST_ACK], ids=["closing", "last_ack"])
def test_abort_in_closing_and_last_ack_sends_nothing(state):
    """RFC 9293 3.10.5 ABORT ("CLOSING, LAST-ACK, TIME-WAIT STATES: respond with ok and
    delete the TCB"): no RST; the peer's next segment finds no socket (LS 100)."""
    d = drill_in(state, orphan=False)
    d.abort()
    d.expect_nothing()
    assert d.state == State.CLOSED
    # The trace and the log say so, rather than claiming a RST.
    (closed,) = [ev for ev in d.events if isinstance(ev, StateChanged)]
    assert str(closed.cause) == "abort(), nothing sent"
    d.inject("F. 1:1(0) ack 2")
    d.expect("R 2:2(0)")


def test_close_with_unread_data_in_last_ack_still_resets():
    """LS 30 (Linux __tcp_close(): the unread-data RST is sent in any state): received
    bytes never read, shutdown() (LAST_ACK, FIN sent), then close(): R., not silence."""
    d = Drill()
    d.established_passive()
    d.inject("P. 1:11(10) ack 1")
    d.expect(". 1:1(0) ack 11")
    d.inject("F. 11:11(0) ack 1")
    d.expect(". 1:1(0) ack 12")
    d.shutdown()
    d.expect("F. 1:1(0) ack 12")
    d.close()
    d.expect("R. 2:2(0) ack 12")
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnClose"] == 1


def test_linger_timeout_in_last_ack_resets():
    """Issue 3 SO_LINGER {1, N} ("waits until everything is acknowledged or N seconds
    pass, then RST"), a deliberate deviation from Linux (LS 29, which lets the orphan
    run on): in LAST_ACK with our FIN unacknowledged, R. at N s, TcpExtTCPAbortOnLinger."""
    d = drill_in(State.CLOSE_WAIT)
    d.tcb.linger = 2
    d.script("""
        +0   close()
        +0   > F. 1:1(0) ack 2
        +0.2 > F. 1:1(0) ack 2
        +0.4 > F. 1:1(0) ack 2
        +0.8 > F. 1:1(0) ack 2
    """)
    assert d.state == State.LAST_ACK
    d.script("2.0 > R. 2:2(0) ack 2")
    d.advance(60)
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.stats["TcpExtTCPAbortOnLinger"] == 1


# ---------------------------------------------------------------------- knobs


def test_issue_knobs_are_settable():
    """Issue 3 "New --set knobs": each parses under its sysctl name (with or without the
    net.ipv4. prefix) and lands in the config the core reads."""
    settings = {"tcp_fin_timeout": 5, "tcp_orphan_retries": 3, "tcp_retries2": 4,
                "tcp_keepalive_time": 60, "tcp_keepalive_intvl": 7,
                "tcp_keepalive_probes": 2, "tcp_challenge_ack_limit": 10}
    assert set(settings) <= set(KNOBS)
    cfg = apply_settings(Config(), [f"net.ipv4.{k}={v}" for k, v in settings.items()])
    for k, v in settings.items():
        assert getattr(cfg, k) == v

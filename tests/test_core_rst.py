"""RST handling in every state (RFC 9293 3.10.7, RFC 5961 sections 3-4, 7), challenge ACKs
and their rate limits, and RSTs for segments no connection owns (RFC 9293 3.10.7.1)."""

from __future__ import annotations

import errno

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import SYNCHRONIZED, drill_in

from ustack.tcp.events import ConnectionClosed
from ustack.tcp.state import State

# errno a live application sees after an accepted RST (Linux tcp_reset(), LS 9, 110).
RST_ERRNO = {
    State.ESTABLISHED: errno.ECONNRESET,
    State.FIN_WAIT_1: errno.ECONNRESET,
    State.FIN_WAIT_2: errno.ECONNRESET,
    State.CLOSE_WAIT: errno.EPIPE,
    State.CLOSING: errno.ECONNRESET,
    State.LAST_ACK: errno.ECONNRESET,
}


def _ids(states):
    return [s.name.lower() for s in states]


# ---------------------------------------------------------------------- RST, synchronized


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=_ids(SYNCHRONIZED))
def test_exact_rst_closes(state):
    """RFC 9293 3.10.7.4 second / RFC 5961 3.2 / LS 110: a RST with SEG.SEQ == RCV.NXT
    tears the connection down silently, with the errno Linux reports (EPIPE in
    CLOSE_WAIT); TcpEstabResets counts ESTABLISHED/CLOSE_WAIT -> CLOSED only (LS 6)."""
    d = drill_in(state, orphan=False)
    d.inject(f"R. {d.rel_rcv}:{d.rel_rcv}(0) ack {d.rel_snd}")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert ConnectionClosed(RST_ERRNO[state]) in d.events
    estab = state in (State.ESTABLISHED, State.CLOSE_WAIT)
    assert d.stats["TcpEstabResets"] == (1 if estab else 0)
    assert d.stats["TcpOutRsts"] == 0  # LS 115: never answer a RST with a RST
    assert d.stats["TcpExtTCPChallengeACK"] == 0
    # The tuple is unknown now: a later segment gets a no-socket RST (LS 100).
    d.inject(f". {d.rel_rcv}:{d.rel_rcv}(0) ack {d.rel_snd}")
    d.expect(f"R {d.rel_snd}:{d.rel_snd}(0)")


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=_ids(SYNCHRONIZED))
def test_in_window_inexact_rst_gets_challenge_ack(state):
    """RFC 5961 3.2 / LS 110, 112: a RST inside the window but not at RCV.NXT gets a
    challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT> and changes nothing."""
    d = drill_in(state)
    d.inject(f"R. {d.rel_rcv + 100}:{d.rel_rcv + 100}(0) ack {d.rel_snd}")
    d.expect(f". {d.rel_snd}:{d.rel_snd}(0) ack {d.rel_rcv}")
    d.expect_nothing()
    assert d.state == state
    assert d.stats["TcpExtTCPChallengeACK"] == 1
    assert d.stats["TcpEstabResets"] == 0


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=_ids(SYNCHRONIZED))
def test_out_of_window_rst_is_dropped_silently(state):
    """RFC 9293 3.10.7.4 first / RFC 5961 3.2: a RST outside the window is dropped without
    a reply (never a dup ACK for a RST, LS 115)."""
    d = drill_in(state)
    far = d.rel_rcv + 10_000_000
    d.inject(f"R. {far}:{far}(0) ack {d.rel_snd}")
    left = (d.rel_rcv - 2) % 2**32  # left of the window
    d.inject(f"R. {left}:{left}(0) ack {d.rel_snd}")
    d.expect_nothing()
    assert d.state == state


@pytest.mark.parametrize("state", [State.CLOSE_WAIT, State.LAST_ACK, State.CLOSING],
                         ids=["close_wait", "last_ack", "closing"])
def test_rst_at_rcv_nxt_minus_1_accepted_after_peer_fin(state):
    """LS 110 (Linux tcp_reset_check()): after the peer's FIN a RST at RCV.NXT-1 (the FIN's
    own sequence number) is accepted as exact."""
    d = drill_in(state, orphan=False)
    d.inject(f"R. {d.rel_rcv - 1}:{d.rel_rcv - 1}(0) ack {d.rel_snd}")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert ConnectionClosed(RST_ERRNO[state]) in d.events


def test_rst_at_rcv_nxt_minus_1_in_established_is_not_exact():
    """LS 110: in ESTABLISHED, RCV.NXT-1 is left of the window: dropped silently."""
    d = drill_in(State.ESTABLISHED)
    d.inject(f"R. {(d.rel_rcv - 1) % 2**32}:{(d.rel_rcv - 1) % 2**32}(0) ack 1")
    d.expect_nothing()
    assert d.state == State.ESTABLISHED


# ---------------------------------------------------------------------- RST, other states


def test_rst_in_listen_is_ignored():
    """RFC 9293 3.10.7.2 LISTEN first / LS 3: an incoming RST is ignored."""
    d = drill_in(State.LISTEN)
    d.inject("R 0:0(0)")
    d.inject("R. 0:0(0) ack 5")
    d.expect_nothing()
    assert d.stats["TcpOutRsts"] == 0
    assert 80 in d.table.listeners


def test_rst_in_syn_sent_with_right_ack_refuses():
    """RFC 9293 3.10.7.3 second / LS 4, 111: RST+ACK acking our SYN -> CLOSED, ECONNREFUSED,
    TcpAttemptFails."""
    d = drill_in(State.SYN_SENT)
    d.inject("R. 0:0(0) ack 1")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ECONNREFUSED) in d.events
    assert d.stats["TcpAttemptFails"] == 1
    assert d.stats["TcpEstabResets"] == 0


@pytest.mark.parametrize("seg", ["R 0:0(0)", "R. 0:0(0) ack 7", "R. 0:0(0) ack 0"],
                         ids=["no_ack", "ack_beyond_snd_nxt", "ack_of_iss"])
def test_rst_in_syn_sent_without_acceptable_ack_is_dropped(seg):
    """RFC 9293 3.10.7.3 first/second / LS 111: a RST without ACK, or whose ACK does not
    acknowledge our SYN, is dropped (no RST answers it) and SYN_SENT goes on."""
    d = drill_in(State.SYN_SENT)
    d.inject(seg)
    d.expect_nothing()
    assert d.state == State.SYN_SENT


def test_exact_rst_in_syn_received_drops_the_request():
    """RFC 9293 3.10.7.4 second, SYN-RECEIVED / LS 5, 111: an exact RST drops a passive
    embryonic connection (TcpExtEmbryonicRsts, TcpAttemptFails) and it never reaches the
    accept queue."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("R 1:1(0)")
    d.expect_nothing()
    assert d.state == State.CLOSED
    assert d.stats["TcpExtEmbryonicRsts"] == 1
    assert d.stats["TcpAttemptFails"] == 1
    lst = d.table.listeners[80]
    assert lst.accept_queue == [] and lst.half_open == 0


def test_inexact_rst_in_syn_received_gets_challenge_ack():
    """RFC 5961 3.2 / LS 111: in SYN_RECEIVED an in-window non-exact RST is challenged."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("R 50:50(0)")
    d.expect(". 1:1(0) ack 1")
    assert d.state == State.SYN_RECEIVED
    assert d.stats["TcpExtTCPChallengeACK"] == 1


def test_rst_for_closed_tuple_is_not_answered():
    """RFC 9293 3.10.7.1 / LS 19, 115: a RST for no connection is discarded."""
    d = drill_in(State.CLOSED)
    d.inject("R 1:1(0)")
    d.inject("R. 1:1(0) ack 1")
    d.expect_nothing()
    assert d.stats["TcpOutRsts"] == 0


# ---------------------------------------------------------------------- SYN in synchronized


@pytest.mark.parametrize("state", SYNCHRONIZED, ids=_ids(SYNCHRONIZED))
@pytest.mark.parametrize("where", ["old_isn", "in_window", "far"])
def test_syn_in_synchronized_state_gets_challenge_ack(state, where):
    """RFC 5961 4.2 / RFC 9293 3.10.7.4 fourth / LS 112: any SYN in a synchronized state,
    whatever its sequence number, gets a challenge ACK; nothing else changes.
    TcpExtTCPSYNChallenge and TcpExtTCPChallengeACK count it; TcpInErrs only in
    ESTABLISHED (Linux's syn_inerr is set on the established path only)."""
    d = drill_in(state)
    seq = {"old_isn": 0, "in_window": d.rel_rcv + 10, "far": 3_000_000_000}[where]
    d.inject(f"S {seq}:{seq}(0) win 65535")
    d.expect(f". {d.rel_snd}:{d.rel_snd}(0) ack {d.rel_rcv}")
    d.expect_nothing()
    assert d.state == state
    assert d.stats["TcpExtTCPSYNChallenge"] == 1
    assert d.stats["TcpExtTCPChallengeACK"] == 1
    assert d.stats["TcpInErrs"] == (1 if state == State.ESTABLISHED else 0)


def test_retransmitted_syn_in_syn_received_gets_syn_ack_again():
    """RFC 9293 3.10.7.4 (a retransmitted SYN is a duplicate): the SYN-ACK is resent,
    not challenged."""
    d = drill_in(State.SYN_RECEIVED)
    d.inject("S 0:0(0) win 65535")
    d.expect("S. 0:0(0) ack 1")
    assert d.stats["TcpExtTCPSYNChallenge"] == 0


# ---------------------------------------------------------------------- rate limits


def test_challenge_ack_per_connection_rate_limit():
    """RFC 5961 7 / LS 113: at most one challenge ACK per tcp_invalid_ratelimit (500 ms)
    per connection; the suppressed ones count in TcpExtTCPACKSkippedChallenge, and only
    challenge ACKs actually sent count in TcpExtTCPChallengeACK."""
    d = drill_in(State.ESTABLISHED)
    d.inject("R. 100:100(0) ack 1")
    d.expect(". 1:1(0) ack 1")
    d.inject("R. 200:200(0) ack 1")
    d.inject("S 0:0(0)")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedChallenge"] == 2
    assert d.stats["TcpExtTCPChallengeACK"] == 1
    d.advance(0.49)
    d.inject("R. 300:300(0) ack 1")
    d.expect_nothing()
    d.advance(0.02)
    d.inject("R. 400:400(0) ack 1")
    d.expect(". 1:1(0) ack 1")
    assert d.stats["TcpExtTCPChallengeACK"] == 2
    assert d.stats["TcpExtTCPACKSkippedChallenge"] == 3
    assert d.state == State.ESTABLISHED


def test_challenge_ack_stack_wide_limit_per_second():
    """RFC 5961 7 / LS 113: tcp_challenge_ack_limit challenge ACKs per second for the whole
    stack, randomised like Linux in [limit/2, 1.5*limit); a new second refills the budget.
    The per-connection limit is off here (tcp_invalid_ratelimit=0)."""
    d = drill_in(State.ESTABLISHED, "tcp_challenge_ack_limit=10", "tcp_invalid_ratelimit=0")
    d.advance(1.0 - (d.now % 1.0) + 0.001)  # the start of a fresh second
    sent = []
    for i in range(40):
        d.inject(f"R. {100 + i}:{100 + i}(0) ack 1")
        sent += d.take()
    assert 5 <= len(sent) < 15
    assert all(d.describe(s).startswith(". seq 1 ack 1 ") for s in sent)
    assert d.stats["TcpExtTCPChallengeACK"] == len(sent)
    d.advance(1.0)
    d.inject("R. 500:500(0) ack 1")
    d.expect(". 1:1(0) ack 1")


def _challenges_left(d, suppressed: int) -> int:
    """In a fresh second: one challenge on `d`, then `suppressed` RSTs the
    per-connection limit holds back, then as many fresh connections as draw a
    challenge (one each) until the stack-wide budget is spent."""
    d.advance(1.0 - (d.now % 1.0) + 0.001)
    d.inject("R. 100:100(0) ack 1")
    d.expect(". 1:1(0) ack 1")
    for i in range(suppressed):
        d.inject(f"R. {200 + i}:{200 + i}(0) ack 1")
    d.expect_nothing()
    assert d.stats["TcpExtTCPACKSkippedChallenge"] == suppressed
    drawn = 0
    for port in range(41000, 41100):
        p = d.peer(port)
        p.inject("S 0:0(0) win 65535")
        p.expect("S. 0:0(0) ack 1")
        p.inject(". 1:1(0) ack 1")
        p.accept()
        p.inject("R. 100:100(0) ack 1")
        if not p.take():
            break
        drawn += 1
    return drawn


def test_suppressed_challenge_does_not_spend_the_stack_budget():
    """LS 113 (Linux tcp_send_challenge_ack() order): the per-connection limit is checked
    first, so challenges it suppresses leave the stack-wide budget alone: fresh
    connections draw as many challenges after five suppressed ones as without them
    (the same seed gives both drills the same randomised budget)."""
    with_suppressed = _challenges_left(
        drill_in(State.ESTABLISHED, "tcp_challenge_ack_limit=10"), 5)
    without = _challenges_left(drill_in(State.ESTABLISHED, "tcp_challenge_ack_limit=10"), 0)
    assert with_suppressed == without
    assert 4 <= without <= 13  # Linux's range for limit 10 is [5, 14], one spent


def test_challenge_ack_limit_int_max_is_unlimited():
    """LS 113: tcp_challenge_ack_limit = INT_MAX disables the stack-wide limit (Linux 6.0+
    default): every challenge the per-connection limit allows is sent."""
    d = drill_in(State.ESTABLISHED, f"tcp_challenge_ack_limit={2**31 - 1}",
                 "tcp_invalid_ratelimit=0")
    for i in range(50):
        d.inject(f"R. {100 + i}:{100 + i}(0) ack 1")
        d.expect(". 1:1(0) ack 1")
    assert d.stats["TcpExtTCPChallengeACK"] == 50


# ---------------------------------------------------------------------- no connection


@pytest.mark.parametrize("seg, reply", [
    ("S 0:0(0) win 65535", "R. 0:0(0) ack 1 win 0"),  # SYN counts one
    ("F 0:10(10)", "R. 0:0(0) ack 11 win 0"),  # data + FIN, no ACK
    ("P 0:10(10)", "R. 0:0(0) ack 10 win 0"),  # data, no ACK
    ("none 5:5(0)", "R. 0:0(0) ack 5 win 0"),  # no flags at all
    (". 1:1(0) ack 5000", "R 5000:5000(0) win 0"),  # ACK set: seq = SEG.ACK
    ("F. 1:1(0) ack 77", "R 77:77(0) win 0"),
    ("S. 0:0(0) ack 1", "R 1:1(0) win 0"),
    ("P. 1:101(100) ack 9", "R 9:9(0) win 0"),
], ids=["syn", "fin_data", "data", "no_flags", "ack", "fin_ack", "syn_ack", "data_ack"])
def test_segment_for_no_connection_gets_rst(seg, reply):
    """RFC 9293 3.10.7.1 / 3.5.2 case 1 / LS 19, 100: no socket, no TIME_WAIT, no listener:
    if ACK is set, <SEQ=SEG.ACK><CTL=RST>; else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    with SYN and FIN counting one. Window 0, no options; TcpOutRsts counts it."""
    d = Drill()
    d.inject(seg, **({"ts": None} if seg.startswith("S") else {}))
    d.expect(reply + " <>")  # no options at all
    d.expect_nothing()
    assert d.stats["TcpOutRsts"] == 1


def test_listener_answers_ack_with_rst_and_ignores_rst():
    """RFC 9293 3.10.7.2 / LS 3, 101: a listener answers any ACK with R seq=SEG.ACK,
    ignores RSTs and drops bare FINs/data without ACK."""
    d = drill_in(State.LISTEN)
    d.inject(". 1:1(0) ack 1234")
    d.expect("R 1234:1234(0)")
    d.inject("F 1:1(0)")
    d.inject("P 1:11(10)")
    d.inject("R 1:1(0)")
    d.expect_nothing()
    assert d.stats["TcpOutRsts"] == 1


def test_connect_to_closed_port_is_refused():
    """RFC 9293 3.10.7.3 / LS 4, 100: the peer's RST for our SYN (R. 0 ack ISS+1) ends the
    connect() with ECONNREFUSED."""
    d = drill_in(State.SYN_SENT)
    d.inject("R. 0:0(0) ack 1", ts=None)
    assert d.state == State.CLOSED
    assert ConnectionClosed(errno.ECONNREFUSED) in d.events
    assert d.stats["TcpAttemptFails"] == 1

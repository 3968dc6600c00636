"""The drill itself: what `expect` and `script` check, so a test cannot pass by a
pattern that checks less than it says."""

from __future__ import annotations

import pytest
from drill import Drill, drill_leftovers  # noqa: F401  (autouse: nothing left unexpected)
from drill_states import drill_in

from ustack.tcp.state import State


def fin_wait_1() -> Drill:
    return drill_in(State.FIN_WAIT_1)  # our FIN at 0 s, RTO 200 ms


def test_time_is_checked_within_the_tolerance():
    fin_wait_1().script("+0.2 > F. 1:1(0) ack 1")
    fin_wait_1().script("+0.203 > F. 1:1(0) ack 1")
    for line, error in (("+0.21", "off by"),  # it left 10 ms early
                        ("+0.195", "late")):
        d = fin_wait_1()
        with pytest.raises(AssertionError, match=error):
            d.script(f"{line} > F. 1:1(0) ack 1")
        d.take()
    d = Drill(tolerance=0.02)
    d.established_passive()
    d.close()
    d.expect("F. 1:1(0) ack 1")
    d.script("0.215 > F. 1:1(0) ack 1")  # absolute: 215 ms since the drill started


@pytest.mark.parametrize("pattern, what", [
    ("FP. 1:1(0) ack 1", "flags"), (". 1:1(0) ack 1", "flags"),
    ("F. 2:2(0) ack 1", "sequence range"), ("F. 1:1(0) ack 2", "ack"),
    ("F. 1:1(0) ack 1 win 100", "window"), ("F. 1:1(0) ack 1 <nop,nop,TS val * ecr 1>", "options"),
    ("F. 1:1(0) ack 1 <>", "options"),
])
def test_every_field_given_is_checked(pattern, what):
    d = fin_wait_1()
    with pytest.raises(AssertionError, match=what):
        d.script(f"+0.2 > {pattern}")
    d.take()


def test_options_exact_any_or_unchecked():
    for opts in (" <nop,nop,TS val * ecr 5000>", " <...>", ""):
        fin_wait_1().script(f"+0.2 > F. 1:1(0) ack 1 win 2048{opts}")
    with pytest.raises(ValueError, match="end is not start"):
        fin_wait_1().script("+0.2 > F. 1:2(0) ack 1")


def test_nothing_else():
    d = fin_wait_1()
    with pytest.raises(AssertionError, match="unexpected segments"):
        d.script("+0.6 wait")  # two retransmissions left unexpected
    assert d.take()
    d = fin_wait_1()
    d.advance(0.2)
    with pytest.raises(AssertionError, match="before injecting"):
        d.inject(". 1:1(0) ack 2")
    d.take()


def test_a_second_connection_has_its_own_numbers():
    d = Drill()
    d.listen(80)
    a, b = d.peer(40001), d.peer(40002, isn=7)
    a.script("""
        +0 < S 0:0(0) win 65535
        +0 > S. 0:0(0) ack 1
    """)
    b.script("""
        +0.1 < S 0:0(0) win 65535
        +0   > S. 0:0(0) ack 1
    """)
    assert a.iss != b.iss and a.key != b.key
    a.script("""
        +0 < . 1:1(0) ack 1
        +0 accept()
        +0 send(10)
        +0 > P. 1:11(10) ack 1
    """)
    assert a.tcb.remote[1] == 40001 and b.state == State.SYN_RECEIVED
    b.script("1.1 > S. 0:0(0) ack 1", more=True)  # its SYN-ACK again, 1 s after the first
    assert len(a.take()) == 2  # and a's two RTO retransmissions meanwhile

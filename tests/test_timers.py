"""timers.py: a connection's timers as data."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp.timers import Timer, Timers


def test_next_is_the_earliest_slot_and_follows_every_change():
    t = Timers()
    assert t.next() is None
    t.set(Timer.RTO, 5.0)
    t.set(Timer.DELACK, 3.0)
    assert t.next() == 3.0
    t.set(Timer.DELACK, 9.0)  # moved later: the RTO is now first
    assert t.next() == 5.0
    t.clear(Timer.RTO)
    assert t.next() == 9.0
    t.clear_all()
    assert t.next() is None and t.items() == []


def test_due_yields_in_kind_order_and_clears():
    t = Timers()
    t.set(Timer.FIN_WAIT_2, 1.0)
    t.set(Timer.RTO, 2.0)
    t.set(Timer.DELACK, 2.0)
    t.set(Timer.KEEPALIVE, 10.0)
    assert list(t.due(2.0)) == [Timer.DELACK, Timer.RTO, Timer.FIN_WAIT_2]
    assert t.items() == [(Timer.KEEPALIVE, 10.0)]
    assert t.next() == 10.0


def test_due_sees_changes_made_by_handlers():
    t = Timers()
    t.set(Timer.RTO, 1.0)
    t.set(Timer.PERSIST, 1.0)
    seen = []
    for kind in t.due(1.0):
        seen.append(kind)
        if kind == Timer.RTO:
            t.clear(Timer.PERSIST)  # e.g. the RTO handler gave up on the connection
            t.set(Timer.RTO, 2.0)  # re-armed: not due in this pass
    assert seen == [Timer.RTO]
    assert t.next() == 2.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Timer)), st.one_of(st.none(), st.integers(0, 50)),
                          st.booleans()), max_size=40))
def test_next_always_equals_the_earliest_slot(ops):
    """Whatever the sequence of sets and clears (with next() asked in between or not),
    next() is the minimum over the set slots."""
    t = Timers()
    for kind, at, look in ops:
        if at is None:
            t.clear(kind)
        else:
            t.set(kind, float(at))
        if look:
            live = [x for x in t.at if x is not None]
            assert t.next() == (min(live) if live else None)
    for kind in t.due(25.0):
        assert kind not in {k for k, _ in t.items()}
    live = [x for x in t.at if x is not None]
    assert t.next() == (min(live) if live else None) and all(x > 25.0 for x in live)

"""Differential suite over TUN: ustack on one side of a TUN device, the kernel's TCP on
the other (both ways round), against the kernel on both ends. These are the cases where
the wire decides what the peer sees: FIN or RST, EOF or reset, every byte or not."""

from __future__ import annotations

import pytest
import test_dropin_protocol as P
import test_dropin_streams as S
import test_dropin_transport as T
from dropin import check_tun

pytestmark = pytest.mark.tun

CASES = [T.write_writelines_eof, T.flow_control, T.pause_resume_reading,
         P.clean_close_by_client, P.peer_reset, P.reset_while_writing, P.local_abort,
         P.abort_with_linger_0, P.close_with_unread_data, P.close_after_peer_eof_then_reset,
         P.user_timeout_zero_window, S.reads, S.close_during_drain, S.reset_seen_by_streams]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.fn.__name__)
async def test_over_tun(inside_netns, spec) -> None:
    await check_tun(spec)

"""A tool call longer than the lease: the worker making it heartbeats its lease, so nobody
takes the run over and the call is made once (issue 17, item 2)."""

from __future__ import annotations

import pytest

from tests.chaos.scenarios import LONG_CALL_SECONDS, LONG_LEASE_SECONDS

pytestmark = pytest.mark.chaos


@pytest.mark.chaos_long
def test_a_150_s_tool_call_with_a_20_s_lease_is_made_once_by_one_lease_holder(long_call):
    assert LONG_CALL_SECONDS > 7 * LONG_LEASE_SECONDS

    seen = long_call.result()  # ran in the background since the session's first chaos test

    deliveries = seen["deliveries"]
    assert [d.outcome for d in deliveries] == ["effect"], deliveries  # one call, made once
    assert seen["row"]["state"] == "succeeded", seen["row"]
    assert seen["row"]["token"] == 1, seen["row"]  # the lease was acquired once
    assert [r["key"] for r in seen["ledger"]] == [deliveries[0].key]
    assert seen["ledger"][0]["status"] == "succeeded"
    assert seen["tool_invoked"] == 1
    assert seen["alive"]
    if "fence" in seen["ledger"][0]:  # the ledger row was written under the one token
        assert seen["ledger"][0]["fence"] == 1, seen["ledger"]

"""Fixtures of the fault-injection suite: the scripted model and the counting endpoint for the
session, Wardens under test shared by the tests whose faults allow it, and the 150 s tool call
started in the background at the session's start so that it runs alongside the other tests."""

from __future__ import annotations

import warnings

import pytest

from tests.chaos.harness import Endpoint, ModelServer, Warden
from tests.chaos.scenarios import LongCall

# Lease and resume-sweeper periods short enough that a lost run is found in seconds (the
# durability work makes ~10 s the default heartbeat timeout; these pin it for the suite).
FAST = {"WARDEN_RUN_LEASE_SECONDS": "10", "WARDEN_RUN_RESUME_SECONDS": "2"}


def pytest_collection_modifyitems(config, items):
    # One xdist worker runs the whole suite (tests/scheduling.py): its Wardens are session
    # fixtures, started once.
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.timeout(1800))  # 20 faults, or Wardens started first
    # The long call's test only collects what ran in the background: last, so it waited least.
    items.sort(key=lambda item: item.get_closest_marker("chaos_long") is not None)


@pytest.fixture(scope="session")
def model():
    server = ModelServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def endpoint():
    server = Endpoint()
    yield server
    server.close()


@pytest.fixture(scope="session")
def wardens(model, endpoint):
    """wardens(name, **config): the Warden started under `name`, started now if there is none
    or the one there stopped (a fault it did not survive must not fail the next test too)."""
    started: dict[str, Warden] = {}
    everything: list[Warden] = []

    def get(name: str, **config) -> Warden:
        warden = started.get(name)
        # A fault it recovers from: a fresh start costs minutes on a loaded machine (200-400 s
        # of setup on CI), so a live Warden gets most of that to answer /readyz again.
        if warden is not None and warden.alive() and warden.ready_again(timeout=240):
            return warden
        if warden is not None:
            # Said in the warnings summary, which CI prints: a restart costs minutes when busy.
            warnings.warn(f"chaos: {name} started again: {warden.why_not_ready()}", stacklevel=2)
            warden.stop()
        warden = Warden(**config)
        everything.append(warden)
        try:
            warden.start(model=model, endpoint=endpoint)
        except BaseException:
            print(warden.log_tail())
            raise
        print(f"\n{name}: Warden ready and set up in {warden.started_in:.1f} s")
        started[name] = warden
        return warden

    yield get
    for warden in everything:
        warden.stop()


@pytest.fixture
def shared(wardens):
    """One launcher (web, a worker of two processes, beat, PostgreSQL, Redis)."""
    return wardens("shared", settings=FAST)


@pytest.fixture(scope="session")
def long_call():
    call = LongCall()
    yield call
    call.close()


@pytest.fixture(autouse=True)
def _long_call_in_background(request):
    """Starts the 150 s call with the session's first chaos test when it is selected."""
    if any(item.get_closest_marker("chaos_long") for item in request.session.items):
        request.getfixturevalue("long_call").start()

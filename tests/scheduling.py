"""Which tests pytest-xdist sends to one worker together (pyproject's `--dist loadgroup`).

The fault-injection suite (tests/chaos/) runs on one worker: its Wardens are session fixtures,
started once and shared by its tests. So do the launcher's supervision tests
(tests/test_up_supervision.py), which share a module's launcher: spread over three workers, each
started one of its own (a minute each on a busy machine).

pytest-xdist 3.8.0's own grouping (`xdist_group` marks) does nothing under pytest 9: it renames
each grouped test by setting `item._nodeid`, which pytest 9 no longer reads (a node's id is `_id`
now), so every group was spread over every worker, each starting its own Wardens (three "shared"
ones at once on CI, which ran out of memory). This scheduler groups by path instead, through
xdist's public `pytest_xdist_make_scheduler` hook and the scope hook its own loadgroup and
loadfile schedulers override."""

from __future__ import annotations

import pytest

# A test whose node id starts with the key runs on the one worker of that group.
GROUPS = {"tests/chaos/": "chaos", "tests/test_up_supervision.py": "supervision"}


def group_of(nodeid: str) -> str | None:
    for prefix, group in GROUPS.items():
        if nodeid.startswith(prefix):
            return group
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PathGroups(LoadScopeScheduling):
        """loadscope with a scope per group, and one per test outside them (as `load`)."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return PathGroups(config, log)

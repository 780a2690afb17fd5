"""SIGKILL of a Celery worker at 20 seeded random points across 20 runs: nothing is lost, nothing
fails, no call is acted on twice, and another worker continues within seconds."""

from __future__ import annotations

import re

import pytest

from tests.chaos.conftest import FAST
from tests.chaos.trials import fault_trials

pytestmark = pytest.mark.chaos

SEED = 17


def test_worker_sigkill_at_20_random_points_loses_and_fails_no_run(wardens, endpoint):
    warden = wardens("two-workers", settings=FAST, extra_workers=1)

    report = fault_trials(warden, endpoint, trials=20, kinds=("worker",), seed=SEED, say=print)

    print("\n" + report.table() + "\n" + report.details())
    assert report.aborted == ""
    assert len(report.trials) == 20
    assert report.lost == []
    assert report.failed == []
    assert report.duplicates == {}
    assert report.ledger_problems == []
    assert report.recoveries  # at least some faults landed mid-run, and were recovered from
    # The launcher that saw its worker die handed the worker's runs on at once, rather than
    # leaving them to the resume job at lease expiry.
    handed = {
        int(run_id)
        for match in re.finditer(r"runs ([\d, ]+) of the exited worker handed on", warden.output())
        for run_id in match.group(1).split(",")
    }
    assert handed
    assert handed <= {t.run_id for t in report.trials}

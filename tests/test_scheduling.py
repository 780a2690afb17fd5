"""tests/scheduling.py in a pytest-xdist run of its own: the tests under tests/chaos/ all run on
one worker, those of tests/test_up_supervision.py on one worker, the others spread over the rest."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_group_runs_on_one_worker_and_the_rest_spread(tmp_path):
    body = textwrap.dedent(
        """
        import time
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_one(n):
            time.sleep(0.2)
        """
    )
    (tmp_path / "tests" / "chaos").mkdir(parents=True)
    (tmp_path / "tests" / "chaos" / "test_faults.py").write_text(body)
    (tmp_path / "tests" / "test_up_supervision.py").write_text(body)
    # More single tests than the groups hold: the scheduler hands the two groups out first, one
    # to each of two workers, and the third takes singles until those two ask for more.
    (tmp_path / "test_other.py").write_text(body.replace("range(6)", "range(12)"))
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.scheduling", "-p", "no:django"),
            *("-p", "no:cacheprovider", "-n", "3", "--dist", "loadgroup", "-v"),
            *("-c", "/dev/null", "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)),
            # Its own temporary directory: without one, the inner pytest (and its xdist
            # controller) "fixes" /tmp/pytest-of-<user> to mode 0700, and the embedded
            # PostgreSQL of a test running beside it, as another user, can no longer reach its
            # data there (CI: initdb failed with "Permission denied" on pg_control).
            *("--basetemp", str(tmp_path / "basetemp")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # node ids are relative to it
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # for -p tests.scheduling
    )
    ran = re.findall(r"\[(gw\d)\].*PASSED (\S+)", run.stdout)

    assert run.returncode == 0, run.stdout + run.stderr
    assert len(ran) == 24, run.stdout
    chaos = {worker for worker, test in ran if test.startswith("tests/chaos/")}
    supervision = {worker for worker, test in ran if test.startswith("tests/test_up_supervision")}
    others = {worker for worker, test in ran if not test.startswith("tests/")}
    assert len(chaos) == 1, ran
    assert len(supervision) == 1, ran
    assert len(others) >= 2, ran  # the rest is spread (load), not kept together

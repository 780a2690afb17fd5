"""The watchdog (tests/watchdog.py) in a pytest-xdist run of its own: a worker's death names the
test it was running, and a run past its budget names what is still running, with the worker's
stack, and ends instead of waiting for CI's limit."""

import re
import subprocess
import sys
import textwrap


def test_a_dead_worker_and_a_hung_test_are_named_and_the_run_ends(tmp_path):
    (tmp_path / "test_faults.py").write_text(
        textwrap.dedent(
            """
            import os, signal, time

            def test_dies():
                os.kill(os.getpid(), signal.SIGKILL)

            def test_hangs():
                time.sleep(600)
            """
        )
    )
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.watchdog", "-p", "no:django"),
            *("-p", "no:cacheprovider", "-n", "2", "-o", "watchdog_seconds=40", "-o", "addopts="),
            *("-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr

    assert run.returncode == 3, output
    assert re.search(
        r"a worker died \(pid \d+, killed by SIGKILL; the kernel's OOM killer has killed \d+ "
        r"processes since the run began\) while running test_faults.py::test_dies",
        output,
    ), output
    assert "still running:\n  test_faults.py::test_hangs" in output, output
    assert 'test_faults.py", line 8 in test_hangs' in output, output
    assert "watchdog: ended the run, failed" in output

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
            *("--basetemp", str(tmp_path / "basetemp")),  # see tests/test_scheduling.py
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


def test_a_worker_s_fatal_error_is_repeated_in_the_final_summary(tmp_path):
    (tmp_path / "test_crash.py").write_text(
        textwrap.dedent(
            """
            import faulthandler

            def test_crashes_in_c():
                faulthandler._sigsegv()
            """
        )
    )
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.watchdog", "-p", "no:django"),
            *("-p", "no:cacheprovider", "-n", "1", "-o", "watchdog_seconds=100", "-o", "addopts="),
            *("--max-worker-restart=0", "-c", "/dev/null", "--rootdir", str(tmp_path)),
            *("--basetemp", str(tmp_path / "basetemp")),  # see tests/test_scheduling.py
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # A log's excerpt is its end: the summary there names the signal and the C-level crash
    # with the Python stack it happened under, not only "worker 'gw0' crashed".
    summary = run.stdout[run.stdout.rindex("= FAILURES =") :]
    assert run.returncode == 1, run.stdout + run.stderr
    assert "killed by SIGSEGV" in summary, summary
    assert "while running test_crash.py::test_crashes_in_c" in summary, summary
    assert "Fatal Python error: Segmentation fault" in summary, summary
    assert 'test_crash.py", line 5 in test_crashes_in_c' in summary, summary

"""A run that goes wrong says what went wrong, instead of running into CI's time limit silently.

On pytest-xdist's controller:
- the moment a worker dies, the test it was running is named (xdist only says so in the final
  summary, which a hung run never prints);
- once the run has taken `watchdog_seconds` (pyproject), it prints the tests still running, the
  failures so far, every process under the run with its state, and each worker's Python stack
  (workers dump their threads on SIGUSR1), then kills the workers and ends the run, failed.

Per-test timeouts (pytest-timeout) cannot catch a hang outside a test: a worker stuck starting its
servers, in its session teardown, or the controller waiting on a worker that will never answer.
"""

from __future__ import annotations

import contextlib
import faulthandler
import glob
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from traceback import extract_tb

import psutil
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "watchdog_seconds",
        "seconds after which a still-running xdist session is reported on and ended (0: never)",
        default="0",
    )


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        # A worker's stderr is captured while it runs a test: its threads go to a file the
        # controller reads (kept open for the process's life, as faulthandler needs).
        stacks = open(_stacks_file(os.getppid(), os.getpid()), "w")  # noqa: SIM115
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)

        def cleanup() -> None:
            faulthandler.unregister(signal.SIGUSR1)
            stacks.close()
            os.remove(stacks.name)

        config.add_cleanup(cleanup)
        config.pluginmanager.register(_FatalErrors(), "warden-fatal-errors")
        from django.core.signals import got_request_exception

        got_request_exception.connect(_note_exception, weak=False)
        return
    # What the workers wrote (a worker that died could not remove its own), gone at the end.
    config.add_cleanup(_remove_written)
    seconds = float(config.getini("watchdog_seconds") or 0)
    if seconds > 0 and getattr(config.option, "numprocesses", None):
        config.pluginmanager.register(Watchdog(seconds), "warden-watchdog")


def _remove_written() -> None:
    """What the workers wrote (one that died could not remove its own)."""
    for pattern in (
        _exceptions_file(os.getpid(), "*"),
        _stacks_file(os.getpid(), "*"),
        _fatal_file(os.getpid(), "*"),
    ):
        for path in glob.glob(pattern):
            os.remove(path)


def _stacks_file(controller: int, worker: int | str) -> str:
    return os.path.join(tempfile.gettempdir(), f"warden-test-stacks-{controller}-{worker}.txt")


def _fatal_file(controller: int, worker: int | str) -> str:
    return os.path.join(tempfile.gettempdir(), f"warden-test-fatal-{controller}-{worker}.txt")


class _FatalErrors:
    """A worker's fatal error (a segmentation fault, an abort) goes to a file as well as to its
    stderr: the controller repeats it in the run's final summary, where CI's excerpt shows it.
    After pytest's own faulthandler plugin, which enables it on stderr at configure."""

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self) -> None:
        self.file = open(_fatal_file(os.getppid(), os.getpid()), "w")  # noqa: SIM115
        faulthandler.enable(file=self.file, all_threads=True)

    def pytest_unconfigure(self) -> None:
        if hasattr(self, "file"):
            faulthandler.disable()
            self.file.close()
            os.remove(self.file.name)


def _exceptions_file(controller: int, worker: str) -> str:
    name = f"warden-test-exceptions-{controller}-{worker}.txt"
    return os.path.join(tempfile.gettempdir(), name)


def _note_exception(sender, request=None, **kwargs) -> None:
    """A view's unhandled exception, written down before Django's logging formats it: once, a
    worker died of a segmentation fault inside that formatting, and took the exception along."""
    kind, error, trace = sys.exc_info()
    if kind is None:
        return
    frames = "".join(f"    {f.filename}:{f.lineno} in {f.name}\n" for f in extract_tb(trace))
    path = getattr(request, "path", "?")
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    with open(_exceptions_file(os.getppid(), worker), "a") as out:
        out.write(f"{test}: {path}: {kind.__module__}.{kind.__qualname__}: {str(error)[:500]}\n")
        out.write(frames)


def _threads_of(worker: psutil.Process, timeout: float = 5) -> str:
    """A worker's Python threads: faulthandler writes them to its file on SIGUSR1."""
    path = _stacks_file(os.getpid(), worker.pid)
    try:
        worker.send_signal(signal.SIGUSR1)
    except psutil.Error as error:
        return f"  (gone: {error})"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.path.getsize(path):
                time.sleep(0.2)  # the handler writes all threads at once; let it finish
                with open(path) as stacks:
                    return stacks.read()
        time.sleep(0.1)
    return f"  (nothing in {path} within {timeout:.0f} s)"


def _oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed since boot (Linux 4.13+)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/vmstat") as vmstat:
        for line in vmstat:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def _exit_status(gateway) -> str:
    """How an xdist worker ended: its signal (SIGKILL: the OOM killer, or a kill by pid) or exit
    code. Its process is execnet's Popen, reaped here (execnet does not wait for it)."""
    popen = getattr(getattr(gateway, "_io", None), "popen", None)
    if popen is None:
        return "how it ended is unknown"
    try:
        # Its channel closed as it died; the process itself may take a moment more to end.
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return f"pid {popen.pid}, still exiting 10 s after its channel closed"
    if popen.returncode < 0:
        return f"pid {popen.pid}, killed by {signal.Signals(-popen.returncode).name}"
    return f"pid {popen.pid}, exit code {popen.returncode}"


def _say(text: str) -> None:
    os.write(2, (text.rstrip("\n") + "\n").encode(errors="replace"))


class Watchdog:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.running: dict[str, float] = {}  # nodeid -> when it started
        self.failed: list[str] = []
        self.ran: dict[str, list[str]] = {}  # worker -> the tests it finished, in order
        self.done = threading.Event()
        self.oom_kills = _oom_kills()
        self.crashes: list[str] = []  # what was said of each dead worker, said again at the end

    def pytest_sessionstart(self) -> None:
        self.started = time.monotonic()
        threading.Thread(target=self._watch, name="warden-watchdog", daemon=True).start()

    def pytest_sessionfinish(self) -> None:
        self.done.set()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.running[nodeid] = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            first = str(report.longrepr).strip().splitlines()[-1:] or [""]
            self.failed.append(f"{report.nodeid} ({report.when}): {first[0][:300]}")
        if report.when == "teardown":
            self.running.pop(report.nodeid, None)
            worker = getattr(getattr(report, "node", None), "gateway", None)
            self.ran.setdefault(getattr(worker, "id", "?"), []).append(report.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched) -> None:
        worker = getattr(getattr(report, "node", None), "gateway", None)
        ran = self.ran.get(getattr(worker, "id", "?"), [])
        # What a worker ran before it died is what may have set the stage for it.
        said = (
            f"\nwatchdog: a worker died ({_exit_status(worker)}; the kernel's OOM killer has"
            f" killed {_oom_kills() - self.oom_kills} processes since the run began) while"
            f" running {crashitem}, after {len(ran)} tests; the last of them:\n"
            + "\n".join(f"  {nodeid}" for nodeid in ran[-10:])
        )
        self.running.pop(crashitem, None)
        name = getattr(worker, "id", "?")
        # The workers are this process's children: their files carry its pid.
        with contextlib.suppress(OSError), open(_exceptions_file(os.getpid(), name)) as noted:
            said += f"\nwatchdog: the last exceptions its views raised:\n{noted.read()[-6000:]}"
        popen = getattr(getattr(worker, "_io", None), "popen", None)
        if popen is not None:
            with contextlib.suppress(OSError), open(_fatal_file(os.getpid(), popen.pid)) as fatal:
                if text := fatal.read():
                    said += f"\nwatchdog: its fatal error:\n{text[-8000:]}"
        _say(said)
        self.crashes.append(said)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for said in self.crashes:  # again, at the end, where a log's excerpt shows it
            terminalreporter.write_line(said)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        if error:
            _say(f"\nwatchdog: worker {node.gateway.id} went down: {error}")

    def _watch(self) -> None:
        if self.done.wait(self.seconds):
            return
        now = time.monotonic()
        lines = [f"\n\nwatchdog: the run has taken {now - self.started:.0f} s; still running:"]
        lines += [f"  {nodeid}  ({now - since:.0f} s)" for nodeid, since in self.running.items()]
        lines += [f"failed so far ({len(self.failed)}):", *(f"  {f}" for f in self.failed)]
        lines += ["processes under the run:", *self._processes()]
        _say("\n".join(lines))
        for worker in psutil.Process().children():  # the xdist workers
            _say(f"\nwatchdog: the threads of worker pid {worker.pid}:\n{_threads_of(worker)}")
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                process.kill()
        _remove_written()
        _say("watchdog: ended the run, failed")
        os._exit(3)

    @staticmethod
    def _processes() -> list[str]:
        lines = []
        now = time.time()
        for process in psutil.Process().children(recursive=True):
            try:
                with process.oneshot():
                    lines.append(
                        f"  {process.pid:>7} ppid {process.ppid():>7} {process.status():<9}"
                        f" {now - process.create_time():6.0f} s"
                        f" cpu {sum(process.cpu_times()[:2]):7.1f} s"
                        f"  {' '.join(process.cmdline())[:160]}"
                    )
            except psutil.Error:
                pass
        return lines

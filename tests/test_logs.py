"""The console's log lines: the periodic sweeps do not bury the rest (ops.logs.RoutineTasks)."""

from __future__ import annotations

import io
import logging

from celery.app.trace import LOG_FAILURE, LOG_RECEIVED, LOG_RETRY, LOG_SUCCESS

from ops.logs import RoutineTasks


def test_a_sweep_logs_its_first_lines_and_those_after_a_failure_and_other_tasks_pass(
    settings, caplog
):
    """As Celery logs them: beat's send (a tuple of arguments), a worker's receipt and result
    (a dict), with the filter the settings configure."""
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["routine_tasks"]
    config = settings.LOGGING["filters"]["routine_tasks"]
    caplog.set_level(logging.INFO, logger="celery")  # whatever LOG_LEVEL says
    assert config["()"] == "ops.logs.RoutineTasks"
    assert "agents.tasks.run_resume_task" in config["tasks"]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RoutineTasks(tasks=config["tasks"]))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    beat, strategy, trace = (
        logging.getLogger(name)
        for name in ("celery.beat", "celery.worker.strategy", "celery.app.trace")
    )
    for logger in (beat, strategy, trace):
        logger.addHandler(handler)

    def sweeps(numbers: range) -> None:
        for n in numbers:
            sweep = {
                "id": f"s{n}",
                "name": "agents.tasks.run_resume_task",
                "args": "()",
                "kwargs": "{}",
                "eta": None,
            }
            beat.info("Scheduler: Sending due task %s (%s)", "run-resume", sweep["name"])
            strategy.info(LOG_RECEIVED, sweep)
            trace.info(LOG_SUCCESS, {**sweep, "runtime": 0.01, "return_value": 0})

    try:
        sweeps(range(5))
        ingest = {
            "id": "k1",
            "name": "agents.tasks.knowledge_ingest_task",
            "args": "(1,)",
            "kwargs": "{}",
            "eta": None,
        }
        for _ in range(2):
            strategy.info(LOG_RECEIVED, ingest)
        for _ in range(2):  # a sweep's retries are not routine
            trace.info(LOG_RETRY, {"id": "s5", "name": "agents.tasks.run_resume_task", "exc": "x"})
        trace.error(
            LOG_FAILURE,
            {
                "id": "s9",
                "name": "agents.tasks.run_resume_task",
                "exc": "OperationalError",
                "description": "raised unexpected",
            },
        )
        sweeps(range(10, 13))  # after a warning or an error: shown once again
    finally:
        for logger in (beat, strategy, trace):
            logger.removeHandler(handler)

    lines = out.getvalue().splitlines()
    assert lines == [
        "INFO celery.beat: Scheduler: Sending due task run-resume (agents.tasks.run_resume_task)",
        "INFO celery.worker.strategy: Task agents.tasks.run_resume_task[s0] received",
        "INFO celery.app.trace: Task agents.tasks.run_resume_task[s0] succeeded in 0.01s: 0",
        "INFO celery.worker.strategy: Task agents.tasks.knowledge_ingest_task[k1] received",
        "INFO celery.worker.strategy: Task agents.tasks.knowledge_ingest_task[k1] received",
        "INFO celery.app.trace: Task agents.tasks.run_resume_task[s5] retry: x",
        "INFO celery.app.trace: Task agents.tasks.run_resume_task[s5] retry: x",
        "ERROR celery.app.trace: Task agents.tasks.run_resume_task[s9] raised unexpected: "
        "OperationalError",
        "INFO celery.beat: Scheduler: Sending due task run-resume (agents.tasks.run_resume_task)",
        "INFO celery.worker.strategy: Task agents.tasks.run_resume_task[s10] received",
        "INFO celery.app.trace: Task agents.tasks.run_resume_task[s10] succeeded in 0.01s: 0",
    ]

"""The Celery application; configuration comes from Django settings (CELERY_*)."""

import os

from celery import Celery
from celery.signals import task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("warden")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _keep_database_connections(**kwargs) -> None:
    """Keep the database connection from task to task (WARDEN_WORKER_CONN_MAX_AGE seconds).

    Celery's Django fixup closes it around every task, so each run's task connected anew
    (~2.5 ms on the embedded socket, more over TCP and TLS) and never reused the prepared
    checkpoint statement (settings: prepare_threshold). Set in the parent before the pool
    forks, so every worker process keeps its own; before each task, Django drops it if it
    broke (CONN_HEALTH_CHECKS) or outlived its age (close_old_connections, below)."""
    from django.conf import settings

    age = settings.WARDEN_WORKER_CONN_MAX_AGE
    if not age:
        return
    for alias in settings.DATABASES:
        settings.DATABASES[alias].update(CONN_MAX_AGE=age, CONN_HEALTH_CHECKS=True)
    task_prerun.connect(_close_old_connections, weak=False)


def _close_old_connections(**kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()

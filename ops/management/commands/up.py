from django.core.management.base import BaseCommand, CommandError

from config.env import env_int, env_str
from ops import launcher


class Command(BaseCommand):
    help = (
        "Start Warden: embedded PostgreSQL and Redis when DATABASE_URL / REDIS_URL are unset, "
        "migrations, the demo workspace on first start, then the web server (daphne), a Celery "
        "worker and Celery beat. Ctrl-C or SIGTERM stops everything it started."
    )
    requires_system_checks = ()  # checked below, after the arguments are known
    requires_migrations_checks = False

    def add_arguments(self, parser):
        only = parser.add_mutually_exclusive_group()
        only.add_argument(
            "--web-only",
            action="store_true",
            help="run only the web server (add web capacity on another machine)",
        )
        only.add_argument(
            "--worker-only",
            action="store_true",
            help="run only a Celery worker (add worker capacity on another machine)",
        )
        parser.add_argument(
            "--no-beat",
            action="store_true",
            help="do not run Celery beat (exactly one beat must run per deployment)",
        )
        parser.add_argument(
            "--host",
            default=env_str("HOST", "127.0.0.1"),
            help="address the web server listens on (HOST; default 127.0.0.1)",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=env_int("PORT", 8000, minimum=1),
            help="port the web server listens on (PORT; default 8000)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Celery worker processes (default: one per CPU)",
        )
        parser.add_argument(
            "--no-migrate",
            action="store_true",
            help="do not apply migrations at start (when a release step applies them)",
        )

    def handle(self, *args, **options):
        if not 0 < options["port"] < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {options['port']}")
        if options["concurrency"] is not None and options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        self.check(display_num_errors=False)
        only_one = options["web_only"] or options["worker_only"]
        plan = launcher.Plan(
            web=not options["worker_only"],
            worker=not options["web_only"],
            beat=not (only_one or options["no_beat"]),
            host=options["host"],
            port=options["port"],
            concurrency=options["concurrency"],
            migrate=not options["no_migrate"],
        )
        status = launcher.run(plan)
        if status:
            raise SystemExit(status)

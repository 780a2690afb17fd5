"""Settings for the test suite: always the embedded PostgreSQL and Redis, in a temporary directory.

External DATABASE_URL / REDIS_URL are ignored on purpose, so the suite never touches a real
deployment's data. Processes the tests start inherit WARDEN_TEST_VAR_DIR and share the servers.

Under pytest-xdist each worker (PYTEST_XDIST_WORKER=gw0, gw1, ...) runs servers of its own in a
directory beneath the controller's: the workers inherit the controller's environment, so a
WARDEN_TEST_VAR_DIR that some other process made (WARDEN_TEST_VAR_OWNER says which) is only the
parent of this worker's own.
"""

import os
import tempfile

for _name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WARDEN_ENCRYPTION_KEY", "ALLOWED_HOSTS"):
    os.environ.pop(_name, None)
_owner = os.environ.get("PYTEST_XDIST_WORKER", "")
if "WARDEN_TEST_VAR_DIR" not in os.environ:
    os.environ["WARDEN_TEST_VAR_DIR"] = tempfile.mkdtemp(prefix="warden-test-")
    os.environ["WARDEN_TEST_VAR_OWNER"] = _owner
elif os.environ.get("WARDEN_TEST_VAR_OWNER", "") != _owner:
    os.environ["WARDEN_TEST_VAR_DIR"] = tempfile.mkdtemp(
        prefix=f"warden-test-{_owner}-", dir=os.environ["WARDEN_TEST_VAR_DIR"]
    )
    os.environ["WARDEN_TEST_VAR_OWNER"] = _owner
os.environ["WARDEN_VAR_DIR"] = os.environ["WARDEN_TEST_VAR_DIR"]

from config.settings import *  # noqa: E402, F403

# Worker processes the tests start share the test database (pytest-django's test_<name>).
if os.environ.get("WARDEN_TEST_DATABASE"):
    DATABASES["default"]["NAME"] = os.environ["WARDEN_TEST_DATABASE"]  # noqa: F405

# No collectstatic under pytest: serve from the finders, unhashed.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise warns when it is missing
READY_CACHE_SECONDS = 0  # each test sees the state it set up (one test turns the cache on)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
# The browser tests' daphne serves static files straight from the apps (no collectstatic).
WHITENOISE_USE_FINDERS = True

# The suite's own process imports config.asgi (websocket tests) inside TestCase transactions,
# and the browser tests' daphne runs on these settings too: no pool there. The launchers the
# tests start (tests/test_up*.py, the chaos suite) run on config.settings, with the pool.
WARDEN_WEB_DATABASE_POOL = None

import pytest

from tools.demo_erp import demo_erp_install


@pytest.fixture(scope="session")
def demo_erp(django_db_setup, django_db_blocker):
    """The demo ERP database and its reader role, created once for the session (in the test
    run's own embedded PostgreSQL)."""
    with django_db_blocker.unblock():
        demo_erp_install()

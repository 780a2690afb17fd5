import pytest

from tools.demo_erp import demo_erp_install


@pytest.fixture(scope="session")
def demo_erp(django_db_setup, django_db_blocker):
    """The demo ERP schema and its reader role, committed once for the session: sql_query reads
    it over a connection of its own, which cannot see a test's uncommitted transaction."""
    with django_db_blocker.unblock():
        demo_erp_install()

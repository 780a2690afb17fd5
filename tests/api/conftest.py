"""The governance personas and agents (tests/governance/conftest.py), for the API's tests."""

from tests.governance.conftest import (  # noqa: F401 - fixtures
    governed,
    help_desk,
    people,
    role_groups,
    team,
)

"""The governance personas and agents (tests/governance/conftest.py), for the UI's tests."""

from tests.governance.conftest import (  # noqa: F401 - fixtures
    assistant,
    help_desk,
    people,
    role_groups,
    team,
)

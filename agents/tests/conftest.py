import pytest

from tests.model_server import ScriptedModelServer


@pytest.fixture
def server():
    """A scripted OpenAI-compatible model server on loopback, for real HTTP through litellm."""
    server = ScriptedModelServer()
    yield server
    server.close()

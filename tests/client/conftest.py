import pytest

from .fakes import start_fake_server


@pytest.fixture
def fake_server():
    """The fake covisit.v1 server on a free loopback port, stopped after the test."""
    server, fake = start_fake_server()
    yield fake
    server.stop(None)

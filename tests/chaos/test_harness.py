"""The harness's counting endpoint tells a retry from a double execution (no Warden needed)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest

from tests.chaos.harness import Endpoint, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def counting():
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


def post(endpoint: Endpoint, key: str, delay: float = 0) -> dict:
    request = urllib.request.Request(
        endpoint.url,
        data=json.dumps({"note": "n", "delay": delay}).encode(),
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_retry_after_the_first_request_finished_is_replayed(counting):
    assert post(counting, "k1") == {"key": "k1", "effects": 1, "replayed": False}
    assert post(counting, "k1") == {"key": "k1", "effects": 1, "replayed": True}

    assert counting.counts("k1") == (2, 1)
    assert counting.duplicate_effects() == {}


def test_a_second_request_while_the_first_is_waited_for_is_a_duplicate_effect(counting):
    first = threading.Thread(target=post, args=(counting, "k2", 1.0))
    first.start()
    counting.wait_delivery("k2", timeout=5)

    post(counting, "k2")
    first.join()

    assert [d.outcome for d in counting.for_prefix("k2")] == ["effect", "duplicate"]
    assert counting.duplicate_effects() == {"k2": 2}


def test_a_request_whose_client_died_is_abandoned_and_its_retry_replayed(counting):
    body = json.dumps({"note": "n", "delay": 30}).encode()
    with socket.create_connection(("127.0.0.1", counting.port)) as client:  # a worker...
        client.sendall(
            b"POST /effect HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k3\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        counting.wait_delivery("k3", timeout=5)
    # ...SIGKILLed mid-call: its socket closed; the endpoint notices without waiting 30 s.
    wait_for(lambda: counting.for_prefix("k3")[0].finished, timeout=10, what="abandoned")

    assert counting.for_prefix("k3")[0].client_gone
    assert post(counting, "k3")["replayed"] is True
    assert counting.counts("k3") == (2, 1)
    assert counting.duplicate_effects() == {}

import json

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_anything(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_probes_answer_any_host_header(client):
    # Load balancers probe by IP address; ALLOWED_HOSTS must not turn that into a 400.
    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")

    assert response.status_code == 200


def test_readyz_names_celery_when_no_worker_answers(client):
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "checks": {
            "database": "ok",
            "pgvector": "ok",
            "redis": "ok",
            "celery": "no worker answered",
        },
        "failed": ["celery"],
    }


def test_readyz_is_ok_with_a_real_worker(client, celery_worker_process):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert json.loads(response.content) == {
        "status": "ok",
        "checks": {"database": "ok", "pgvector": "ok", "redis": "ok", "celery": "ok"},
        "failed": [],
    }


def test_readyz_names_redis_when_it_is_unreachable(client, settings, unused_tcp_port):
    settings.REDIS_URL = f"redis://127.0.0.1:{unused_tcp_port}/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["redis"] == "unreachable"
    assert body["checks"]["celery"] == "broker unreachable"
    assert body["failed"] == ["redis", "celery"]
    assert "Connection refused" not in response.content.decode()  # no error text to the public


def test_probes_refuse_writes(client):
    response = client.post("/readyz")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_readyz_reuses_a_recent_result(client, settings, unused_tcp_port):
    settings.READY_CACHE_SECONDS = 60
    first = client.get("/readyz").json()
    settings.REDIS_URL = f"redis://127.0.0.1:{unused_tcp_port}/0"  # would fail if checked again

    second = client.get("/readyz").json()
    settings.READY_CACHE_SECONDS = 0
    third = client.get("/readyz").json()

    assert second == first
    assert third["checks"]["redis"] == "unreachable"

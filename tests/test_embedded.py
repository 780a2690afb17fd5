"""The embedded servers on their own, where the launcher tests do not reach."""

import pytest

from portal.embedded import EmbeddedError, EmbeddedPaths, EmbeddedPostgres, EmbeddedRedis


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

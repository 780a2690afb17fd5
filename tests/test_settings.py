"""Settings read the environment: production demands its secrets and passes `check --deploy`."""

from tests.processes import embedded_env, manage, production_env


def test_production_configuration_passes_deploy_checks():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_debug_in_production_fails_deploy_checks():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=production_env(DEBUG="true")
    )

    assert result.returncode == 1
    assert "security.W018" in result.stderr  # DEBUG must not be on in deployment


def test_missing_secret_key_in_production_is_one_clear_line():
    result = manage("up", env=production_env(SECRET_KEY=""))

    assert result.returncode == 2
    assert (
        result.stderr
        == "warden: configuration error: SECRET_KEY is not set: set it in the environment\n"
    )
    assert result.stdout == ""


def test_missing_allowed_hosts_in_production_is_named():
    result = manage("check", env=production_env(ALLOWED_HOSTS=""))

    assert result.returncode == 2
    assert result.stderr.startswith("warden: configuration error: ALLOWED_HOSTS is not set")
    assert len(result.stderr.splitlines()) == 1


def test_malformed_encryption_key_is_named_without_echoing_it():
    result = manage("check", env=production_env(WARDEN_ENCRYPTION_KEY="hunter2-not-a-key"))

    assert result.returncode == 2
    assert "WARDEN_ENCRYPTION_KEY must be 32 url-safe base64-encoded bytes" in result.stderr
    assert "hunter2" not in result.stderr


def test_database_url_must_be_postgresql():
    result = manage("check", env=production_env(DATABASE_URL="mysql://u:p@db/warden"))

    assert result.returncode == 2
    assert "DATABASE_URL must point at PostgreSQL" in result.stderr


def test_bad_boolean_is_named():
    result = manage("check", env=production_env(WARDEN_HTTPS="sometimes"))

    assert result.returncode == 2
    assert "WARDEN_HTTPS must be true or false" in result.stderr


def test_bad_port_is_one_line():
    result = manage("up", env=production_env(PORT="eighty"))

    assert result.returncode == 2
    assert result.stderr == (
        "warden: configuration error: PORT must be a whole number, got 'eighty'\n"
    )


def test_redis_url_without_a_scheme_is_named():
    result = manage("check", env=production_env(REDIS_URL="localhost:6379"))

    assert result.returncode == 2
    assert "REDIS_URL must start with redis://, rediss:// or unix://" in result.stderr


def test_malformed_database_url_is_named_without_echoing_it():
    result = manage("check", env=production_env(DATABASE_URL="postgresql://u:hunter2@db:abc/w"))

    assert result.returncode == 2
    assert "DATABASE_URL is not a valid URL" in result.stderr
    assert "hunter2" not in result.stderr


def test_unusable_var_dir_is_named(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    # Embedded mode keeps its generated SECRET_KEY there.
    result = manage("check", env=embedded_env(not_a_directory / "var"))

    assert result.returncode == 2
    assert result.stderr.startswith(
        f"warden: configuration error: WARDEN_VAR_DIR {not_a_directory / 'var'} is not usable"
    )

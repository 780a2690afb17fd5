"""Single sign-on's settings: each mistake is one line naming the variable, and switching
local passwords off takes password sign-in out of the backends."""

import subprocess
import sys

from tests.processes import ROOT, manage, production_env

SSO = {
    "WARDEN_OIDC_ISSUER": "https://id.example.com/realms/acme",
    "WARDEN_OIDC_CLIENT_ID": "warden",
    "WARDEN_OIDC_CLIENT_SECRET": "s3cret-never-shown",
}


def backends(**env: str) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print('\\n'.join(settings.AUTHENTICATION_BACKENDS))",
        ],
        cwd=ROOT,
        env=production_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_production_with_sso_passes_deploy_checks():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(**SSO))

    assert result.returncode == 0, result.stderr


def test_local_passwords_off_leaves_no_password_backend():
    found = backends(**SSO, WARDEN_LOCAL_PASSWORDS="false")

    assert "django.contrib.auth.backends.ModelBackend" not in found
    assert "sso.backend.PermissionsOnlyBackend" in found
    assert "sso.backend.OIDCBackend" in found


def test_local_passwords_stay_by_default():
    assert "django.contrib.auth.backends.ModelBackend" in backends(**SSO)


def test_local_passwords_off_without_sso_is_refused():
    result = manage("check", env=production_env(WARDEN_LOCAL_PASSWORDS="false"))

    assert result.returncode == 2
    assert "WARDEN_LOCAL_PASSWORDS is off and WARDEN_OIDC_ISSUER is not set" in result.stderr


def test_an_issuer_without_its_client_is_refused_without_echoing_the_secret():
    result = manage("check", env=production_env(**{**SSO, "WARDEN_OIDC_CLIENT_ID": ""}))

    assert result.returncode == 2
    assert "set WARDEN_OIDC_CLIENT_ID and WARDEN_OIDC_CLIENT_SECRET" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_malformed_group_map_is_named():
    result = manage("check", env=production_env(**SSO, WARDEN_OIDC_GROUP_MAP='{"eng": 3}'))

    assert result.returncode == 2
    assert "WARDEN_OIDC_GROUP_MAP must be a JSON object" in result.stderr


def test_a_symmetric_signature_algorithm_is_refused():
    result = manage("check", env=production_env(**SSO, WARDEN_OIDC_SIGN_ALGO="HS256"))

    assert result.returncode == 2
    assert "WARDEN_OIDC_SIGN_ALGO must be an asymmetric algorithm" in result.stderr

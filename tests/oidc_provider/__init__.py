"""OpenID Connect providers for the SSO tests.

`DotProvider`: django-oauth-toolkit as a real provider in a Django process of its own
(settings.py here; a SQLite database and an RSA key made for the run), with a sign-in form,
an authorization-code application with PKCE and consent skipped, and a `groups` claim.
`FakeProvider` (fake.py): a provider the test scripts, to hand Warden bad ID tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ops.embedded import die_with_parent

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "warden-test-client"
CLIENT_SECRET = "warden-test-secret-0123456789"


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class DotProvider:
    """django-oauth-toolkit serving OpenID Connect on 127.0.0.1:`port`."""

    def __init__(self, *, port: int, redirect_uris: list[str], users: list[dict]):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.issuer = f"{self.url}/o"
        self.dir = Path(tempfile.mkdtemp(prefix="warden-oidc-provider-"))
        (self.dir / "key.pem").write_text(rsa_pem())
        (self.dir / "setup.json").write_text(
            json.dumps(
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": redirect_uris,
                    "users": users,
                }
            )
        )
        self._log = open(self.dir / "log.txt", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.oidc_provider.serve", str(port), str(self.dir)],
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")},
                "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
                "OIDC_PROVIDER_DIR": str(self.dir),
                "OIDC_PROVIDER_ISSUER": self.issuer,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the provider exited:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(
                    f"{self.issuer}/.well-known/openid-configuration", timeout=5
                ) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the provider did not start:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return (self.dir / "log.txt").read_text()

    def control(self, username: str, **change) -> dict:
        """Change a user at the provider: groups=[...], active=bool, delete=True."""
        request = urllib.request.Request(
            f"{self.url}/test/users/{username}/",
            data=json.dumps(change).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

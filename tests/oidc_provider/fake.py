"""A scripted OpenID Connect provider on loopback, in the test's process: discovery, JWKS, an
authorization endpoint that sends the browser straight back with a code, and a token endpoint
that answers with the ID token the test asked for (a wrong audience, an expired one, another
nonce, a signature by a key it does not publish). Everything else about it is correct."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.oidc_provider import CLIENT_ID

KID = "test-key-1"


class FakeProvider:
    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fault: str | None = None  # which flaw the next ID token has
        self.claims = {"preferred_username": "fay", "email": "fay@example.com", "groups": []}
        self.grants: dict[str, str] = {}  # code -> the nonce the authorization request carried
        self.token_requests: list[dict] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                provider._get(self)

            def do_POST(self):
                provider._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler):
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/.well-known/openid-configuration":
            self._send(
                handler,
                200,
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "jwks_uri": f"{self.url}/jwks",
                    "userinfo_endpoint": f"{self.url}/userinfo",
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        elif parts.path == "/jwks":
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            self._send(handler, 200, {"keys": [{**public, "kid": KID, "alg": "RS256"}]})
        elif parts.path == "/authorize":
            code = secrets.token_urlsafe(16)
            self.grants[code] = query.get("nonce", "")
            back = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
            self._send(handler, 302, b"", headers=[("Location", back)])
        elif parts.path == "/userinfo":
            self._send(handler, 200, {"sub": "fake-subject-1", **self.claims})
        else:
            self._send(handler, 404, {"error": "not found"})

    def _post(self, handler):
        length = int(handler.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        self.token_requests.append(form)
        if urlsplit(handler.path).path != "/token" or form.get("code") not in self.grants:
            self._send(handler, 400, {"error": "invalid_grant"})
            return
        nonce = self.grants.pop(form["code"])
        self._send(
            handler,
            200,
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self.id_token(nonce),
            },
        )

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "fake-subject-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **self.claims,
        }
        key = self.key
        if self.fault == "aud":
            claims["aud"] = "some-other-client"
        elif self.fault == "exp":
            claims["iat"], claims["exp"] = now - 3600, now - 1800
        elif self.fault == "nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        elif self.fault == "iss":
            claims["iss"] = "https://evil.example"
        elif self.fault == "signature":
            key = self.other_key  # same kid, a key the JWKS does not hold
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})

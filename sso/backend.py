"""mozilla-django-oidc's authentication backend, completed for Warden.

The library does the code exchange (with the PKCE verifier), fetches the provider's JWKS and
checks the signature and the nonce; it leaves `aud` unchecked and `iss` to the caller, and
finds accounts by email. Here the ID token must also name Warden's client as its audience
(and authorised party), the discovered issuer, an expiry and an issue time; the account is
the one linked to the provider's `sub` (sso.services). Each refusal says what was wrong.
"""

from __future__ import annotations

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from sso.discovery import ProviderConfig, provider_config
from sso.services import SignInRefused, identity_sign_in

# Clock difference tolerated between Warden and the provider, for exp and iat.
LEEWAY_SECONDS = 60


class OIDCBackend(OIDCAuthenticationBackend):
    """Signs in from the SSO callback only (sso.views): `authenticate` without its
    `sso_callback` marker, as for every password sign-in, returns None at once."""

    def __init__(self, *args, **kwargs):
        # Django builds every backend for each authenticate() call: nothing here may fail, so
        # the endpoints are filled from discovery only when a callback authenticates.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.WARDEN_OIDC_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.WARDEN_OIDC_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.WARDEN_OIDC_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.OIDC_OP_TOKEN_ENDPOINT = self.OIDC_OP_USER_ENDPOINT = ""
        self.OIDC_OP_JWKS_ENDPOINT = ""
        self.config: ProviderConfig | None = None
        self.token_info: dict = {}
        self.claims: dict = {}

    def authenticate(self, request, nonce=None, code_verifier=None, sso_callback=False, **rest):
        if not sso_callback or request is None or rest:
            return None
        self.config = provider_config()
        self.OIDC_OP_TOKEN_ENDPOINT = self.config.token_endpoint
        self.OIDC_OP_USER_ENDPOINT = self.config.userinfo_endpoint
        self.OIDC_OP_JWKS_ENDPOINT = self.config.jwks_uri
        if not nonce:
            raise SignInRefused("this sign-in has no nonce to check the ID token against")
        return super().authenticate(request, nonce=nonce, code_verifier=code_verifier)

    def _provider(self) -> ProviderConfig:
        if self.config is None:  # only authenticate() leads here, and it sets it first
            raise SignInRefused("single sign-on was used before its provider was known")
        return self.config

    def get_token(self, payload):
        self.token_info = super().get_token(payload)
        if not isinstance(self.token_info, dict) or not self.token_info.get("id_token"):
            raise SignInRefused("the provider's token response has no ID token")
        return self.token_info

    def verify_token(self, token, **kwargs):
        try:
            return super().verify_token(token, **kwargs)
        except SuspiciousOperation as exc:  # the library's nonce, alg and key checks
            message = str(exc)
            if "Nonce" in message:
                message = "the ID token's nonce is not this sign-in's (a replayed token?)"
            elif "JWKS" in message:
                message = "the ID token is signed with a key the provider does not publish"
            raise SignInRefused(message) from None
        except jwt.PyJWTError as exc:
            raise SignInRefused(f"the ID token is not a valid JWT ({type(exc).__name__})") from None

    def _verify_jws(self, payload, key):
        """The signature and every claim the specification requires the client to check
        (OpenID Connect Core §3.1.3.7), not only the signature as the library does."""
        algorithm = jwt.get_unverified_header(payload).get("alg")
        if algorithm != self.OIDC_RP_SIGN_ALGO:
            raise SignInRefused(
                f"the ID token is signed with {str(algorithm)[:20]!r}, not "
                f"{self.OIDC_RP_SIGN_ALGO} as configured"
            )
        config = self._provider()
        try:
            claims = jwt.decode(
                payload,
                key,
                algorithms=[algorithm],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise SignInRefused("the ID token has expired (exp)") from None
        except jwt.InvalidAudienceError:
            raise SignInRefused(
                "the ID token was issued for another client (aud), not Warden"
            ) from None
        except jwt.InvalidIssuerError:
            raise SignInRefused("the ID token was issued by another issuer (iss)") from None
        except jwt.InvalidSignatureError:
            raise SignInRefused("the ID token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise SignInRefused(f"the ID token has no {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise SignInRefused("the ID token is not valid yet (iat/nbf)") from None
        except jwt.InvalidTokenError as exc:
            raise SignInRefused(f"the ID token is not valid ({type(exc).__name__})") from None
        audience = claims["aud"]
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise SignInRefused("the ID token's authorised party (azp) is not Warden")
        return claims

    def get_or_create_user(self, access_token, id_token, payload):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict) or str(userinfo.get("sub")) != str(payload["sub"]):
            # Core §5.3.2: userinfo about another subject must not be used.
            raise SignInRefused("the provider's userinfo is about another subject than the token")
        # The ID token's claims, brought up to date by userinfo's (groups included).
        self.claims = {**payload, **userinfo}
        return identity_sign_in(
            issuer=self._provider().issuer, claims=self.claims, client=_client(self.request)
        )

    def get_user(self, user_id):
        # Django's check, which the library's get_user drops: a deactivated account's
        # sessions end at their next request.
        return ModelBackend.get_user(self, user_id)


class PermissionsOnlyBackend(ModelBackend):
    """Django's model permissions without password sign-in (WARDEN_LOCAL_PASSWORDS=false)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        return None


def _client(request) -> dict[str, str]:
    return {
        "address": request.META.get("REMOTE_ADDR", ""),
        "agent": request.headers.get("User-Agent", "")[:200],
    }

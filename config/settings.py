"""Warden settings, read from the environment.

Two modes, chosen by DATABASE_URL:

- embedded (DATABASE_URL unset, the `make run` default): PostgreSQL and Redis run from pip wheels
  under WARDEN_VAR_DIR (``var/``), reached over Unix sockets; SECRET_KEY and the encryption key
  are generated there on first start; HTTP on loopback.
- external (DATABASE_URL set, production): SECRET_KEY, ALLOWED_HOSTS and WARDEN_ENCRYPTION_KEY
  are required and HTTPS hardening is on (WARDEN_HTTPS=false turns it off, for a trusted lab).

REDIS_URL is independent: unset means the embedded Redis.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_optional, env_path, env_str
from config.files import write_private
from config.var import DATABASE_NAME, POSTGRES_USER, EmbeddedPaths

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("WARDEN_VAR_DIR", BASE_DIR / "var")
EMBEDDED = EmbeddedPaths(VAR_DIR)

DATABASE_URL = env_optional("DATABASE_URL")
EMBEDDED_DATABASE = DATABASE_URL is None
REDIS_URL = env_optional("REDIS_URL") or EMBEDDED.redis_url
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        "REDIS_URL must start with redis://, rediss:// or unix:// (redis://host:6379/0)"
    )
EMBEDDED_REDIS = env_optional("REDIS_URL") is None

DEBUG = env_bool("DEBUG", False)


def _local_secret(name: str, make: Callable[[], str]) -> str:
    """A secret kept in var/ for the embedded mode: created once (atomically), then reused."""
    path = VAR_DIR / name
    try:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return write_private(path, make() + "\n", keep_existing=True).strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"WARDEN_VAR_DIR {VAR_DIR} is not usable ({exc.strerror}): make it writable, or "
            "point WARDEN_VAR_DIR elsewhere"
        ) from None


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


if EMBEDDED_DATABASE:
    SECRET_KEY = env_optional("SECRET_KEY") or _local_secret(
        "secret_key", lambda: secrets.token_urlsafe(50)
    )
    _encryption_keys = env_optional("WARDEN_ENCRYPTION_KEY") or _local_secret(
        "encryption_key", _fernet_key
    )
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
else:
    SECRET_KEY = env_str("SECRET_KEY")
    # Required up front: a deployment that stores its first secret a month later should not
    # find out then (tools/secrets.py still refuses clearly if the list is emptied).
    _encryption_keys = env_str("WARDEN_ENCRYPTION_KEY")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS is not set: set it to the host names Warden is served under, "
            "comma-separated"
        )

# Fernet keys for secrets at rest, newest first: the first encrypts, any of them decrypts
# (MultiFernet, tools/secrets.py). Rotation: prepend a new key, run secrets_rotate, drop the old.
WARDEN_ENCRYPTION_KEY = [key.strip() for key in _encryption_keys.split(",") if key.strip()]
for _position, _key in enumerate(WARDEN_ENCRYPTION_KEY, start=1):
    try:
        if len(base64.urlsafe_b64decode(_key.encode())) != 32:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ImproperlyConfigured(
            "WARDEN_ENCRYPTION_KEY must be 32 url-safe base64-encoded bytes (a Fernet key), or "
            f"several, comma-separated, newest first (key {_position} is not one); generate one "
            'with: python -c "import base64,os;'
            'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
        ) from None

INSTALLED_APPS = [
    "portal.apps.WardenAdminConfig",
    "django.contrib.auth",
    "axes",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "auditlog",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",  # the recovery codes
    "guardian",
    "rest_framework",
    "oauth2_provider",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "audit",
    "governance",
    "tools",
    "agents",
    "integrations",  # label "portal": see integrations/apps.py
    "portal",
    "sso",
    "ops",
    "telemetry",  # OpenTelemetry traces when an OTLP endpoint is set (telemetry/tracing.py)
]

# Object permissions (DESIGN.md §6): guardian answers per-object grants; governance.access is
# the one place that asks it. No guardian "AnonymousUser" row: anonymous callers get nothing.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out sign-in (lockout)
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
    # Single sign-on (sso/): signs in only from its own callback, never with a password.
    "sso.backend.OIDCBackend",
]
# Single sign-on with any OpenID Connect provider, found from its issuer URL (discovery):
# authorization code flow with PKCE (S256), state and nonce; the ID token's signature (the
# provider's JWKS), iss, aud, exp and nonce are checked. README, "Single sign-on".
WARDEN_OIDC_ISSUER = (env_optional("WARDEN_OIDC_ISSUER") or "").rstrip("/")
WARDEN_OIDC_CLIENT_ID = env_optional("WARDEN_OIDC_CLIENT_ID") or ""
WARDEN_OIDC_CLIENT_SECRET = env_optional("WARDEN_OIDC_CLIENT_SECRET") or ""
if WARDEN_OIDC_ISSUER and not (WARDEN_OIDC_CLIENT_ID and WARDEN_OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured(
        "WARDEN_OIDC_ISSUER is set: set WARDEN_OIDC_CLIENT_ID and WARDEN_OIDC_CLIENT_SECRET too "
        "(the client registered for Warden at the provider)"
    )
# Shown on the sign-in page's button: "Sign in with <name>".
WARDEN_OIDC_PROVIDER_NAME = env_str("WARDEN_OIDC_PROVIDER_NAME", "single sign-on")
WARDEN_OIDC_SCOPES = env_str("WARDEN_OIDC_SCOPES", "openid email profile")
if "openid" not in WARDEN_OIDC_SCOPES.split():
    raise ImproperlyConfigured("WARDEN_OIDC_SCOPES must include openid")
# The claim (ID token or userinfo) whose values map to Warden's groups and teams, and the map:
# JSON, a claim value to a group name or a list of them. On every sign-in the user's groups
# named in the map are set from the claim; groups outside the map (given by hand) are kept.
WARDEN_OIDC_GROUPS_CLAIM = env_str("WARDEN_OIDC_GROUPS_CLAIM", "groups")
try:
    WARDEN_OIDC_GROUP_MAP = json.loads(env_optional("WARDEN_OIDC_GROUP_MAP") or "{}")
except ValueError:
    WARDEN_OIDC_GROUP_MAP = None
if not isinstance(WARDEN_OIDC_GROUP_MAP, dict) or not all(
    isinstance(v, str) or (isinstance(v, list) and all(isinstance(g, str) for g in v))
    for v in WARDEN_OIDC_GROUP_MAP.values()
):
    raise ImproperlyConfigured(
        'WARDEN_OIDC_GROUP_MAP must be a JSON object: {"claim value": "Group" or ["Group", ...]}'
    )
# The claim a new account's username comes from (then email, then sub).
WARDEN_OIDC_USERNAME_CLAIM = env_str("WARDEN_OIDC_USERNAME_CLAIM", "preferred_username")
# A claim that says whether the account is active at the provider (false, "false", 0 or
# "disabled" deactivate the Warden account at sign-in and at the next renewal); unset: none.
WARDEN_OIDC_ACTIVE_CLAIM = env_optional("WARDEN_OIDC_ACTIVE_CLAIM") or ""
# Every this many seconds an SSO session asks the provider again (refresh token, userinfo):
# a refused refresh (account removed or disabled, tokens revoked) ends the session.
WARDEN_OIDC_RENEW_SECONDS = env_int("WARDEN_OIDC_RENEW_SECONDS", 300, minimum=10)
WARDEN_OIDC_SIGN_ALGO = env_str("WARDEN_OIDC_SIGN_ALGO", "RS256")
if WARDEN_OIDC_SIGN_ALGO[:2] not in {"RS", "ES", "PS"}:
    raise ImproperlyConfigured(
        "WARDEN_OIDC_SIGN_ALGO must be an asymmetric algorithm (RS256, ES256, PS256...)"
    )
# Plain-http issuers on a loopback address only, and only when this says so (the tests'
# provider): never in production.
WARDEN_OIDC_ALLOW_HTTP_LOOPBACK = env_bool("WARDEN_OIDC_ALLOW_HTTP_LOOPBACK", False)
WARDEN_OIDC_TIMEOUT_SECONDS = env_int("WARDEN_OIDC_TIMEOUT_SECONDS", 10, minimum=1)
# Local passwords (the embedded demo's accounts): off, only single sign-on signs anyone in,
# and sessions begun with a password end.
WARDEN_LOCAL_PASSWORDS = env_bool("WARDEN_LOCAL_PASSWORDS", True)
if not WARDEN_LOCAL_PASSWORDS:
    if not WARDEN_OIDC_ISSUER:
        raise ImproperlyConfigured(
            "WARDEN_LOCAL_PASSWORDS is off and WARDEN_OIDC_ISSUER is not set: nobody could sign in"
        )
    AUTHENTICATION_BACKENDS[1] = "sso.backend.PermissionsOnlyBackend"
# mozilla-django-oidc's own settings, from the above (sso/ fills the endpoints by discovery).
OIDC_RP_CLIENT_ID = WARDEN_OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = WARDEN_OIDC_CLIENT_SECRET
OIDC_RP_SCOPES = WARDEN_OIDC_SCOPES
OIDC_RP_SIGN_ALGO = WARDEN_OIDC_SIGN_ALGO
OIDC_USE_PKCE = True
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_USE_NONCE = True
OIDC_TIMEOUT = WARDEN_OIDC_TIMEOUT_SECONDS
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = False
OIDC_AUTHENTICATION_CALLBACK_URL = "sso-callback"
ANONYMOUS_USER_NAME = None

MIDDLEWARE = [
    "ops.health.ProbeMiddleware",
    "ops.requestid.RequestIdMiddleware",
    "integrations.inputs.BadInputMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): the session's factor
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
    "axes.middleware.AxesMiddleware",  # answers a locked-out sign-in with the 429 page
    "sso.middleware.ProviderRenewal",  # asks the provider again about SSO sessions (sso/)
    # Last: a session still owing its second factor reaches only the pages that settle it.
    "portal.second_factor.SecondFactorMiddleware",
]

ROOT_URLCONF = "config.urls"

# The integration API (integrations/api/): OAuth2 bearer tokens or the browser's session; errors as
# RFC 9457 problem documents; cursor pagination; throttling per account.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "integrations.api.auth.PersonalAccessTokenAuthentication",
        "integrations.api.auth.ApplicationOAuth2Authentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["integrations.api.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "integrations.api.pagination.Cursor",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("WARDEN_API_RATE", "600/min"),
        "anon": env_str("WARDEN_API_ANON_RATE", "60/min"),
    },
    "EXCEPTION_HANDLER": "integrations.api.problems.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
OAUTH2_PROVIDER: dict[str, Any] = {
    "SCOPES": {
        "agents:run": "Start runs of the agents the account may use",
        "runs:read": "Read the account's runs and their events",
        "approvals:write": "Decide approval requests the account may decide",
        "knowledge:write": "Upload documents to knowledge bases the account may write",
        "audit:read": "Read and export the audit trail",
        "admin:read": "Read the registry: tools, routes, knowledge bases",
        "admin:write": "Change the registry (tools), where the account holds the permission",
        "tools:call": "Call, over MCP, the tools and agents exposed there that the account may use",
        "evaluations:run": "Start evaluations of the agents the account owns",
        "evaluations:read": "Read the evaluations of the agents the account owns",
    },
    "DEFAULT_SCOPES": [],  # a token has the scopes it asked for and was allowed, no more
    "SCOPES_BACKEND_CLASS": "integrations.api.auth.ApplicationScopesBackend",
    "ACCESS_TOKEN_EXPIRE_SECONDS": env_int("WARDEN_TOKEN_SECONDS", 3600, minimum=60),
    # The OAuth 2.0 Security BCP (RFC 9700) throughout: no implicit or password grant, S256
    # PKCE only, tokens in the Authorization header only and hashed at rest, refresh-token
    # replay revokes the family, https redirect URIs only.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    # Dynamic client registration (RFC 7591) at /o/register/, for MCP clients that register
    # themselves: off unless WARDEN_MCP_CLIENT_REGISTRATION; anyone may register (at most
    # WARDEN_MCP_REGISTRATIONS_PER_HOUR from one address), and a registered client may ask for
    # no scope but WARDEN_MCP_REGISTERED_SCOPES (none unless set: a governance admin allows
    # each one its scopes in the admin). Every registration is audited.
    "DCR_ENABLED": env_bool("WARDEN_MCP_CLIENT_REGISTRATION", False),
    "DCR_REGISTRATION_PERMISSION_CLASSES": ("integrations.mcp.registration.RegistrationAllowed",),
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_SCHEME": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
}
# Lockouts after failed credentials (integrations/lockout.py; django-axes, counted in PostgreSQL so
# they survive restarts): an account from one address after WARDEN_LOCKOUT_FAILURES failed
# sign-ins (a client at /o/token/ after as many wrong secrets), an address after
# WARDEN_LOCKOUT_ADDRESS_FAILURES of those, and bearer tokens from an address after
# WARDEN_LOCKOUT_TOKEN_FAILURES unknown ones; for WARDEN_LOCKOUT_MINUTES after the last
# failure. README, "Lockouts", says how an admin unlocks.
AXES_ENABLED = env_bool("WARDEN_LOCKOUT", True)
AXES_HANDLER = "integrations.lockout.LockoutHandler"
AXES_FAILURE_LIMIT = env_int("WARDEN_LOCKOUT_FAILURES", 5, minimum=1)
WARDEN_LOCKOUT_ADDRESS_FAILURES = env_int("WARDEN_LOCKOUT_ADDRESS_FAILURES", 30, minimum=1)
WARDEN_LOCKOUT_TOKEN_FAILURES = env_int("WARDEN_LOCKOUT_TOKEN_FAILURES", 30, minimum=1)
WARDEN_LOCKOUT_MINUTES = env_int("WARDEN_LOCKOUT_MINUTES", 15, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=WARDEN_LOCKOUT_MINUTES)
# What the handler's groups are (it builds their queries itself), for axes' admin and checks.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_RESET_ON_SUCCESS = True  # the account's failures from that address only (the handler)
# A refused attempt does not push the end of a lockout back: Retry-After stays true, and a
# locked-out person retrying does not lock themself out longer.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "integrations.lockout.lockout_response"
# The address Django was given (daphne puts X-Forwarded-For there behind a proxy, when told).
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
# axes keeps a failed request's form: never a secret in it.
AXES_SENSITIVE_PARAMETERS = [
    "password",
    "csrfmiddlewaretoken",
    "client_secret",
    "code",
    "code_verifier",
    "refresh_token",
]
# Successful sign-ins are in the audit trail already: no second, unaudited log of them.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False
AXES_ENABLE_ADMIN = False  # Warden's own page (integrations/lockout_admin.py) audits each unlock
# A second factor (portal/second_factor.py; README, "Second factor"): who must use one after the
# password, as a list of group names plus `superusers` and `staff`, or `off`. By default the
# governance admins and reviewers in production; off in the embedded demo, whose seeded admin and
# reviewer would otherwise need an authenticator app before they see anything.
_SECOND_FACTOR_DEFAULT = ["superusers", "staff", "Governance admin", "Reviewer"]
WARDEN_SECOND_FACTOR_GROUPS = env_list(
    "WARDEN_SECOND_FACTOR_GROUPS", [] if EMBEDDED_DATABASE else _SECOND_FACTOR_DEFAULT
)
if [name.lower() for name in WARDEN_SECOND_FACTOR_GROUPS] == ["off"]:
    WARDEN_SECOND_FACTOR_GROUPS = []
elif WARDEN_SECOND_FACTOR_GROUPS == ["default"]:
    WARDEN_SECOND_FACTOR_GROUPS = _SECOND_FACTOR_DEFAULT
elif "off" in (name.lower() for name in WARDEN_SECOND_FACTOR_GROUPS):
    raise ImproperlyConfigured(
        "WARDEN_SECOND_FACTOR_GROUPS is either `off` alone or a list of group names "
        f"(`superusers`, `staff` included), got {WARDEN_SECOND_FACTOR_GROUPS!r}"
    )
OTP_TOTP_ISSUER = env_str("WARDEN_SECOND_FACTOR_ISSUER", "Warden")  # names the authenticator entry
# django-otp's own throttle: after each wrong code a device refuses the next for 1, 2, 4, ...
# seconds, until a right one; on top of the lockouts, which a password sign-in resets.
OTP_TOTP_THROTTLE_FACTOR = 1
OTP_STATIC_THROTTLE_FACTOR = 1
# A run's event stream (GET /api/v1/runs/{id}/events) is closed after this long, to be resumed
# with Last-Event-ID: no connection is held forever by a run parked for a reviewer.
WARDEN_SSE_MAX_SECONDS = env_int("WARDEN_SSE_MAX_SECONDS", 300, minimum=10)
# How many long requests (a `?wait`, an event stream, an OpenAI-compatible completion) one
# account may hold open at once.
WARDEN_API_MAX_WAITS = env_int("WARDEN_API_MAX_WAITS", 8, minimum=1)
# The longest `?wait=N` a request to start a run may ask for.
WARDEN_API_MAX_WAIT = env_int("WARDEN_API_MAX_WAIT", 60, minimum=0)
# The MCP server (/mcp, integrations/mcp): how long a tool call or an agent's answer is waited
# for before the client gets a pending result naming the run (progress notifications meanwhile);
# calls per account per minute (0: no limit); a session unseen this long is no longer open.
WARDEN_MCP_WAIT_SECONDS = env_int("WARDEN_MCP_WAIT_SECONDS", 25, minimum=0)
WARDEN_MCP_CALLS_PER_MINUTE = env_int("WARDEN_MCP_CALLS_PER_MINUTE", 120, minimum=0)
WARDEN_MCP_SESSION_IDLE_SECONDS = env_int("WARDEN_MCP_SESSION_IDLE_SECONDS", 1800, minimum=60)
WARDEN_MCP_REGISTRATIONS_PER_HOUR = env_int("WARDEN_MCP_REGISTRATIONS_PER_HOUR", 10, minimum=1)
WARDEN_MCP_REGISTERED_SCOPES = env_list("WARDEN_MCP_REGISTERED_SCOPES", [])
if unknown_scopes := set(WARDEN_MCP_REGISTERED_SCOPES) - set(OAUTH2_PROVIDER["SCOPES"]):
    raise ImproperlyConfigured(
        f"WARDEN_MCP_REGISTERED_SCOPES names unknown scopes: {', '.join(sorted(unknown_scopes))}"
    )
# How deep agents may ask agents (delegation): a run this many levels below a person's asks
# no further agent.
WARDEN_DELEGATION_DEPTH = env_int("WARDEN_DELEGATION_DEPTH", 3, minimum=1)
# DOT's own models, named so that migrations can refer to the (swappable) application model.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
SPECTACULAR_SETTINGS = {
    "TITLE": "Warden API",
    "DESCRIPTION": "Governed AI agents for integrations. Errors are RFC 9457 problem documents.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: the CSP allows nothing else
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "OAUTH2_FLOWS": ["clientCredentials"],
    "OAUTH2_TOKEN_URL": "/o/token/",
    "OAUTH2_SCOPES": OAUTH2_PROVIDER["SCOPES"],
    # Two models have a `kind`: each its own enum, by name.
    "ENUM_NAME_OVERRIDES": {
        "RunKindEnum": "agents.models.RunKind",
        "RunStateEnum": "agents.models.RunState",
        "EvaluationStateEnum": "agents.models.EvaluationState",
        "ToolKindEnum": "tools.models.ToolKind",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "integrations.api.schema.problem_responses",
    ],
}
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context.nav",
            ],
        },
    },
]

# Any: the values are strings, numbers, booleans and the OPTIONS dict.
DATABASES: dict[str, dict[str, Any]]
if EMBEDDED_DATABASE:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DATABASE_NAME,
            "USER": POSTGRES_USER,
            "HOST": str(EMBEDDED.pg_socket_dir),
        }
    }
else:
    try:
        DATABASES = {"default": dict(dj_database_url.parse(DATABASE_URL))}  # type: ignore[arg-type]
    except ValueError:  # the message would echo the URL, password included
        raise ImproperlyConfigured(
            "DATABASE_URL is not a valid URL (postgresql://user:password@host:5432/name)"
        ) from None
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_URL must point at PostgreSQL (postgresql://user:password@host:5432/name)"
        )
# Django's persistent connections are per thread and ASGI requests hop threads, so connections
# are closed after each request unless an operator opts in behind a pooler.
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
# A kept connection that a database restart broke is replaced before a request uses it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The web server's connection pool (config.asgi): at most this many connections, 2 kept open,
# a request waiting up to 10 s for one; 0 turns the pool off (a connection per request).
_WEB_POOL_SIZE = env_int("DATABASE_WEB_POOL_SIZE", 20, minimum=0)
WARDEN_WEB_DATABASE_POOL = (
    {"min_size": min(2, _WEB_POOL_SIZE), "max_size": _WEB_POOL_SIZE, "timeout": 10}
    if _WEB_POOL_SIZE
    else None
)
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
# Every statement binds its parameters on the server (Django's default is client-side, the
# values written into the SQL text), so psycopg can prepare it once a connection has run it
# five times: the access checks and the run's statements spent most of their time in
# PostgreSQL's planner (the governance snapshot: 3.5 ms planned anew each time, 0.3 ms
# prepared). DATABASE_PREPARED_STATEMENTS=false turns preparing off (Django's default), for
# poolers that cannot keep prepared statements: PgBouncer before 1.21 in transaction mode.
DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = (
    5 if env_bool("DATABASE_PREPARED_STATEMENTS", True) else None
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django's Redis cache, its client shared by the whole process (ops.cache: Django's own opened a
# connection per ASGI request). One pool for every request's thread: a command waits up to 5 s
# for a free connection when all of them are busy, instead of failing ("Too many connections",
# which redis-py's default pool raises at 100), and fails as Redis being unavailable after.
CACHES = {
    "default": {
        "BACKEND": "ops.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "warden",
        "OPTIONS": {
            "pool_class": "redis.BlockingConnectionPool",
            "max_connections": env_int("WARDEN_CACHE_REDIS_CONNECTIONS", 100, minimum=1),
            "timeout": 5,
        },
    }
}
# redis-py 8 times every socket read out after 5 s, and channels_redis blocks each read of a
# channel for exactly 5 s (BZPOPMIN): an idle websocket's read timed out now and then and the
# socket closed with 1011 (issue 17). Connections whose reads block (the channel layer, the
# run-event readers of agents.events) wait longer than they block; a dead server is still
# noticed: a PING before reusing a connection idle for 30 s, TCP keepalive on TCP connections
# (redis-py's default), and this timeout on a read that never ends.
REDIS_BLOCKING_OPTIONS = {
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
}


def _channel_layer_host(url: str) -> dict:
    """channels_redis passes a host's other keys to redis-py's ConnectionPool.from_url. A
    connection Redis dropped (restarted, CLIENT KILL) is made again and the command sent
    again, a few times, before a websocket gives up (agents.consumers)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    return {
        "address": url,
        **REDIS_BLOCKING_OPTIONS,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1), 6),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "ops.channel_layer.ChannelLayer",  # channels_redis's, cancellable
        # A page that falls behind a fast stream must not lose tokens: channels_redis drops
        # what is past a channel's capacity (100 by default).
        "CONFIG": {
            "hosts": [_channel_layer_host(REDIS_URL)],
            "prefix": "warden:channels",
            "capacity": 2000,
        },
    }
}
# Connections to Redis of a web process's shared client and of its channel layer, each (a
# command waits for a free one; governance.live.shared_redis_client, ops.channel_layer).
WARDEN_LIVE_REDIS_CONNECTIONS = env_int("WARDEN_LIVE_REDIS_CONNECTIONS", 500, minimum=1)
# A websocket and a run's event stream that carry nothing for this long send a keep-alive (a
# `keepalive` frame, an SSE comment): proxies close connections idle for a minute or so.
WARDEN_LIVE_KEEPALIVE_SECONDS = env_int("WARDEN_LIVE_KEEPALIVE_SECONDS", 15, minimum=1)


def _celery_broker_url(url: str) -> str:
    # Celery's Redis transport spells the Unix-socket scheme differently from redis-py.
    return "redis+socket://" + url.removeprefix("unix://") if url.startswith("unix://") else url


CELERY_BROKER_URL = _celery_broker_url(REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Durability (DESIGN.md §4): a task is acknowledged only after it finished, and a task whose
# worker died is redelivered; the database, not Redis, decides whether work was already done.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("WARDEN_TASK_TIME_LIMIT", 15 * 60, minimum=1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# A worker process runs one task at a time on one thread, so it keeps its database connection
# between tasks (portal/celery.py) for this long, checked before each task; 0 closes it after
# every task, as Celery does by default (behind a pooler that wants connections back, say).
WARDEN_WORKER_CONN_MAX_AGE = env_int("DATABASE_WORKER_CONN_MAX_AGE", 300, minimum=0)
# Celery's Django fixup then closes nothing itself (it would around every task).
CELERY_DB_REUSE_MAX = 10**9 if WARDEN_WORKER_CONN_MAX_AGE else None
# A run's lease is a heartbeat timeout: the worker advancing it renews it every
# WARDEN_RUN_HEARTBEAT_SECONDS (a third of it by default) while any step runs, and the
# `run-resume` beat job, every WARDEN_RUN_RESUME_SECONDS, hands a run whose lease expired (its
# worker died) to another worker: a dead worker's runs resume within lease + resume seconds.
WARDEN_RUN_LEASE_SECONDS = env_int("WARDEN_RUN_LEASE_SECONDS", 10, minimum=1)
WARDEN_RUN_HEARTBEAT_SECONDS = (
    env_int("WARDEN_RUN_HEARTBEAT_SECONDS", 0, minimum=0) or WARDEN_RUN_LEASE_SECONDS / 3
)
WARDEN_RUN_RESUME_SECONDS = env_int("WARDEN_RUN_RESUME_SECONDS", 3, minimum=1)
# A transient error (the database, Redis, the broker or a model provider unreachable) retries
# the step from its last checkpoint this many times, after an exponential backoff from
# WARDEN_RUN_RETRY_BACKOFF_MS capped at WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS (with jitter):
# by default ~40 s in all, more than a PostgreSQL restart takes. Then the run fails, naming it.
WARDEN_RUN_RETRY_ATTEMPTS = env_int("WARDEN_RUN_RETRY_ATTEMPTS", 8, minimum=1)
WARDEN_RUN_RETRY_BACKOFF_SECONDS = env_int("WARDEN_RUN_RETRY_BACKOFF_MS", 500, minimum=1) / 1000
WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS = env_int("WARDEN_RUN_RETRY_BACKOFF_MAX_SECONDS", 8, minimum=1)
# How long a tool call waits for a reviewer before the run is told it expired.
# The completion a budget reserves for before each model call, until the call says what it used.
WARDEN_BUDGET_COMPLETION_TOKENS = env_int("WARDEN_BUDGET_COMPLETION_TOKENS", 512, minimum=1)
WARDEN_APPROVAL_EXPIRY_SECONDS = env_int("WARDEN_APPROVAL_EXPIRY_SECONDS", 24 * 3600, minimum=1)
# Prompt injection: the score (0-1) at or above which a text is an injection; unset, the
# threshold the training script chose (governance/guardrails/data/injection_model.npz). With
# WARDEN_INJECTION_ENCODER=false the threshold is the fast path's own.
_injection_threshold = env_optional("WARDEN_INJECTION_THRESHOLD")
try:
    WARDEN_INJECTION_THRESHOLD = (
        None if _injection_threshold is None else float(_injection_threshold)
    )
except ValueError:
    raise ImproperlyConfigured(
        f"WARDEN_INJECTION_THRESHOLD must be a number from 0 to 1, got {_injection_threshold!r}"
    ) from None
# A knowledge base marked "discusses attacks" lets a flagged passage through below this score;
# unset, halfway from the injection threshold to 1.
_security_threshold = env_optional("WARDEN_INJECTION_SECURITY_THRESHOLD")
try:
    WARDEN_INJECTION_SECURITY_THRESHOLD = (
        None if _security_threshold is None else float(_security_threshold)
    )
except ValueError:
    raise ImproperlyConfigured(
        "WARDEN_INJECTION_SECURITY_THRESHOLD must be a number from 0 to 1, "
        f"got {_security_threshold!r}"
    ) from None
# The multilingual encoder's head reads each text's most suspicious window (numpy, ~10 ms a
# 4 KB passage); off, the detector falls back to the n-gram model and the signals alone, which read
# seven languages and miss much more outside text (README, "Injection detection").
WARDEN_INJECTION_ENCODER = env_bool("WARDEN_INJECTION_ENCODER", True)
# How long POST /v1/chat/completions waits for a run before answering that it carries on.
WARDEN_OPENAI_WAIT_SECONDS = env_int("WARDEN_OPENAI_WAIT_SECONDS", 120, minimum=1)
# Runs that can only answer, advanced by the web process that waits for them (the fast path,
# agents.orchestrator.run_here): at most this many at once per web process, the rest go to the
# workers as every other run does; 0 sends them all there. One process has one interpreter
# lock: on 2 cores, 1 was fastest at 1, 10 and 50 clients (bench/openai_overhead.py, 2 and
# more piled the workers' share of the work onto the web process).
WARDEN_FAST_PATH_RUNS = env_int("WARDEN_FAST_PATH_RUNS", 1, minimum=0)
# The answer cache (agents.answer_cache): the least cosine similarity at which a kept question's
# answer serves another question (all-MiniLM-L6-v2; and never if their negating words or numbers
# differ, answer_cache.may_match). Chosen by evaluation, not by guess: scripts/
# answer_cache_threshold.py (2026-12-06, result in bench/data/answer_cache_threshold.json): the
# most hits with no false match on 1,294 labelled pairs (tests/data/question_pairs_tune.json and
# the demo's tune split). This model cannot tell a paraphrase from a look-alike: "... email
# servers next weekend?" / "... this weekend?" is 0.991, while most paraphrases are under 0.9,
# so only rewordings of the same words pass ("How do I" / "How can I reset my password?",
# 0.992). Held out, at this threshold: 0 of 234 paraphrases in other domains and 1 false match
# of 234 look-alikes ("theft from my car" / "of my car", 0.992); the demo's 0 of 27, 0 of 26.
# The 0.923 used before matched 11 of those 234 look-alikes for 4 of the 234 paraphrases.
WARDEN_ANSWER_CACHE_SIMILARITY = 0.9911
# Kept answers of a version that is not live and served no run for this long are dropped.
WARDEN_ANSWER_CACHE_IDLE_SECONDS = env_int("WARDEN_ANSWER_CACHE_IDLE_SECONDS", 3600, minimum=0)
# Metrics (/metrics, ops/metrics.py): served to a scraper with this bearer token, or from these
# networks (CIDRs, comma-separated); with neither, to nobody.
WARDEN_METRICS_TOKEN = env_optional("WARDEN_METRICS_TOKEN") or ""
try:
    WARDEN_METRICS_NETWORKS = [
        ipaddress.ip_network(n, strict=False) for n in env_list("WARDEN_METRICS_NETWORKS", [])
    ]
except ValueError as _error:
    raise ImproperlyConfigured(
        f"WARDEN_METRICS_NETWORKS must be CIDRs, comma-separated: {_error}"
    ) from None
# Knowledge bases: the largest document accepted, uploaded or fetched.
WARDEN_KNOWLEDGE_MAX_BYTES = env_int("WARDEN_KNOWLEDGE_MAX_BYTES", 20_000_000, minimum=1)
# Files attached in the chat (agents/knowledge/services.py, conversation_file_add): the largest
# accepted (and never above WARDEN_KNOWLEDGE_MAX_BYTES), the types accepted (extensions among
# those ingestion reads), and how many one person may attach in an hour (0: no limit).
WARDEN_UPLOAD_MAX_BYTES = env_int("WARDEN_UPLOAD_MAX_BYTES", 5 * 1024 * 1024, minimum=1)
WARDEN_UPLOAD_TYPES = [
    t.lower() if t.startswith(".") else f".{t.lower()}"
    for t in env_list("WARDEN_UPLOAD_TYPES", [".txt", ".md", ".markdown", ".html", ".htm", ".pdf"])
]
WARDEN_UPLOADS_PER_HOUR = env_int("WARDEN_UPLOADS_PER_HOUR", 20, minimum=0)
# Private networks outbound requests may reach anyway (CIDRs, comma-separated): see
# tools/outbound.py. Empty by default: only public addresses.
WARDEN_OUTBOUND_ALLOW_NETWORKS = env_list("WARDEN_OUTBOUND_ALLOW_NETWORKS", [])
# Personal data (audit/pii.py). The audit trail and the tool ledger keep a
# keyed hash of each value, never the value: the key is WARDEN_PII_HASH_KEY, or one derived
# from SECRET_KEY when unset (set it so rotating SECRET_KEY keeps hashes comparable; keep it
# secret: with the key, anyone can test a guessed value). Phone numbers without a country code
# are recognised in the formats of these countries (ISO codes, comma-separated).
WARDEN_PII_HASH_KEY = env_optional("WARDEN_PII_HASH_KEY") or ""
WARDEN_PII_PHONE_REGIONS = env_list(
    "WARDEN_PII_PHONE_REGIONS", ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "IE"]
)
# Model output (governance/guardrails/output.py): hosts whose images an answer may show (and
# the Content-Security-Policy lets the browser load); by default none outside Warden. Links to
# any host stay links, unless they carry data in their query (then shown as inert text).
WARDEN_OUTPUT_IMAGE_HOSTS = [h.lower() for h in env_list("WARDEN_OUTPUT_IMAGE_HOSTS", [])]
for _host in WARDEN_OUTPUT_IMAGE_HOSTS:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", _host):
        raise ImproperlyConfigured(  # it goes into the Content-Security-Policy header
            f"WARDEN_OUTPUT_IMAGE_HOSTS must be host names, comma-separated: not {_host!r}"
        )
# Webhooks (integrations/webhooks.py): attempts per delivery; the first retry's delay, doubled for
# each next one up to the cap; each POST's timeout. Plain http URLs only where allowed (by
# default in embedded mode, which is for trying Warden out): production receivers use https.
WARDEN_WEBHOOK_MAX_ATTEMPTS = env_int("WARDEN_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WARDEN_WEBHOOK_BACKOFF_SECONDS = env_int("WARDEN_WEBHOOK_BACKOFF_SECONDS", 10, minimum=1)
WARDEN_WEBHOOK_BACKOFF_MAX_SECONDS = env_int("WARDEN_WEBHOOK_BACKOFF_MAX_SECONDS", 3600, minimum=1)
WARDEN_WEBHOOK_TIMEOUT_SECONDS = env_int("WARDEN_WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
WARDEN_WEBHOOK_ALLOW_HTTP = env_bool("WARDEN_WEBHOOK_ALLOW_HTTP", EMBEDDED_DATABASE)
# Databases the `sql_query` tool may read, by name (a tool's settings name one): libpq
# connection strings of a role that may only SELECT, as JSON ({"erp": "host=... user=..."}).
# Embedded mode adds the demo ERP: database warden_demo_erp, read as the role
# warden_erp_reader (tools/demo_erp.py), which can read nothing else.
try:
    WARDEN_SQL_DATABASES = json.loads(env_optional("WARDEN_SQL_DATABASES") or "{}")
except ValueError:  # the message would echo the value, passwords included
    WARDEN_SQL_DATABASES = None
if not isinstance(WARDEN_SQL_DATABASES, dict):
    raise ImproperlyConfigured(
        'WARDEN_SQL_DATABASES must be a JSON object: {"name": "libpq connection string"}'
    )
if EMBEDDED_DATABASE:
    WARDEN_SQL_DATABASES.setdefault(
        "demo_erp", f"host={EMBEDDED.pg_socket_dir} user=warden_erp_reader dbname=warden_demo_erp"
    )
# Mail (the send_email tool): a file per message under var/mail in embedded mode; SMTP from
# EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS otherwise.
if EMBEDDED_DATABASE:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = VAR_DIR / "mail"
else:
    EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
    EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 15
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "warden@localhost")
# Drift watch (agents.drift): each day, per agent, the day's answer confidence, top retrieval
# similarity (population stability index over ten bins), refusal rate (the difference of the
# two proportions) and tool-call mix (Jensen-Shannon distance) against the
# WARDEN_DRIFT_REFERENCE_DAYS before it. A signal is compared only with at least
# WARDEN_DRIFT_MIN_SAMPLES on the day and WARDEN_DRIFT_MIN_REFERENCE_SAMPLES in the reference,
# so a quiet day never alerts. The `drift-check` beat job checks yesterday at
# WARDEN_DRIFT_CHECK_HOUR, UTC (Celery's clock); days are cut in TIME_ZONE.
WARDEN_DRIFT_REFERENCE_DAYS = env_int("WARDEN_DRIFT_REFERENCE_DAYS", 14, minimum=1)
WARDEN_DRIFT_MIN_SAMPLES = env_int("WARDEN_DRIFT_MIN_SAMPLES", 30, minimum=1)
WARDEN_DRIFT_MIN_REFERENCE_SAMPLES = env_int("WARDEN_DRIFT_MIN_REFERENCE_SAMPLES", 100, minimum=1)
WARDEN_DRIFT_PSI_THRESHOLD = env_float("WARDEN_DRIFT_PSI_THRESHOLD", 0.25, minimum=0)
WARDEN_DRIFT_REFUSAL_THRESHOLD = env_float(
    "WARDEN_DRIFT_REFUSAL_THRESHOLD", 0.10, minimum=0, maximum=1
)
WARDEN_DRIFT_TOOL_MIX_THRESHOLD = env_float(
    "WARDEN_DRIFT_TOOL_MIX_THRESHOLD", 0.30, minimum=0, maximum=1
)
WARDEN_DRIFT_CHECK_HOUR = env_int("WARDEN_DRIFT_CHECK_HOUR", 1, minimum=0)
if WARDEN_DRIFT_CHECK_HOUR > 23:
    raise ImproperlyConfigured(
        f"WARDEN_DRIFT_CHECK_HOUR must be an hour from 0 to 23, got {WARDEN_DRIFT_CHECK_HOUR}"
    )

CELERY_BEAT_SCHEDULE = {
    "run-resume": {
        "task": "agents.tasks.run_resume_task",
        "schedule": WARDEN_RUN_RESUME_SECONDS,
    },
    "approvals-expire": {
        "task": "governance.tasks.approvals_expire_task",
        "schedule": env_int("WARDEN_APPROVAL_EXPIRE_CHECK_SECONDS", 30, minimum=1),
    },
    "budget-reservations-release": {
        "task": "governance.tasks.budget_reservations_release_task",
        "schedule": 300,
    },
    "webhook-deliveries-resume": {
        "task": "portal.tasks.webhook_deliveries_resume_task",
        "schedule": 60,
    },
    "answer-cache-prune": {
        "task": "agents.tasks.answer_cache_prune_task",
        "schedule": 3600,
    },
    "audit-anchor": {
        "task": "audit.tasks.audit_anchor_task",
        "schedule": env_int("WARDEN_AUDIT_ANCHOR_SECONDS", 60, minimum=1),
    },
    "drift-check": {
        "task": "agents.tasks.drift_check_task",
        "schedule": crontab(minute=5, hour=WARDEN_DRIFT_CHECK_HOUR),
    },
    # Canary and A/B releases: roll back on a crossed guard, promote a ready canary.
    "releases-judge": {
        "task": "agents.tasks.releases_judge_task",
        "schedule": env_int("WARDEN_RELEASES_JUDGE_SECONDS", 60, minimum=1),
    },
}

# django-auditlog records field-level changes of configuration models (audit/apps.py registers
# them). Its remote address comes from the client-supplied X-Forwarded-For: not trusted.
AUDITLOG_DISABLE_REMOTE_ADDR = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
# One date and time form on every page, with its zone (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Transport security. Behind a TLS-terminating load balancer set WARDEN_BEHIND_PROXY=true so
# Django trusts X-Forwarded-Proto (and daphne X-Forwarded-For).
HTTPS = env_bool("WARDEN_HTTPS", not EMBEDDED_DATABASE)
BEHIND_PROXY = env_bool("WARDEN_BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", HTTPS)
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
READY_CACHE_SECONDS = env_int("WARDEN_READY_CACHE_SECONDS", 2, minimum=0)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {LOG_LEVEL!r}"
    )
# One JSON object per line (request, run, user, trace and span ids; ops/logs.py), or text.
WARDEN_LOG_FORMAT = env_str("WARDEN_LOG_FORMAT", "text").lower()
if WARDEN_LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"WARDEN_LOG_FORMAT must be json or text, got {WARDEN_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "ops.logs.JsonFormatter"},
    },
    "filters": {
        "routine_tasks": {
            "()": "ops.logs.RoutineTasks",
            # the sweeps due every minute or more often: their task lines are noise
            "tasks": sorted(
                {
                    entry["task"]
                    for entry in CELERY_BEAT_SCHEDULE.values()
                    if isinstance(entry["schedule"], int | float) and entry["schedule"] <= 60
                }
            ),
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": WARDEN_LOG_FORMAT,
            "filters": ["routine_tasks"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Clients that log what they send: httpx every URL at INFO (an HTTP tool's URL holds its
        # arguments, personal data included), the OpenAI SDK and litellm whole prompts at
        # DEBUG. Never below WARNING, whatever LOG_LEVEL says.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
        "LiteLLM": {"level": "WARNING"},
        "LiteLLM Router": {"level": "WARNING"},
        "LiteLLM Proxy": {"level": "WARNING"},
        # axes says at INFO, on every sign-in and failure, that it swept expired attempts; its
        # failures and lockouts are WARNINGs (and each lockout is in the audit trail).
        "axes": {"level": "WARNING"},
    },
}

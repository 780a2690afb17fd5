import hashlib
import ipaddress
import json
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from governance.querysets import RestrictedQuerySet

# What OpenAI-compatible function calling accepts as a tool name.
tool_name_validator = RegexValidator(
    r"^[A-Za-z0-9_-]{1,64}$",
    "Use 1 to 64 letters, digits, underscores or hyphens: models see this name.",
)
# Names Warden gives tools of its own: an agent asked as a tool (ask_<slug>, by MCP clients and
# by other agents), the MCP server's warden_run_result.
reserved_name_validator = RegexValidator(
    r"^(ask_|warden_)",
    "Names starting with ask_ or warden_ are Warden's own (agents asked as tools).",
    inverse_match=True,
)


class ToolKind(models.TextChoices):
    PYTHON = "python", "Python function"
    HTTP = "http", "HTTP endpoint"
    MCP = "mcp", "MCP server tool"


class RiskTier(models.TextChoices):
    READ = "read", "Read: looks things up"
    WRITE = "write", "Write: changes something"
    CRITICAL = "critical", "Critical: hard to undo"


class Approval(models.TextChoices):
    TIER = "tier", "As the risk tier says (write and critical need approval)"
    ALWAYS = "always", "Always"
    NEVER = "never", "Never (critical tools still need it)"


def _object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "additionalProperties": False}


class Tool(models.Model):
    """A tool agents may call: its contract (name, description, JSON Schema of the arguments),
    how it runs (`kind` and that kind's `config`, checked by the kind's executor) and the
    limits Warden enforces around every call. `version` hashes the contract and configuration;
    every invocation records it."""

    name = models.CharField(
        max_length=64, unique=True, validators=[tool_name_validator, reserved_name_validator]
    )
    description = models.TextField(help_text="What the tool does, for the model choosing it.")
    parameters = models.JSONField(
        default=_object_schema, help_text="JSON Schema (Draft 2020-12) of the arguments."
    )
    kind = models.CharField(max_length=8, choices=ToolKind.choices)
    config = models.JSONField(default=dict, blank=True, help_text="Settings of the tool's kind.")
    risk = models.CharField(max_length=8, choices=RiskTier.choices, default=RiskTier.READ)
    approval = models.CharField(
        "requires approval", max_length=8, choices=Approval.choices, default=Approval.TIER
    )
    timeout = models.PositiveIntegerField(
        "timeout (seconds)", default=30, validators=[MinValueValidator(1), MaxValueValidator(600)]
    )
    result_limit = models.PositiveIntegerField(
        "result size limit (characters)",
        default=16_000,
        validators=[MinValueValidator(100), MaxValueValidator(1_000_000)],
        help_text="Longer results reach the model cut off, with a marker saying so.",
    )
    rate_limit = models.PositiveIntegerField(
        "rate limit (calls per user per minute)", default=0, help_text="0: no limit."
    )
    enabled = models.BooleanField(default=False)
    mcp_exposed = models.BooleanField(
        "exposed over MCP",
        default=False,
        help_text="MCP clients may call it, those of their accounts that may use it "
        "(integrations/mcp); each call governed as a run's.",
    )
    output_trusted = models.BooleanField(
        "output is trusted",
        default=False,
        help_text="Only people you trust can put text into what it returns. Untrusted (the "
        "default, built-in tools included: a ticket's title is anyone's text): a tool call "
        "after its output was read waits for a reviewer, whatever that tool's approval setting "
        "(read-only tools excepted). Its output is still scanned and quarantined.",
    )
    version = models.CharField(max_length=16, editable=False)
    mcp_server = models.ForeignKey(
        "tools.MCPServer", null=True, blank=True, on_delete=models.CASCADE, related_name="tools"
    )
    approver_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="approvable_tools",
        help_text="Members of these groups decide this tool's approval requests (with the "
        "agent's approver groups). None here or on the agent: any reviewer.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [("use_tool", "Can use the tool")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.version = self.compute_version()
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
        super().save(*args, **kwargs)

    @property
    def requires_approval(self) -> bool:
        """Whether every call waits for a reviewer (governance.policy decides it per call,
        guardrail verdicts included; this is the tool's own part of it)."""
        if self.approval == Approval.ALWAYS or self.risk == RiskTier.CRITICAL:
            return True
        return self.approval == Approval.TIER and self.risk == RiskTier.WRITE

    @property
    def has_side_effects(self) -> bool:
        return self.risk != RiskTier.READ

    def compute_version(self) -> str:
        contract = {"kind": self.kind, "parameters": self.parameters, "config": self.config}
        canonical = json.dumps(contract, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def clean(self) -> None:
        from tools.executors import config_problem
        from tools.schemas import parameters_problem

        errors = {}
        if problem := parameters_problem(self.parameters):
            errors["parameters"] = problem
        if (
            self.kind
            and not errors
            and (problem := config_problem(self.kind, self.config, self.parameters))
        ):
            errors["config"] = problem
        if self.kind == ToolKind.MCP and self.mcp_server_id is None:
            errors["mcp_server"] = "An MCP tool belongs to an MCP server."
        if errors:
            raise ValidationError(errors)

    def as_openai_tool(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class MCPTransport(models.TextChoices):
    STDIO = "stdio", "stdio (a command Warden starts)"
    HTTP = "http", "Streamable HTTP"


class MCPServer(models.Model):
    """A Model Context Protocol server whose tools can be synced into `Tool` rows."""

    name = models.SlugField(max_length=100, unique=True)
    transport = models.CharField(max_length=8, choices=MCPTransport.choices)
    command = models.CharField(max_length=500, blank=True, help_text="stdio: the program.")
    arguments = models.JSONField(default=list, blank=True, help_text="stdio: a list of strings.")
    environment = models.JSONField(
        default=dict, blank=True, help_text="stdio: extra environment variables (name: value)."
    )
    url = models.URLField(max_length=500, blank=True, help_text="Streamable HTTP: the endpoint.")
    auth_secret = models.ForeignKey(
        "tools.Secret",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Streamable HTTP: sent as the Authorization header.",
    )
    allow_networks = models.JSONField(
        default=list,
        blank=True,
        help_text="Streamable HTTP: private networks (CIDRs) the server may be on, such as "
        '["10.20.0.0/16"]; public addresses need none.',
    )
    synced_at = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=300, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.transport == MCPTransport.STDIO and not self.command:
            errors["command"] = "A stdio server needs the command that starts it."
        if self.transport == MCPTransport.HTTP and not self.url:
            errors["url"] = "A streamable-HTTP server needs its URL."
        if not isinstance(self.arguments, list) or not all(
            isinstance(a, str) for a in self.arguments
        ):
            errors["arguments"] = 'A list of strings, such as ["--local-timezone", "UTC"].'
        if not isinstance(self.environment, dict) or not all(
            isinstance(v, str) for v in self.environment.values()
        ):
            errors["environment"] = (
                'An object of strings, such as {"API_URL": "https://...", "API_KEY": '
                '"secret:crm-key"} ("secret:NAME" is replaced by that secret).'
            )
        if not isinstance(self.allow_networks, list):
            errors["allow_networks"] = 'A list of networks, such as ["10.20.0.0/16"].'
        else:
            for network in self.allow_networks:
                try:
                    ipaddress.ip_network(str(network), strict=False)
                except ValueError:
                    errors["allow_networks"] = f"{network!r} is not an address or network."
        if errors:
            raise ValidationError(errors)


class InvocationStatus(models.TextChoices):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ToolInvocation(models.Model):
    """The invocation ledger: one row per tool call, unique on its key
    ``run:<id>:step:<n>:call:<k>`` (or ``test:<uuid>`` for an admin's test call).

    A Python tool's effect and its row commit together. An HTTP or MCP call's row is committed
    as `started` before the call and completed after, so a retry (the worker died in between)
    finds it: a finished row's result is reused instead of calling again; a `started` row means
    the effect may or may not have happened, and the retry sends the same key so the external
    system can deduplicate. Every write to a row is fenced by the run's lease token (`fence`).
    """

    key = models.CharField(max_length=200, unique=True)
    tool = models.CharField(max_length=64)
    tool_version = models.CharField(max_length=16, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    arguments = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=InvocationStatus.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The fencing token of the run's lease under which the row was last claimed (None for an
    # admin's test call): a worker whose lease was taken over can neither claim nor finish it.
    fence = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(
        default=0, db_default=0, help_text="How many times the call was started."
    )

    def __str__(self) -> str:
        return f"{self.key} {self.tool} ({self.status})"


class DemoTicket(models.Model):
    """The demo write tool's side effect: an IT help-desk ticket (see tools/builtin.py)."""

    title = models.CharField(max_length=200)
    priority = models.CharField(max_length=10)
    # Stored to show which call made it; deliberately not unique, so that "exactly one ticket"
    # in the tests is the ledger's doing, not this table's.
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"ticket {self.pk}: {self.title}"


class SecretKind(models.TextChoices):
    BEARER = "bearer", "Bearer token"
    BASIC = "basic", "Basic auth (user:password)"
    HEADER = "header", "Header value"
    OTHER = "other", "Other (used as given)"


class Secret(models.Model):
    """A credential a tool or model route uses, such as an API token, stored only as a Fernet
    token under WARDEN_ENCRYPTION_KEY (tools/secrets.py).

    Written through `secret_set` (audited, never with the value) and read only by `reveal()`,
    for the executor that sends it; it is never displayed back, logged, audited or sent to a
    model. Tools refer to it by `name`, which therefore does not change once created.
    """

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=SecretKind.choices, default=SecretKind.BEARER)
    ciphertext = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    value_set_at = models.DateTimeField("value set", null=True, blank=True, editable=False)
    # When `secrets_rotate` last re-encrypted the value under the newest key.
    rotated_at = models.DateTimeField("key rotated", null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Secret {self.name!r} ({self.kind})>"

    def set_value(self, plaintext: str) -> None:
        """Encrypt `plaintext` into `ciphertext` (not saved: `secret_set` saves and audits)."""
        from tools.secrets import encrypt  # tools.secrets imports this module

        self.ciphertext = encrypt(plaintext)

    def reveal(self) -> str:
        """The plaintext, for the executor that sends it; raises SecretError when no
        configured key can read it."""
        from tools.secrets import decrypt

        return decrypt(self.ciphertext, label=f"secret {self.name!r}")


class DemoMeeting(models.Model):
    """The demo calendar: what `schedule_meeting` writes (see tools/builtin.py)."""

    title = models.CharField(max_length=200)
    start = models.DateTimeField()
    end = models.DateTimeField()
    attendees = ArrayField(models.CharField(max_length=254))
    organiser = models.CharField(max_length=150, blank=True)
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"meeting {self.pk}: {self.title}"

from django.db import models


class InvocationStatus(models.TextChoices):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ToolInvocation(models.Model):
    """The invocation ledger: one row per side-effecting tool call, unique on its key
    ``run:<id>:step:<n>:call:<k>``.

    The row is committed as `started` before the tool runs and completed after, so a retry
    (the worker died in between) finds it and reuses the stored result instead of calling the
    tool again; a `started` row with no result means the effect may or may not have happened,
    and the key was handed to the tool so the external system can deduplicate.
    """

    key = models.CharField(max_length=200, unique=True)
    tool = models.CharField(max_length=64)
    arguments = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=InvocationStatus.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} {self.tool} ({self.status})"


class DemoTicket(models.Model):
    """The demo write tool's side effect: an IT help-desk ticket (see tools/demo.py)."""

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

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

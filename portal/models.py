from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class PersonalAccessToken(models.Model):
    """A user's own credential for the API: a random secret shown once when it is made, kept
    only as its SHA-256 digest (the secret is 256 random bits, so a fast digest is enough and
    lets a request find its token by index). It acts as its user, narrowed to its `scopes`,
    until it expires or is revoked; `prefix` (the secret's first characters) lets a user tell
    their tokens apart without Warden keeping the secret."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for.")
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list, help_text="The OAuth2 scopes the token carries.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    # The two names DRF's and our HasScope permission read on request.auth, as on DOT's tokens.
    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    def is_valid(self, scopes=None) -> bool:
        return self.active and set(scopes or ()) <= set(self.scopes)

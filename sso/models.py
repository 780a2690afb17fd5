from django.conf import settings
from django.db import models


class Identity(models.Model):
    """Who a Warden account is at an OpenID Connect provider: the issuer and its `sub`, the
    only pair the specification makes stable and unique. Sign-ins find the account by this
    pair, never by email or username (both can be changed or reused at the provider).
    `deactivated_by_provider` records that Warden deactivated the account because the provider
    said so, so that a later sign-in the provider accepts may activate it again; an account an
    admin deactivated stays so."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities"
    )
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)
    deactivated_by_provider = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"

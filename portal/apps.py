from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Warden portal"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents import hooks
        from audit.services import SYSTEM
        from portal.models import ApplicationScopes, Webhook
        from portal.webhooks import webhook_run_state_changed

        # A run's change of state is recorded for the webhooks that want to hear of it.
        if webhook_run_state_changed not in hooks.run_state_listeners:
            hooks.run_state_listeners.append(webhook_run_state_changed)

        # `secrets_rotate` re-encrypts the webhooks' signing secrets with the tools' secrets.
        from portal.webhooks import webhook_secret_reencrypt
        from tools.secrets import ENCRYPTED_ELSEWHERE, EncryptedElsewhere

        if not any(kind.noun == "webhook secret(s)" for kind in ENCRYPTED_ELSEWHERE):
            ENCRYPTED_ELSEWHERE.append(
                EncryptedElsewhere(
                    noun="webhook secret(s)",
                    ids=lambda: Webhook.objects.order_by("pk").values_list("pk", flat=True),
                    reencrypt=lambda pk: webhook_secret_reencrypt(webhook_id=pk, actor=SYSTEM),
                    missing=Webhook.DoesNotExist,
                )
            )

        # Field-level history of the webhooks (the secret's ciphertext left out; its rotations
        # are audited by webhook_secret_rotate).
        auditlog.register(Webhook, exclude_fields=["secret_ciphertext"])
        # Which scopes an application may ask for is a governance decision: its history too.
        auditlog.register(ApplicationScopes)


class WardenAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin, its site with Warden's dashboard (portal.dashboard)."""

    default = False  # AdminConfig's own flag, inherited: "portal" still means PortalConfig
    default_site = "portal.dashboard.WardenAdminSite"

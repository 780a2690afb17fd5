from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """The REST API, the OpenAI-compatible endpoint, webhooks, personal access tokens, the OAuth
    scopes an application may ask for, and the lockout on every credential.

    Its label stays "portal", the app these lived in before the layout was split: tables,
    migrations, content types and permissions ("portal.view_webhook"), audit labels
    ("portal.webhook") and admin URLs are unchanged for deployments and their exported trails.
    """

    name = "integrations"
    label = "portal"
    verbose_name = "Warden integrations"

    def ready(self) -> None:
        """The one place the integrations connect to what the apps below them send (their
        signals.py)."""
        from auditlog.registry import auditlog
        from django.db.models.signals import post_save
        from oauth2_provider.models import get_application_model

        from agents import signals
        from integrations.mcp.registration import application_registered
        from integrations.models import ApplicationScopes, Webhook
        from integrations.webhooks import webhook_run_state_changed

        # A run's change of state is recorded for the webhooks that want to hear of it.
        signals.on_run_state(webhook_run_state_changed, dispatch_uid="integrations.webhooks")

        # A client that registered itself (RFC 7591) is audited and given its allowed scopes.
        post_save.connect(
            application_registered,
            sender=get_application_model(),
            dispatch_uid="integrations.mcp.registration",
        )

        # Field-level history of the webhooks (the secret's ciphertext left out; its rotations
        # are audited by webhook_secret_rotate).
        auditlog.register(Webhook, exclude_fields=["secret_ciphertext"])
        # Which scopes an application may ask for is a governance decision: its history too.
        auditlog.register(ApplicationScopes)

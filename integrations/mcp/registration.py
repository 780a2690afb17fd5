"""Clients that register themselves (RFC 7591, django-oauth-toolkit's /o/register/), as MCP
clients do before their person signs in: who may register (anyone, a few times an hour from
one address), and what a registered client may then do: ask for the scopes an admin allows
(WARDEN_MCP_REGISTERED_SCOPES, none unless set) and reach over MCP the tools and agents an
admin lists on its allowlist (none until then). Audited as it happens. Changing or deleting a
registration (RFC 7592) is not offered: config.urls answers it 404; an admin does it."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from audit.services import Target, audit_record
from governance import ratelimits


class RegistrationAllowed:
    """DOT's DCR_REGISTRATION_PERMISSION_CLASSES: open registration, rate-limited per address
    (an anonymous write must not fill the application table)."""

    def has_permission(self, request) -> bool:
        per_hour = f"{settings.WARDEN_MCP_REGISTRATIONS_PER_HOUR}/hour"
        return ratelimits.hit(per_hour, "client-registration", request.META.get("REMOTE_ADDR"))


def application_registered(sender, instance, created: bool, **_signal) -> None:
    """post_save of DOT's Application (DOT's view saves it; this is the one place Warden hears
    of it): a client that registered itself gets the scopes the deployment allows registered
    clients and an empty MCP allowlist, and the registration is audited, in the transaction
    that saved it."""
    from integrations.models import ApplicationScopes, MCPClientAccess

    if not created or instance.registration_source != instance.RegistrationSource.DCR:
        return
    scopes = sorted(settings.WARDEN_MCP_REGISTERED_SCOPES)
    with transaction.atomic():
        ApplicationScopes.objects.create(application=instance, scopes=scopes)
        # And an empty MCP allowlist: it reaches no tool or agent until an admin lists them.
        MCPClientAccess.objects.create(application=instance)
        audit_record(
            actor=None,
            action="oauth.client_registered",
            target=Target.of(instance),
            data={
                "client_id": instance.client_id,
                "name": instance.name,
                "redirect_uris": instance.redirect_uris.split(),
                "client_type": instance.client_type,
                "grant_type": instance.authorization_grant_type,
                "scopes": scopes,
                "allowlist": [],
            },
        )

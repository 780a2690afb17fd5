"""django-oauth-toolkit's admin, for governance: access and refresh tokens revoked through
Warden's audited services (DOT's own actions revoke them unaudited); integrations.admin adds
revoking an application's every token in one action. Which of these the admin index shows
first is the admin site's business (portal.dashboard: authorization codes, ID tokens and
refresh tokens sit in a collapsed "OAuth internals" section)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.utils.translation import ngettext
from oauth2_provider.models import get_access_token_model, get_refresh_token_model

from integrations.tokens import oauth_refresh_token_revoke, oauth_token_revoke

if TYPE_CHECKING:  # base classes mypy can see; at run time, DOT's registered ones
    _access_admin = admin.ModelAdmin
    _refresh_admin = admin.ModelAdmin
else:
    _access_admin = type(admin.site.get_model_admin(get_access_token_model()))
    _refresh_admin = type(admin.site.get_model_admin(get_refresh_token_model()))


def _may_revoke(request, model) -> bool:
    return request.user.has_perm(f"{model._meta.app_label}.delete_{model._meta.model_name}")


admin.site.unregister(get_access_token_model())


@admin.register(get_access_token_model())
class AccessTokenAdmin(_access_admin):
    """Who holds a token of which application, with what scope, until when."""

    list_display = ("pk", "masked_token", "user", "application", "scope", "expires", "created")
    list_filter = ("application", "expires")
    actions = ("revoke_tokens",)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # issued by the OAuth flows; revoking is the action below, audited

    def has_revoke_permission(self, request) -> bool:
        return _may_revoke(request, self.model)

    @admin.action(
        description="Revoke the selected access tokens (and their refresh tokens)",
        permissions=["revoke"],
    )
    def revoke_tokens(self, request, queryset) -> None:
        revoked = 0
        for token in queryset.select_related("application", "user"):
            oauth_token_revoke(token=token, actor=request.user)
            revoked += 1
        self.message_user(
            request,
            ngettext("Revoked %d access token.", "Revoked %d access tokens.", revoked) % revoked,
        )


admin.site.unregister(get_refresh_token_model())


@admin.register(get_refresh_token_model())
class RefreshTokenAdmin(_refresh_admin):
    list_display = ("pk", "masked_token", "user", "application", "created", "revoked")
    list_filter = ("application", "revoked")
    actions = ("revoke_tokens",)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_revoke_permission(self, request) -> bool:
        return _may_revoke(request, self.model)

    @admin.action(
        description="Revoke the selected refresh tokens (and their access tokens)",
        permissions=["revoke"],
    )
    def revoke_tokens(self, request, queryset) -> None:
        revoked = 0
        for token in queryset.filter(revoked__isnull=True).select_related("application", "user"):
            oauth_refresh_token_revoke(token=token, actor=request.user)
            revoked += 1
        self.message_user(
            request,
            ngettext("Revoked %d refresh token.", "Revoked %d refresh tokens.", revoked) % revoked,
        )

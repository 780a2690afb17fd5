"""Lockouts in the admin console: who is locked out, and the one way to lift a lock there
(delete), audited as `auth.unlocked` by the admin who did it (integrations.lockout)."""

from __future__ import annotations

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import admin

from integrations.lockout import BEARER, lockout_channel, lockout_lift


@admin.register(AccessAttempt)
class LockoutAdmin(admin.ModelAdmin):
    list_display = ["username", "channel", "ip_address", "failures_since_start", "attempt_time"]
    list_filter = ["attempt_time"]
    search_fields = ["username", "ip_address"]
    ordering = ["-attempt_time"]
    fields = ("username", "ip_address", "failures_since_start", "attempt_time", "path_info")
    readonly_fields = fields

    @admin.display(description="channel")
    def channel(self, attempt: AccessAttempt) -> str:
        channel = lockout_channel(attempt.username)
        if channel == BEARER:
            return f"{channel} (locked at {settings.WARDEN_LOCKOUT_TOKEN_FAILURES})"
        return f"{channel} (locked at {settings.AXES_FAILURE_LIMIT})"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj) -> None:
        lockout_lift(attempts=AccessAttempt.objects.filter(pk=obj.pk), actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        lockout_lift(attempts=queryset, actor=request.user)

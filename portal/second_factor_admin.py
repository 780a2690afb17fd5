"""The second factor in the admin console: an audited reset on the users' list (a lost phone),
and no other way to touch a device there (django-otp's own device pages are taken away: they
would show keys and delete devices without an audit event)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.second_factor import second_factor_reset

for _model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)

User = get_user_model()
if TYPE_CHECKING:  # a base class mypy can see; at run time, the one registered
    _user_admin = admin.ModelAdmin
else:
    _user_admin = type(admin.site.get_model_admin(User))  # Django's, or whoever customised it
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(_user_admin):
    actions = [*(getattr(_user_admin, "actions", None) or []), "reset_second_factor"]

    def has_reset_second_factor_permission(self, request) -> bool:
        return request.user.has_perm("auth.change_user")

    @admin.action(
        description="Reset second factor (they enrol again at next sign-in)",
        permissions=["reset_second_factor"],
    )
    def reset_second_factor(self, request, queryset) -> None:
        removed = 0
        for user in queryset.order_by("pk"):
            removed += second_factor_reset(user=user, actor=request.user)
        self.message_user(
            request,
            f"Second factor reset for {queryset.count()} user(s) ({removed} device(s) removed).",
            messages.SUCCESS,
        )

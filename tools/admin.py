"""Secrets in the admin: the value is write-only (typed in, never shown back), and every save
goes through `secret_set`, which encrypts it and records the audit event."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from tools.models import Secret
from tools.secrets import secret_delete, secret_set, value_problem

TIMESTAMPS = ("created_at", "value_set_at", "rotated_at", "updated_at")


class SecretForm(forms.ModelForm):
    value = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = Secret
        fields = ("name", "kind", "description")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        creating = self.instance._state.adding
        self.fields["value"].required = creating
        self.fields["value"].help_text = (
            "Stored encrypted and never shown again."
            if creating
            else "Leave blank to keep the current value (it is never shown)."
        )

    def clean(self):
        data = super().clean()
        value = data.get("value")
        if value:
            problem = value_problem(kind=data.get("kind") or self.instance.kind, value=value)
            if problem:
                self.add_error("value", problem)
        return data


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    form = SecretForm
    list_display = ("name", "kind", "description", "value_set_at", "rotated_at")
    list_filter = ("kind",)
    search_fields = ("name", "description")

    def get_fields(self, request, obj=None):
        fields = ("name", "kind", "description", "value")
        return fields if obj is None else (*fields, *TIMESTAMPS)

    def get_readonly_fields(self, request, obj=None):
        # Tools refer to a secret by name, so it is fixed once created.
        return () if obj is None else ("name", *TIMESTAMPS)

    @method_decorator(sensitive_post_parameters("value"))  # kept out of error reports
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        saved = secret_set(
            name=obj.name,
            value=form.cleaned_data.get("value") or None,
            kind=obj.kind,
            description=obj.description,
            actor=request.user,
        )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        secret_delete(secret=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for secret in queryset:
            secret_delete(secret=secret, actor=request.user)

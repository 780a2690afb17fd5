from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from auditlog.registry import auditlog
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from audit import checks  # noqa: F401 - registers the deploy check

        # Field-level history of configuration, beside the hash-chained events. Each app
        # registers its own configuration models as they appear; these are Django's.
        auditlog.register(Group, m2m_fields={"permissions"})
        auditlog.register(
            get_user_model(),
            include_fields=[
                "username",
                "email",
                "first_name",
                "last_name",
                "is_active",
                "is_staff",
                "is_superuser",
            ],
            m2m_fields={"groups", "user_permissions"},
        )

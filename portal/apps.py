from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Warden portal"


class WardenAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin, its site with Warden's dashboard (portal.dashboard)."""

    default = False  # AdminConfig's own flag, inherited: "portal" still means PortalConfig
    default_site = "portal.dashboard.WardenAdminSite"

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    """The browser UI: chat, inbox, run trace, dashboard, account pages, sign-in and the second
    factor. It has no models; "portal" is the integrations app's label (integrations.apps)."""

    name = "portal"
    label = "portal_ui"
    verbose_name = "Warden portal"


class WardenAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin, its site with Warden's dashboard (portal.dashboard)."""

    default = False  # AdminConfig's own flag, inherited: "portal" still means PortalConfig
    default_site = "portal.dashboard.WardenAdminSite"

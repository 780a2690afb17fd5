from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Running Warden: the embedded servers, the supervising launcher (`manage.py up`), the health
    probes, request ids, the channel layer and the demo seed."""

    name = "ops"
    verbose_name = "Warden operations"

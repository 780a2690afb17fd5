from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def sso_options() -> dict:
    """What the sign-in page offers: the provider's button, the password form, or both."""
    return {
        "enabled": bool(settings.WARDEN_OIDC_ISSUER),
        "name": settings.WARDEN_OIDC_PROVIDER_NAME,
        "local_passwords": settings.WARDEN_LOCAL_PASSWORDS,
    }

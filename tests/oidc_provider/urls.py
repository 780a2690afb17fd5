import json

from django.contrib.auth import views as auth_views
from django.contrib.auth.models import Group, User
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import AccessToken, RefreshToken


@csrf_exempt
def control(request, username):
    """The test changes a user here: its groups, whether it is active, or removes it.
    Disabling or removing revokes the user's tokens, as identity providers do."""
    change = json.loads(request.body)
    user = User.objects.get(username=username)
    if "groups" in change:
        user.groups.set([Group.objects.get_or_create(name=n)[0] for n in change["groups"]])
    if "active" in change:
        user.is_active = bool(change["active"])
        user.save(update_fields=["is_active"])
    if change.get("revoke") or change.get("delete"):
        for token in RefreshToken.objects.filter(user=user, revoked__isnull=True):
            token.revoke()
        AccessToken.objects.filter(user=user).delete()
    if change.get("delete"):
        user.delete()
    return JsonResponse({"ok": True})


urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view()),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("test/users/<str:username>/", control),
]

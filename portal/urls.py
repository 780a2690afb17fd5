from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from portal import views

admin.site.site_header = "Warden administration"
admin.site.site_title = "Warden"
admin.site.index_title = "Governance"

# /healthz and /readyz are answered by portal.health.ProbeMiddleware.
urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
    # One sign-in page (audited) for the portal and the admin.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    path("admin/", admin.site.urls),
]

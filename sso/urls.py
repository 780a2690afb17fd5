from django.urls import path

from sso import views

urlpatterns = [
    path("login/", views.SignInStart.as_view(), name="sso-start"),
    path("callback/", views.sign_in_callback, name="sso-callback"),
]

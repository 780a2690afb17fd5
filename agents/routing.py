"""Websocket routes of this app (config.asgi mounts them)."""

from django.urls import path

from agents.consumers import LiveConsumer

websocket_urlpatterns = [path("ws/", LiveConsumer.as_asgi())]

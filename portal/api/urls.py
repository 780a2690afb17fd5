from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal.api import runs, views

urlpatterns = [
    path("v1/agents", views.AgentList.as_view(), name="api-agents"),
    path("v1/agents/<slug:slug>/runs", runs.RunCreate.as_view(), name="api-run-create"),
    path("v1/runs/<int:pk>", views.RunDetail.as_view(), name="api-run"),
    path("v1/runs/<int:pk>/events", runs.RunEvents.as_view(), name="api-run-events"),
    path("v1/runs/<int:pk>/cancel", runs.RunCancel.as_view(), name="api-run-cancel"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("problems/<slug:slug>", views.problem_type, name="api-problem"),
]

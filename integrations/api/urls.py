from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from integrations.api import (
    approvals,
    audit,
    conversations,
    evaluations,
    feedback,
    knowledge,
    runs,
    tools,
    views,
)

urlpatterns = [
    path("v1/agents", views.AgentList.as_view(), name="api-agents"),
    path("v1/agents/<slug:slug>/runs", runs.RunCreate.as_view(), name="api-run-create"),
    path(
        "v1/agents/<slug:slug>/versions",
        views.AgentVersionList.as_view(),
        name="api-agent-versions",
    ),
    path("v1/runs/<int:pk>", views.RunDetail.as_view(), name="api-run"),
    path("v1/runs/<int:pk>/events", runs.RunEvents.as_view(), name="api-run-events"),
    path("v1/runs/<int:pk>/cancel", runs.RunCancel.as_view(), name="api-run-cancel"),
    path("v1/runs/<int:pk>/feedback", feedback.RunFeedback.as_view(), name="api-run-feedback"),
    path("v1/feedback", feedback.FeedbackList.as_view(), name="api-feedback"),
    path("v1/evaluations", evaluations.EvaluationCreate.as_view(), name="api-evaluations"),
    path("v1/evaluations/<int:pk>", evaluations.EvaluationDetail.as_view(), name="api-evaluation"),
    path(
        "v1/evaluations/<int:pk>/compare/<int:other>",
        evaluations.EvaluationCompare.as_view(),
        name="api-evaluation-compare",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("problems/<slug:slug>", views.problem_type, name="api-problem"),
    path("v1/conversations", conversations.ConversationList.as_view(), name="api-conversations"),
    path(
        "v1/conversations/<int:pk>",
        conversations.ConversationDetail.as_view(),
        name="api-conversation",
    ),
    path("v1/approvals", approvals.ApprovalList.as_view(), name="api-approvals"),
    path("v1/approvals/<int:pk>", approvals.ApprovalDetail.as_view(), name="api-approval"),
    path(
        "v1/approvals/<int:pk>/decide",
        approvals.ApprovalDecide.as_view(),
        name="api-approval-decide",
    ),
    path("v1/escalations", approvals.EscalationList.as_view(), name="api-escalations"),
    path(
        "v1/escalations/<int:pk>/decide",
        approvals.EscalationDecide.as_view(),
        name="api-escalation-decide",
    ),
    path("v1/tools", tools.ToolList.as_view(), name="api-tools"),
    path("v1/tools/<int:pk>", tools.ToolDetail.as_view(), name="api-tool"),
    path("v1/knowledge-bases", knowledge.KnowledgeBaseList.as_view(), name="api-knowledge-bases"),
    path(
        "v1/knowledge-bases/<slug:slug>/documents",
        knowledge.DocumentList.as_view(),
        name="api-documents",
    ),
    path("v1/documents/<int:pk>", knowledge.DocumentDetail.as_view(), name="api-document"),
    path("v1/audit/events", audit.AuditEventList.as_view(), name="api-audit-events"),
    path("v1/audit/export", audit.AuditExport.as_view(), name="api-audit-export"),
]

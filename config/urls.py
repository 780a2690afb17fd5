from django.contrib import admin
from django.urls import include, path
from oauth2_provider.views import OAuthServerMetadataView

from integrations.api import openai
from integrations.mcp import views as mcp
from integrations.mcp.views import MCPResourceMetadata
from portal import account, chat, feedback, inbox, trace, uploads, views

# /healthz and /readyz are answered by ops.health.ProbeMiddleware.
urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
    path("login/second-factor/", views.second_factor_verify, name="second-factor"),
    path("login/second-factor/enrol/", views.second_factor_enrol, name="second-factor-enrol"),
    # One sign-in page (audited) for the portal and the admin; a 403 for the signed-in
    # people the admin does not admit.
    path("admin/login/", views.admin_sign_in),
    # Single sign-on with the OpenID Connect provider (sso/), when one is configured.
    path("sso/", include("sso.urls")),
    path("chat/", chat.chat_home, name="chat"),
    path("chat/new/<slug:slug>/", chat.chat_new, name="chat-new"),
    path("chat/c/<int:pk>/", chat.conversation_page, name="conversation"),
    path("chat/send/", chat.chat_send, name="chat-send"),
    path("chat/search/", chat.chat_search, name="chat-search"),
    path("chat/runs/<int:pk>/", chat.run_part, name="run-part"),
    path("chat/runs/<int:pk>/stop/", chat.run_stop, name="run-stop"),
    path("chat/runs/<int:pk>/feedback/", feedback.feedback_send, name="run-feedback"),
    path("chat/runs/<int:pk>/regenerate/", feedback.regenerate, name="run-regenerate"),
    path("chat/workers/", chat.workers_status, name="chat-workers"),
    path("chat/files/", uploads.file_attach, name="chat-file-attach"),
    path("chat/files/<int:pk>/remove/", uploads.file_remove, name="chat-file-remove"),
    path("chat/c/<int:pk>/files/", uploads.conversation_files, name="conversation-files"),
    path("runs/<int:pk>/", trace.run_trace, name="run-trace"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/bulk/", inbox.inbox_bulk, name="inbox-bulk"),
    path("inbox/approvals/<int:pk>/", inbox.approval_page, name="inbox-approval"),
    path("inbox/answers/<int:pk>/", inbox.answer_page, name="inbox-answer"),
    path("account/tokens/", account.tokens_page, name="account-tokens"),
    path("account/tokens/<int:pk>/revoke/", account.token_revoke_view, name="account-token-revoke"),
    path("api/", include("integrations.api.urls")),
    # OpenAI-compatible, where OpenAI clients look for it (base URL <portal>/v1).
    path("v1/chat/completions", openai.ChatCompletions.as_view(), name="openai-chat"),
    path("v1/models", openai.ModelList.as_view(), name="openai-models"),
    path("v1/models/<str:model>", openai.ModelDetail.as_view(), name="openai-model"),
    # The MCP server is at /mcp (config.asgi); how its clients find the authorization server
    # (RFC 9728, RFC 8414: at the origin's root, where they look).
    path(".well-known/oauth-protected-resource/mcp", MCPResourceMetadata.as_view()),
    path(".well-known/oauth-authorization-server", OAuthServerMetadataView.as_view()),
    # A self-registered client's registration is not changed or deleted through the protocol
    # (RFC 7592: a new redirect URI after an admin allowed it); an admin does that.
    path("o/register/<str:client_id>/", mcp.registration_management),
    # DOT's token endpoint, with wrong client secrets counted (integrations.lockout).
    path("o/token/", views.TokenView.as_view()),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("admin/", admin.site.urls),
]

handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"

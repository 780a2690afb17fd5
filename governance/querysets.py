"""The queryset governed models use, so every list can say `.restrict(user, action)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from django.db import models

if TYPE_CHECKING:
    from governance.access import AnyUser


# Any: generic over the model, it would type the apps' managers precisely, which tools.mcp_servers
# is not ready for yet (it reads a `tool.pk is None` branch as unreachable).
class RestrictedQuerySet(models.QuerySet[Any]):
    def restrict(self, user: AnyUser, action: str) -> Self:
        """The rows `user` may `action` (governance.access.restrict)."""
        from governance.access import restrict

        return restrict(self, user, action)

"""The queryset governed models use, so every list can say `.restrict(user, action)`."""

from __future__ import annotations

from django.db import models


class RestrictedQuerySet(models.QuerySet):
    def restrict(self, user, action: str) -> RestrictedQuerySet:
        """The rows `user` may `action` (governance.access.restrict)."""
        from governance.access import restrict

        return restrict(self, user, action)

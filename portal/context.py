"""Template context for every portal page."""

from functools import cached_property


class _Inbox:
    """The reviewer's inbox link and its count, queried only if a page shows them."""

    def __init__(self, user) -> None:
        self.user = user

    @cached_property
    def show(self) -> bool:
        from governance.approvals import reviewer_listens_on

        return bool(reviewer_listens_on(self.user))

    @cached_property
    def count(self) -> int:
        from portal.inbox import pending_count

        return pending_count(self.user)


def nav(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"inbox": _Inbox(user)}

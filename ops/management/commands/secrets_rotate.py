from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import SYSTEM
from integrations.models import Webhook
from integrations.webhooks import webhook_secret_reencrypt
from tools.models import Secret
from tools.secrets import SecretError, secret_rotate


@dataclass(frozen=True)
class _Encrypted:
    """Values kept encrypted under WARDEN_ENCRYPTION_KEY (tools.secrets), of one kind. The
    command lives in ops, at the top, so that it names every kind itself: the tools' secrets
    and what the apps above tools keep (a webhook's signing secret)."""

    noun: str  # "webhook secret(s)"
    ids: Callable[[], Iterable[Any]]
    reencrypt: Callable[[Any], bool]  # under the newest key; False if it already was
    missing: type[Exception]  # raised by `reencrypt` for a row deleted meanwhile


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret under the newest WARDEN_ENCRYPTION_KEY (the first in the list), "
        "one transaction per secret: the tools' secrets and what other parts of Warden keep "
        "encrypted (webhook signing secrets). Afterwards the older keys can be dropped. Secrets "
        "no configured key can read are listed, the rest go on, and the command exits 1."
    )

    def handle(self, *args, **options):
        tools = _Encrypted(
            noun="secret(s)",
            ids=lambda: Secret.objects.order_by("name").values_list("pk", flat=True),
            reencrypt=lambda pk: secret_rotate(secret_id=pk, actor=SYSTEM),
            missing=Secret.DoesNotExist,
        )
        webhooks = _Encrypted(
            noun="webhook secret(s)",
            ids=lambda: Webhook.objects.order_by("pk").values_list("pk", flat=True),
            reencrypt=lambda pk: webhook_secret_reencrypt(webhook_id=pk, actor=SYSTEM),
            missing=Webhook.DoesNotExist,
        )
        problems = []
        for kind in [tools, webhooks]:
            rotated = current = 0
            for pk in kind.ids():
                try:
                    if kind.reencrypt(pk):
                        rotated += 1
                    else:
                        current += 1
                except kind.missing:  # deleted meanwhile
                    continue
                except SecretError as exc:
                    problems.append(str(exc))
            if kind is tools or rotated or current:
                self.stdout.write(
                    f"Rotated {rotated} {kind.noun} to the newest key; {current} already used it."
                )
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"{len(problems)} secret(s) could not be rotated")

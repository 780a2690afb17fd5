from django.core.management.base import BaseCommand, CommandError

from audit.services import SYSTEM
from portal.models import Webhook
from portal.webhooks import webhook_secret_reencrypt
from tools.secrets import SecretError


class Command(BaseCommand):
    help = (
        "Re-encrypt every webhook's signing secret under the newest WARDEN_ENCRYPTION_KEY (the "
        "companion of secrets_rotate, which covers the tools' secrets). The secrets themselves "
        "do not change; receivers notice nothing. Exits 1 if some could not be read."
    )

    def handle(self, *args, **options):
        rotated = current = 0
        problems = []
        for webhook_id in Webhook.objects.order_by("pk").values_list("pk", flat=True):
            try:
                if webhook_secret_reencrypt(webhook_id=webhook_id, actor=SYSTEM):
                    rotated += 1
                else:
                    current += 1
            except Webhook.DoesNotExist:  # deleted meanwhile
                continue
            except SecretError as exc:
                problems.append(str(exc))
        for problem in problems:
            self.stderr.write(problem)
        self.stdout.write(
            f"Re-encrypted {rotated} webhook secret(s) under the newest key; "
            f"{current} already used it."
        )
        if problems:
            raise CommandError(f"{len(problems)} webhook secret(s) could not be re-encrypted")

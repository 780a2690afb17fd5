from django.core.management.base import BaseCommand, CommandError

from audit.services import SYSTEM
from tools.models import Secret
from tools.secrets import SecretError, secret_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret under the newest WARDEN_ENCRYPTION_KEY (the first in the list), "
        "one transaction per secret. Afterwards the older keys can be dropped. Secrets no "
        "configured key can read are listed, the rest go on, and the command exits 1."
    )

    def handle(self, *args, **options):
        rotated = current = 0
        problems = []
        for secret_id in Secret.objects.order_by("name").values_list("pk", flat=True):
            try:
                if secret_rotate(secret_id=secret_id, actor=SYSTEM):
                    rotated += 1
                else:
                    current += 1
            except Secret.DoesNotExist:  # deleted meanwhile
                continue
            except SecretError as exc:
                problems.append(str(exc))
        for problem in problems:
            self.stderr.write(problem)
        self.stdout.write(
            f"Rotated {rotated} secret(s) to the newest key; {current} already used it."
        )
        if problems:
            raise CommandError(f"{len(problems)} secret(s) could not be rotated")

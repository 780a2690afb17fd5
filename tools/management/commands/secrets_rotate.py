from django.core.management.base import BaseCommand, CommandError

from audit.services import SYSTEM
from tools.models import Secret
from tools.secrets import ENCRYPTED_ELSEWHERE, EncryptedElsewhere, SecretError, secret_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every secret under the newest WARDEN_ENCRYPTION_KEY (the first in the list), "
        "one transaction per secret: the tools' secrets and what other parts of Warden keep "
        "encrypted (webhook signing secrets). Afterwards the older keys can be dropped. Secrets "
        "no configured key can read are listed, the rest go on, and the command exits 1."
    )

    def handle(self, *args, **options):
        tools = EncryptedElsewhere(
            noun="secret(s)",
            ids=lambda: Secret.objects.order_by("name").values_list("pk", flat=True),
            reencrypt=lambda pk: secret_rotate(secret_id=pk, actor=SYSTEM),
            missing=Secret.DoesNotExist,
        )
        problems = []
        for kind in [tools, *ENCRYPTED_ELSEWHERE]:
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

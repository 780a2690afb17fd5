from django.core.management.base import BaseCommand

from ops.demo import demo_logins_path, demo_workspace_seed


class Command(BaseCommand):
    help = (
        "Create the role groups and the demo users (admin, reviewer, member, integration). "
        "Idempotent: existing users keep their passwords. New passwords are printed and kept in "
        "var/demo-logins.json."
    )

    def handle(self, *args, **options):
        logins = demo_workspace_seed(credentials_path=demo_logins_path())
        for login in logins:
            password = login.password or "(unchanged or API-only: not shown)"
            self.stdout.write(f"{login.username:<12} {password:<24} {login.role}")

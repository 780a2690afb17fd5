"""`python -m tests.oidc_provider.serve PORT DIR`: migrate, create the users and Warden's
client from DIR/setup.json, then serve on 127.0.0.1:PORT (threaded) until SIGTERM."""

import json
import sys
from pathlib import Path

import django


def main() -> None:
    port, directory = int(sys.argv[1]), Path(sys.argv[2])
    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.core.servers.basehttp import WSGIServer, run
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    setup = json.loads((directory / "setup.json").read_text())
    call_command("migrate", verbosity=0, interactive=False)
    for spec in setup["users"]:
        user = User.objects.create_user(
            spec["username"],
            password=spec["password"],
            email=spec.get("email", ""),
            first_name=spec.get("given_name", ""),
            last_name=spec.get("family_name", ""),
        )
        user.groups.set([Group.objects.get_or_create(name=n)[0] for n in spec.get("groups", [])])
    Application.objects.create(
        name="Warden",
        client_id=setup["client_id"],
        client_secret=setup["client_secret"],
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=" ".join(setup["redirect_uris"]),
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,
    )
    run("127.0.0.1", port, get_wsgi_application(), threading=True, server_cls=WSGIServer)


if __name__ == "__main__":
    main()

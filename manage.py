#!/usr/bin/env python
"""Django's command-line utility for Warden."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - load settings now, to report a bad environment plainly
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        print(f"warden: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        sys.exit(130)

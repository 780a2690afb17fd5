"""The one publisher to the channel layer (governance.live), from a process of its own."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def test_what_a_process_sends_just_before_it_exits_is_still_sent():
    key = f"warden:test:live:{uuid.uuid4().hex}"
    code = (
        "import django; django.setup()\n"
        "from governance.live import Log, send\n"
        f"send('nobody', {{'type': 'group.event'}}, log=Log({key!r}, {{'e': 1}}, 10, 60))\n"
    )

    subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=ROOT,
        check=True,
        timeout=120,
    )

    entries = redis.Redis.from_url(settings.REDIS_URL).xrange(key)
    assert [json.loads(fields[b"e"]) for _, fields in entries] == [1]

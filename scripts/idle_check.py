"""Check, against a running Warden, that live channels left idle stay open (issue 17).

Signs in as the demo member (the var directory's demo-logins.json), makes an API token on the
account page, starts a run of the demo help desk that parks on an approval, then opens the
page's websocket (subscribed to the run) and the run's event stream (Server-Sent Events, with
the token). Both stay idle for --idle seconds (ten minutes unless told); then the run is
cancelled, which sends its `final` event, and both must receive it within --within seconds.
Prints what each saw; exits 0 if both did, 1 if not.

    make run   # or: manage.py up
    python scripts/idle_check.py [--url http://127.0.0.1:8000] [--idle 600] [--var-dir var]

An event stream is closed by the server after WARDEN_SSE_MAX_SECONDS (300 by default) with a
`reconnect` event; this client then reconnects with Last-Event-ID, as any client should, and
counts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
SECRET = re.compile(r'id="secret" readonly value="([^"]+)"')


class Seen:
    """What one channel received, and when."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.keepalives = 0
        self.reconnects = 0
        self.events: list[dict] = []
        self.final_at: float | None = None
        self.ended: str | None = None  # how the channel ended, if it did before the final

    def event(self, event: dict) -> None:
        self.events.append(event)
        if event.get("type") == "final" and self.final_at is None:
            self.final_at = time.monotonic()


async def sign_in(http: aiohttp.ClientSession, base: str, username: str, password: str) -> None:
    async with http.get(f"{base}/login/") as page:
        token = CSRF.search(await page.text()).group(1)
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token}
    async with http.post(f"{base}/login/", data=form, headers={"Origin": base}) as answer:
        if "/login/" in str(answer.url):
            sys.exit(f"could not sign in as {username} (HTTP {answer.status})")


async def make_token(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/account/tokens/") as page:
        token = CSRF.search(await page.text()).group(1)
    form = aiohttp.FormData()
    for name, value in [
        ("csrfmiddlewaretoken", token),
        ("name", f"idle check {int(time.time())}"),
        ("scopes", "agents:run"),
        ("scopes", "runs:read"),
        ("days", "1"),
    ]:
        form.add_field(name, value)
    async with http.post(f"{base}/account/tokens/", data=form, headers={"Origin": base}) as page:
        found = SECRET.search(await page.text())
    if found is None:
        sys.exit("could not make an API token on /account/tokens/")
    return found.group(1)


async def follow_socket(http, base: str, run_id: int, seen: Seen, subscribed) -> None:
    url = base.replace("http", "ws", 1) + "/ws/"
    async with http.ws_connect(url, headers={"Origin": base}, heartbeat=None) as socket:
        await socket.send_json({"type": "subscribe", "run": run_id})
        async for message in socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame["type"] == "replay":
                subscribed.set()
            elif frame["type"] == "keepalive":
                seen.keepalives += 1
            elif frame["type"] == "event":
                seen.event(frame["event"])
                if seen.final_at is not None:
                    return
            else:
                seen.events.append(frame)
        seen.ended = (
            f"closed with {socket.close_code} after {time.monotonic() - seen.started:.0f} s"
        )


async def follow_stream(http, base: str, run_id: int, secret: str, seen: Seen, ready) -> None:
    last = None
    while True:
        headers = {"Authorization": f"Bearer {secret}", "Accept": "text/event-stream"}
        if last:
            headers["Last-Event-ID"] = last
        async with http.get(f"{base}/api/v1/runs/{run_id}/events", headers=headers) as answer:
            if answer.status != 200:
                seen.ended = f"HTTP {answer.status}: {await answer.text()}"
                return
            ready.set()
            kind, block = None, {}
            async for raw in answer.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    seen.keepalives += 1
                elif line.startswith(("id: ", "event: ", "data: ")):
                    key, value = line.split(": ", 1)
                    block[key] = value
                elif not line and "data" in block:
                    event = json.loads(block["data"])
                    last = block.get("id", last)
                    kind = event.get("type")
                    if kind == "reconnect":
                        seen.reconnects += 1
                    else:
                        seen.event(event)
                    if kind in ("final", "error"):
                        return
                    block = {}
            if kind != "reconnect":
                seen.ended = (
                    f"ended without a final event after {time.monotonic() - seen.started:.0f} s"
                )
                return


def report(seen: Seen, triggered: float) -> bool:
    got = seen.final_at is not None
    after = f"{seen.final_at - triggered:.2f} s after the trigger" if got else "never"
    print(f"{seen.name}: final event {after}; {seen.keepalives} keep-alives", end="")
    print(f", {seen.reconnects} reconnects" if seen.reconnects else "", end="")
    print(f"; ended: {seen.ended}" if seen.ended else "")
    return got


async def check(args) -> bool:
    base = args.url.rstrip("/")
    logins = json.loads((Path(args.var_dir) / "demo-logins.json").read_text())
    password = next(e["password"] for e in logins if e["username"] == args.user)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    jar = aiohttp.CookieJar(unsafe=True)  # an IP address's cookies too
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=timeout) as http:
        await sign_in(http, base, args.user, password)
        secret = await make_token(http, base)
        auth = {"Authorization": f"Bearer {secret}"}
        async with http.post(
            f"{base}/api/v1/agents/{args.agent}/runs?wait=30",
            json={"input": args.input},
            headers=auth,
        ) as answer:
            run = await answer.json()
        deadline = time.monotonic() + 180  # a cold worker loads its models first
        while run.get("state") in ("queued", "running") and time.monotonic() < deadline:
            await asyncio.sleep(2)
            async with http.get(f"{base}/api/v1/runs/{run['id']}", headers=auth) as answer:
                run = await answer.json()
        if run.get("state") != "awaiting_approval":
            sys.exit(f"the run did not park on an approval: {run}")
        print(f"run {run['id']} waits for a reviewer; opening a websocket and an event stream")
        socket, stream = Seen("websocket"), Seen("event stream")
        subscribed, ready = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.ensure_future(follow_socket(http, base, run["id"], socket, subscribed)),
            asyncio.ensure_future(follow_stream(http, base, run["id"], secret, stream, ready)),
        ]
        await asyncio.wait_for(asyncio.gather(subscribed.wait(), ready.wait()), 30)
        settled = len(socket.events), len(stream.events)
        print(f"idle for {args.idle} s ...")
        began = time.monotonic()
        while (left := args.idle - (time.monotonic() - began)) > 0:
            await asyncio.sleep(min(60, left))
            print(
                f"  {time.monotonic() - began:.0f} s: websocket {socket.ended or 'open'} "
                f"({socket.keepalives} keep-alives), event stream {stream.ended or 'open'} "
                f"({stream.keepalives} keep-alives, {stream.reconnects} reconnects)"
            )
        quiet = (len(socket.events), len(stream.events)) == settled
        triggered = time.monotonic()
        async with http.post(f"{base}/api/v1/runs/{run['id']}/cancel", headers=auth) as answer:
            print(f"cancelled the run: HTTP {answer.status}, {(await answer.json())['state']}")
        await asyncio.wait(tasks, timeout=args.within)
        for task in tasks:
            task.cancel()
        both = report(socket, triggered) & report(stream, triggered)
        if not quiet:
            print("note: events arrived while idle (someone else acted on the run?)")
        print("OK: both idle channels received the next event" if both else "FAILED")
        return both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--idle", type=float, default=600, help="seconds to stay idle (600)")
    parser.add_argument("--within", type=float, default=30, help="seconds to wait for the event")
    default_var = os.environ.get("WARDEN_VAR_DIR") or str(ROOT / "var")
    parser.add_argument("--var-dir", default=default_var, help="where demo-logins.json is")
    parser.add_argument("--user", default="member")
    parser.add_argument("--agent", default="help-desk")
    parser.add_argument("--input", default="my VPN is down, please open a ticket")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(check(args)) else 1)


if __name__ == "__main__":
    main()

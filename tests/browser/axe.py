"""axe-core, Deque's accessibility engine (from the npm registry, at the version
tests/axe/package-lock.json pins), run inside a Playwright page.

`violations(page)` injects axe into the page as it stands and returns what it finds against
WCAG 2.2 A and AA (and axe's best practices), of the impacts asked for; `described` turns them
into lines a failing assertion can print: the rule, its impact, and the elements it names.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "axe"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


def _script() -> Path:
    """axe.min.js, installed once (`npm ci`, under a lock: xdist workers share the checkout)."""
    script = PACKAGE / "node_modules" / "axe-core" / "axe.min.js"
    with open(PACKAGE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not script.is_file():
            npm = shutil.which("npm")
            assert npm is not None, "npm is needed for axe-core (Debian's npm package)"
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE, check=True, timeout=600
            )
    return script


def violations(page, *, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict]:
    """axe's violations on the page as it stands now, of the given impacts."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol: the page's CSP (script-src 'self') refuses
        # an injected <script>, and loosening it for the test would check another page.
        page.evaluate(_script().read_text())
    found = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}}).then(r => r.violations)",
        TAGS,
    )
    return [v for v in found if v.get("impact") in impacts]


def described(found: list[dict]) -> list[str]:
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in found
    ]

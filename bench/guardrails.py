"""Guardrails: precision and recall on the labelled sets, and what scanning costs.

Prints the injection detector's and the PII redactor's precision and recall on the sets in
tests/governance/guardrail_sets.py (the misses and false alarms by name), then the time to
scan a 4 KB passage against a floor: one compiled regular expression searched over the same
text (what the cheapest possible check would cost).

    .venv/bin/python bench/guardrails.py
"""

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from governance.guardrails.injection import scan  # noqa: E402
from governance.guardrails.pii import redact  # noqa: E402
from tests.governance.guardrail_sets import BENIGN, INJECTIONS, PII  # noqa: E402
from tests.governance.measure import injection_figures, pii_figures  # noqa: E402


def per_call(function, text: str, seconds: float = 1.0) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function(text)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    injection, pii = injection_figures(), pii_figures()
    print(f"injection: {len(INJECTIONS)} attacks, {len(BENIGN)} benign look-alikes")
    print(f"  precision {injection['precision']:.3f}  recall {injection['recall']:.3f}")
    for text in injection["missed"]:
        print(f"  missed: {text[:90]}")
    for text in injection["false_alarms"]:
        print(f"  false alarm: {text[:90]}")
    values = sum(len(expected) for _, expected in PII)
    print(f"pii: {len(PII)} texts, {values} personal values")
    print(f"  precision {pii['precision']:.3f}  recall {pii['recall']:.3f}")
    for text, found in pii["wrong"]:
        print(f"  wrong: {text[:70]} -> {found}")

    passage = " ".join(text for text, _ in BENIGN)[:4096]
    floor = re.compile(r"ignore (?:all )?previous instructions", re.I)
    scan_s = per_call(scan, passage)
    redact_s = per_call(redact, passage)
    floor_s = per_call(floor.search, passage)
    print(
        f"4 KB passage: injection scan {scan_s * 1e6:.0f} us, PII redaction {redact_s * 1e6:.0f} us"
    )
    print(f"  floor (one regex) {floor_s * 1e6:.1f} us; scan / floor {scan_s / floor_s:.0f}")


if __name__ == "__main__":
    main()

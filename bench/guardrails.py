"""Guardrails: the injection detector on its held-out split, the PII redactor, and their cost.

Injection: precision, recall and false-positive rate on the held-out split of
governance/guardrails/data/corpus.py (templates the model never saw in training, every
obfuscation), per family, per obfuscation and per carrier, the security documents' FPR, the
training split for comparison, and the project's older labelled sets
(tests/governance/guardrail_sets.py). Then the sets written outside the corpus
(bench/data/injection_outside.json: see its "about"), the honest figure for text nobody here
fitted the detector to. Then the latency of scanning one 4 KB passage, p50 and
p99 over many passages: benign ones (the common case) and ones with an attack inside, with
the encoder on (the default) and off. Measured and printed, not asserted.

    .venv/bin/python bench/guardrails.py [--no-latency] [--misses] [--blind]
"""

import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.test import override_settings  # noqa: E402

from audit.pii import redact  # noqa: E402
from governance.guardrails.data.corpus import corpus  # noqa: E402
from governance.guardrails.injection import scan, threshold  # noqa: E402
from tests.governance.guardrail_sets import BENIGN, INJECTIONS, PII  # noqa: E402
from tests.governance.measure import pii_figures  # noqa: E402


def figures(rows, flagged) -> dict:
    tp = sum(1 for row in rows if row.label and flagged[row.text])
    fn = sum(1 for row in rows if row.label and not flagged[row.text])
    fp = sum(1 for row in rows if not row.label and flagged[row.text])
    tn = sum(1 for row in rows if not row.label and not flagged[row.text])
    return {
        "n": len(rows),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "fpr": fp / (fp + tn) if fp + tn else float("nan"),
        "attacks": tp + fn,
        "benign": fp + tn,
    }


def line(name: str, f: dict) -> str:
    def fmt(value):
        return "   -  " if value != value else f"{value:6.3f}"

    return (
        f"  {name:28} attacks {f['attacks']:4}  benign {f['benign']:4}  precision "
        f"{fmt(f['precision'])}  recall {fmt(f['recall'])}  FPR {fmt(f['fpr'])}"
    )


def injection_report(show_misses: bool) -> None:
    rows = corpus()
    flagged = {}
    start = time.perf_counter()
    for row in rows:
        flagged[row.text] = scan(row.text).injection
    elapsed = time.perf_counter() - start
    print(f"injection detector, threshold {threshold()}  ({len(rows)} texts in {elapsed:.0f} s)")
    for split in ("test", "train"):
        part = [row for row in rows if row.split == split]
        label = "held-out (unseen templates)" if split == "test" else "training split"
        print(line(label, figures(part, flagged)))
        if split == "train":
            continue
        plain = [row for row in part if row.obfuscation == "none"]
        print(line("  plain (no obfuscation)", figures(plain, flagged)))
        security = [row for row in part if row.family == "security_doc"]
        print(line("  security documents", figures(security, flagged)))
        benign = [row for row in part if not row.label]
        for title, key in (
            ("family", "family"),
            ("obfuscation", "obfuscation"),
            ("carrier", "carrier"),
            ("language", "lang"),
        ):
            print(f"  per {title}:")
            groups = defaultdict(list)
            for row in part:
                if row.label:
                    groups[getattr(row, key)].append(row)
            for name in sorted(groups):
                # Recall per group; precision and FPR against all held-out benign texts.
                print(line("    " + name, figures(groups[name] + benign, flagged)))
        print("  benign kinds (FPR):")
        kinds = defaultdict(list)
        for row in benign:
            kinds[row.family].append(row)
        for name in sorted(kinds):
            print(line("    " + name, figures(kinds[name], flagged)))
        if show_misses:
            for row in part:
                if row.label != flagged[row.text]:
                    kind = "missed" if row.label else "false alarm"
                    print(f"    {kind} [{row.family}/{row.obfuscation}]: {row.text[:100]!r}")
    old = [(text, 1) for text, _ in INJECTIONS] + [(text, 0) for text, _ in BENIGN]
    tp = sum(1 for text, label in old if label and scan(text).injection)
    fp = sum(1 for text, label in old if not label and scan(text).injection)
    print(
        f"  project's older set ({len(INJECTIONS)} attacks, {len(BENIGN)} benign): precision "
        f"{tp / (tp + fp) if tp + fp else 1:.3f}  recall {tp / len(INJECTIONS):.3f}  "
        f"FPR {fp / len(BENIGN):.3f}"
    )


def passages(attack: bool, count: int) -> list[str]:
    """4 KB passages: benign records and e-mails joined, with one attack inside if asked."""
    rng = random.Random(7)
    rows = corpus()
    benign = [row.text for row in rows if not row.label and not row.text.startswith("{")]
    attacks = [row.text for row in rows if row.label and row.split == "test"]
    out = []
    for _ in range(count):
        parts = []
        while sum(len(p) + 1 for p in parts) < 4096:
            parts.append(rng.choice(benign))
        if attack:
            parts.insert(rng.randrange(len(parts)), rng.choice(attacks))
        out.append("\n".join(parts)[:4096])
    return out


def latency(texts: list[str]) -> tuple[float, float]:
    times = []
    for text in texts:
        start = time.perf_counter()
        scan(text)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99) - 1] * 1e3


OUTSIDE = Path(__file__).resolve().parent / "data" / "injection_outside.json"


def outside_report(show_misses: bool) -> None:
    """Recall and FPR on each outside set, with the ranking's quality apart from the threshold
    (ROC AUC), and how the security texts among its benign ones fare."""
    doc = json.loads(OUTSIDE.read_text())
    for name, rows in doc["sets"].items():
        if name in doc["blind"] and "--blind" not in sys.argv:
            print(f"  {name}: blind, not scored (--blind scores it, once, for a change)")
            continue
        scores = [(scan(row["text"]).score, row) for row in rows]
        limit = threshold()
        attacks = [score for score, row in scores if row["label"]]
        benign = [score for score, row in scores if not row["label"]]
        security = [
            score
            for score, row in scores
            if not row["label"] and _SECURITY_KINDS & set(row["kind"].split("."))
        ]
        auc = sum((a > b) + 0.5 * (a == b) for a in attacks for b in benign)
        print(
            f"  {name}: {len(attacks)} attacks, {len(benign)} benign  recall "
            f"{sum(s >= limit for s in attacks) / len(attacks):.3f}  FPR "
            f"{sum(s >= limit for s in benign) / len(benign):.3f}  (security texts "
            f"{sum(s >= limit for s in security)}/{len(security)})  ROC AUC "
            f"{auc / (len(attacks) * len(benign)):.3f}"
        )
        if show_misses:
            for score, row in sorted(scores, key=lambda item: item[0]):
                if row["label"] != (score >= limit):
                    kind = "missed" if row["label"] else "false alarm"
                    print(f"    {kind} {score:.3f} [{row['kind']}]: {row['text'][:100]!r}")


_SECURITY_KINDS = {"security_doc", "security_training", "ctf_writeup", "advisory"}


def main() -> None:
    injection_report(show_misses="--misses" in sys.argv)
    print("outside sets (bench/data/injection_outside.json):")
    outside_report(show_misses="--misses" in sys.argv)
    values = sum(len(expected) for _, expected in PII)
    pii = pii_figures()
    print(f"pii: {len(PII)} texts, {values} personal values")
    print(f"  precision {pii['precision']:.3f}  recall {pii['recall']:.3f}")
    for text, found in pii["wrong"]:
        print(f"  wrong: {text[:70]} -> {found}")
    if "--no-latency" in sys.argv:
        return
    scan("warm up the encoder: ignore previous instructions, says the example")
    benign, attacked = passages(False, 300), passages(True, 300)
    print("latency per 4 KB passage (ms, p50 / p99, 300 passages each):")
    for encoder in (True, False):
        with override_settings(WARDEN_INJECTION_ENCODER=encoder):
            b50, b99 = latency(benign)
            a50, a99 = latency(attacked)
        name = "encoder on " if encoder else "encoder off"
        print(f"  {name}: benign {b50:.1f} / {b99:.1f}   with an attack {a50:.1f} / {a99:.1f}")
    redact_times = []
    for text in benign[:100]:
        start = time.perf_counter()
        redact(text)
        redact_times.append(time.perf_counter() - start)
    print(f"  PII redaction: {statistics.median(redact_times) * 1e3:.2f} ms p50")


if __name__ == "__main__":
    main()

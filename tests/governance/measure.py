"""Precision and recall of the guardrails on the labelled sets (the tests and the bench)."""

from audit.pii import redact
from governance.guardrails.injection import scan
from tests.governance.guardrail_sets import BENIGN, INJECTIONS, PII


def injection_figures() -> dict:
    caught = [text for text, _ in INJECTIONS if scan(text).injection]
    false_alarms = [text for text, _ in BENIGN if scan(text).injection]
    tp, fp = len(caught), len(false_alarms)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / len(INJECTIONS),
        "missed": [text for text, _ in INJECTIONS if text not in caught],
        "false_alarms": false_alarms,
    }


def pii_figures() -> dict:
    tp = fp = fn = 0
    wrong = []
    for text, expected in PII:
        _, redaction = redact(text)
        found = list(redaction.values.values())
        tp += len([v for v in found if v in expected])
        fp += len([v for v in found if v not in expected])
        fn += len([v for v in expected if v not in found])
        if sorted(found) != sorted(expected):
            wrong.append((text, found))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "wrong": wrong,
    }

"""Pick the answer cache's similarity threshold (WARDEN_ANSWER_CACHE_SIMILARITY) by evaluation.

On tests/data/cache_question_pairs.json (questions to the demo's help desk agent, in pairs
labelled same: a paraphrase one answer serves, or different: alike but needing another answer),
the cosine similarity of each pair with the embedding the cache uses (all-MiniLM-L6-v2 of the
normalised question, agents.answer_cache.embed_question). The threshold: the most hits on the
`tune` split with no false match on it (halfway between its most similar `different` pair and
the least similar `same` pair above that, rounded up to 3 decimals). Then `held_out`, written
beside it and never used to choose, measured at that threshold. Writes the figures as JSON to
`--out` (default: stdout only).

    .venv/bin/python scripts/answer_cache_threshold.py [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAIRS = ROOT / "tests" / "data" / "cache_question_pairs.json"


def similarities(pairs: list) -> list[tuple[float, bool, str, str]]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from agents.answer_cache import normalised
    from agents.embedding import embed

    vectors = embed([normalised(text) for a, b, _ in pairs for text in (a, b)])
    from agents.answer_cache import same_negations

    # As the cache decides: a pair whose negating words differ is never a match (score 0).
    return [
        (
            float(vectors[2 * i] @ vectors[2 * i + 1]) if same_negations(a, b) else 0.0,
            bool(same),
            a,
            b,
        )
        for i, (a, b, same) in enumerate(pairs)
    ]


def choose(scored: list[tuple[float, bool, str, str]]) -> float:
    """The lowest threshold with no `different` pair at or above it (the most hits)."""
    worst = max((s for s, same, *_ in scored if not same), default=-1.0)
    above = [s for s, same, *_ in scored if same and s > worst]
    if not above:
        return 1.0
    return math.ceil((worst + min(above)) / 2 * 1000) / 1000


def measured(scored: list[tuple[float, bool, str, str]], threshold: float) -> dict:
    same = [s for s, label, *_ in scored if label]
    different = [s for s, label, *_ in scored if not label]
    hits = sum(1 for s in same if s >= threshold)
    false = [(round(s, 3), a, b) for s, label, a, b in scored if not label and s >= threshold]
    return {
        "pairs": len(scored),
        "same": len(same),
        "different": len(different),
        "hits": hits,
        "hit_rate": round(hits / len(same), 3) if same else 0.0,
        "false_matches": len(false),
        "false_match_rate": round(len(false) / len(different), 3) if different else 0.0,
        "false_matched": false,
        "most_similar_different": round(max(different, default=0.0), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
    data = json.loads(PAIRS.read_text())
    tune, held_out = similarities(data["tune"]), similarities(data["held_out"])
    threshold = choose(tune)
    result = {
        "threshold": threshold,
        "tune": measured(tune, threshold),
        "held_out": measured(held_out, threshold),
        # What a lower threshold would buy and cost on the held-out split (for the record).
        "held_out_at": {
            str(t): {k: v for k, v in measured(held_out, t).items() if k != "false_matched"}
            for t in (0.80, 0.85, 0.90, 0.95)
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

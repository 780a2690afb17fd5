"""Pick the answer cache's similarity threshold (WARDEN_ANSWER_CACHE_SIMILARITY) by evaluation.

On labelled pairs of questions (same: a paraphrase one answer serves; different: alike but
needing another answer), the cosine similarity of each pair with the embedding the cache uses
(all-MiniLM-L6-v2 of the normalised question, agents.answer_cache.embed_question), 0 where the
cache would never join them (agents.answer_cache.may_match: other negations or numbers).

- Tuning: tests/data/question_pairs_tune.json (1,233 pairs in 15 enterprise domains, written for
  Warden by a session that had not seen the cache) and the `tune` split of
  tests/data/cache_question_pairs.json (the demo help desk's questions). The threshold: the
  most hits with no false match on them (halfway between the most similar `different` pair and
  the least similar `same` pair above it, rounded up to 4 decimals; 1.0 if no `same` pair is
  above every `different` one: then nothing but the same words matches).
- Held out, never used to choose: tests/data/question_pairs_held_out.json (468 pairs in 9 other
  domains, written apart by another session) and the demo file's `held_out` split, each
  measured at the threshold and at lower ones (what a lower threshold would buy and cost).

Writes the figures as JSON to `--out` (default: stdout only).

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
DATA = ROOT / "tests" / "data"
DEMO = DATA / "cache_question_pairs.json"


def similarities(pairs: list) -> list[tuple[float, bool, str, str]]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from agents.answer_cache import normalised
    from agents.embedding import embed

    vectors = embed([normalised(text) for a, b, _ in pairs for text in (a, b)])
    from agents.answer_cache import may_match

    # As the cache decides: a pair whose negating words or numbers differ is never a match.
    return [
        (
            float(vectors[2 * i] @ vectors[2 * i + 1]) if may_match(a, b) else 0.0,
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
    return math.ceil((worst + min(above)) / 2 * 10000) / 10000


def measured(scored: list[tuple[float, bool, str, str]], threshold: float) -> dict:
    same = [s for s, label, *_ in scored if label]
    different = [s for s, label, *_ in scored if not label]
    hits = sum(1 for s in same if s >= threshold)
    false = [(round(s, 4), a, b) for s, label, a, b in scored if not label and s >= threshold]
    return {
        "pairs": len(scored),
        "same": len(same),
        "different": len(different),
        "hits": hits,
        "hit_rate": round(hits / len(same), 3) if same else 0.0,
        "false_matches": len(false),
        "false_match_rate": round(len(false) / len(different), 3) if different else 0.0,
        "false_matched": false,
        "most_similar_different": round(max(different, default=0.0), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args()
    demo = json.loads(DEMO.read_text())

    def written(name: str) -> list:
        return [(a, b, same) for a, b, same, _ in json.loads((DATA / name).read_text())["pairs"]]

    tune = similarities(written("question_pairs_tune.json") + demo["tune"])
    held_out = {
        "other domains": similarities(written("question_pairs_held_out.json")),
        "demo help desk": similarities(demo["held_out"]),
    }
    threshold = choose(tune)
    result: dict = {"threshold": threshold, "tune": measured(tune, threshold), "held_out": {}}
    for name, scored in held_out.items():
        result["held_out"][name] = {
            "at the threshold": measured(scored, threshold),
            # What a lower threshold would buy and cost (for the record).
            **{
                f"at {t}": {k: v for k, v in measured(scored, t).items() if k != "false_matched"}
                for t in (0.85, 0.90, 0.923, 0.95, 0.97)
            },
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

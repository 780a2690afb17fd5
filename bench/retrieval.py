"""Knowledge-base retrieval: recall@10 and latency of `nearest_chunks`, against exact and raw SQL.

    make bench-retrieval
    .venv/bin/python bench/retrieval.py [--sizes 100000,1000000] [--queries 200] [--seconds 5]

Starts its own embedded PostgreSQL in a temporary directory and loads synthetic chunks: 384-d
unit vectors, each a random one of 1,000 cluster centres (uniform on the sphere) plus gaussian
noise (--noise is the noise's norm against the centre's), spread over 100 knowledge bases (chunk
i in base i % 100), so a filter of 10 bases keeps 10 % of the rows and 1 base 1 %. Queries are
fresh points drawn the same way, not rows of the table. The HNSW index is dropped for the COPY and
built afterwards with the migration's definition (its build is timed).

The default is text-like: text embeddings have far fewer effective dimensions than 384 and
their topics are not orthogonal, so the centres lie on a random 32-dimensional great sphere
(--centre-dims 32: some topics neighbour others) and 90 % of each cluster's noise lies along 16
random directions of its own (--subspace 16). `--centre-dims 0 --subspace 0` is the hard case:
1,000 nearly orthogonal clusters, each a ball of isotropic 384-d noise whose points are nearly
equidistant from a query. Both are synthetic: read the recall as a bound, not as what a real
corpus gets.

PostgreSQL runs with shared_buffers at a quarter of the machine's memory, as a tuned server
would (--shared-buffers; the embedded default of 128MB makes every query read most pages
through the kernel's cache, about 1.5 times slower at a million chunks).

For each size and each filter (all 100 bases, 10, 1):

- recall@10 of `nearest_chunks(k=10)` against an exact search (the same WHERE, index scans off);
- p50 and p99 latency and queries per second of Warden's `nearest_chunks` (one Django connection
  per client process) and of the floor: the same set_config calls and SELECT on a plain psycopg
  connection, server-side bound and prepared, the vector sent in pgvector's binary format;
  1 and 2 client processes, each for --seconds, Warden and the floor taking turns in 5 rounds;
- the plan PostgreSQL picks (the HNSW index or an exact scan of the filtered rows) and its
  estimate of the filtered rows, which decides it;

and, unfiltered on the floor, recall and p50 for a few hnsw.ef_search values. Then the targets,
at the largest size measured: printed, not asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
from _env import embedded

DIMENSIONS = 384
CLUSTERS = 1_000
BASES = 100
K = 10
BATCH = 50_000  # rows generated and COPYed at a time: 1M vectors never sit in Python at once
ROUNDS = 5  # warden and raw take turns this many times within each figure's --seconds
FILTERS = {"none": BASES, "10%": 10, "1%": 1}  # name: how many knowledge bases the actor reads
EF_SWEEP = (10, 40, 100, 200, 400)

# Exact: the same WHERE and ORDER BY with index scans off (a bitmap scan of a knowledge_base_id
# index for a filter, a sequential scan otherwise; HNSW offers no bitmap scans).
EXACT = """
SELECT id FROM agents_chunk WHERE knowledge_base_id = ANY(%s)
ORDER BY embedding <=> %s::vector LIMIT %s
"""
HNSW_INDEX = (
    "CREATE INDEX chunk_embedding_hnsw ON agents_chunk USING hnsw (embedding vector_cosine_ops) "
    "WITH (m = {m}, ef_construction = {ef_construction})"
)


def migration_index() -> tuple[int, int]:
    """(m, ef_construction) of the HNSW index as the Chunk model declares it."""
    from agents.knowledge.models import Chunk

    (index,) = (i for i in Chunk._meta.indexes if i.name == "chunk_embedding_hnsw")
    return index.m, index.ef_construction


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Clusters:
    """Where the synthetic vectors come from: 1,000 centres on the unit sphere and, with
    --subspace, a few random directions per centre that its noise mostly lies along."""

    centres: np.ndarray  # (CLUSTERS, DIMENSIONS)
    directions: np.ndarray | None  # (CLUSTERS, subspace, DIMENSIONS), unit rows
    noise: float

    @classmethod
    def make(cls, *, seed: int, noise: float, subspace: int, centre_dims: int) -> Clusters:
        centres = np.random.default_rng(seed).standard_normal(
            (CLUSTERS, DIMENSIONS), dtype=np.float32
        )
        if centre_dims:  # centres on a random great sphere of that many dimensions
            mix = np.random.default_rng([seed, 4]).standard_normal(
                (centre_dims, DIMENSIONS), dtype=np.float32
            )
            centres = centres[:, :centre_dims] @ mix
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        directions = None
        if subspace:
            directions = np.random.default_rng([seed, 3]).standard_normal(
                (CLUSTERS, subspace, DIMENSIONS), dtype=np.float32
            )
            directions /= np.linalg.norm(directions, axis=2, keepdims=True)
        return cls(centres, directions, noise)

    def sample(self, rng, n: int) -> np.ndarray:
        """`n` unit vectors, each a random centre plus gaussian noise of norm about `noise`:
        isotropic, or (--subspace) 90 % of it along the centre's directions, 10 % isotropic."""
        labels = rng.integers(0, CLUSTERS, n)
        isotropic = rng.standard_normal((n, DIMENSIONS), dtype=np.float32) / DIMENSIONS**0.5
        points = self.centres[labels]
        if self.directions is None:
            points += self.noise * isotropic
        else:
            dims = self.directions.shape[1]
            along = rng.standard_normal((n, dims), dtype=np.float32) / dims**0.5
            # One small product per cluster: gathering a (n, dims, DIMENSIONS) array is too big.
            for cluster in np.unique(labels):
                rows = labels == cluster
                points[rows] += 0.9 * self.noise * along[rows] @ self.directions[cluster]
            points += 0.1 * self.noise * isotropic
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points


def make_bases() -> tuple[list[int], list[int]]:
    """100 knowledge bases with one document each: (base ids, document ids), in base order."""
    from django.contrib.auth import get_user_model

    from agents.knowledge.models import Document, DocumentSource, KnowledgeBase

    owner = get_user_model().objects.create_user("bench")
    bases = KnowledgeBase.objects.bulk_create(
        KnowledgeBase(name=f"Bench {i}", slug=f"bench-{i}", owner=owner) for i in range(BASES)
    )
    documents = Document.objects.bulk_create(
        Document(knowledge_base=base, source=DocumentSource.UPLOAD, title=f"doc {i}")
        for i, base in enumerate(bases)
    )
    return [b.pk for b in bases], [d.pk for d in documents]


def load(conninfo: str, size: int, clusters, bases: list[int], documents: list[int], args) -> None:
    """Empty agents_chunk and drop its HNSW index, then COPY `size` chunks (binary, in batches)."""
    import psycopg
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng([args.seed, size, 1])
    with psycopg.connect(conninfo, autocommit=True) as connection:
        register_vector(connection)
        connection.execute("DROP INDEX IF EXISTS chunk_embedding_hnsw")
        connection.execute("TRUNCATE agents_chunk RESTART IDENTITY")
        began = time.perf_counter()
        with (
            connection.cursor() as cursor,
            cursor.copy(
                "COPY agents_chunk (document_id, knowledge_base_id, position, heading, text, "
                "tokens, embedding, metadata) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            # search is GENERATED from heading and text: not a column COPY may name.
            copy.set_types(["int8", "int8", "int4", "varchar", "text", "int4", "vector", "jsonb"])
            for start in range(0, size, BATCH):
                points = clusters.sample(rng, min(BATCH, size - start))
                for offset, vector in enumerate(points):
                    i = start + offset
                    base = i % BASES
                    copy.write_row(
                        (documents[base], bases[base], i // BASES, "", f"c{i}", 1, vector, {})
                    )
                if (start // BATCH) % 4 == 3 or start + BATCH >= size:
                    log(f"  copied {start + len(points):,} of {size:,} rows")
        log(f"  COPY of {size:,} rows: {time.perf_counter() - began:.1f} s")
        connection.execute("VACUUM (ANALYZE) agents_chunk")


def build_index(conninfo: str, maintenance_work_mem: str, m: int, ef_construction: int) -> float:
    """CREATE the HNSW index as the migrations do (or with --m, --ef-construction); the
    seconds it took."""
    import psycopg

    done = threading.Event()

    def progress() -> None:
        with psycopg.connect(conninfo, autocommit=True) as watcher:
            while not done.wait(30):
                row = watcher.execute(
                    "SELECT phase, tuples_done FROM pg_stat_progress_create_index"
                ).fetchone()
                if row:
                    log(f"  index build: {row[0]}, {row[1]:,} tuples")

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    try:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
            connection.execute("SET max_parallel_maintenance_workers = 1")
            began = time.perf_counter()
            connection.execute(HNSW_INDEX.format(m=m, ef_construction=ef_construction))
            seconds = time.perf_counter() - began
            connection.execute("ANALYZE agents_chunk")
            connection.execute("CHECKPOINT")  # not during the measurements
    finally:
        done.set()
        watcher.join()
    return seconds


def relation_sizes(conninfo: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as connection:
        table, index, indexes = connection.execute(
            "SELECT pg_table_size('agents_chunk'), pg_relation_size('chunk_embedding_hnsw'), "
            "pg_indexes_size('agents_chunk')"
        ).fetchone()
    return {"table": table, "hnsw": index, "all indexes": indexes}


def exact_neighbours(conninfo: str, ids: list[int], queries) -> tuple[list[set[int]], float]:
    """The true 10 nearest of each query, and the median milliseconds an exact search took."""
    import psycopg
    from pgvector.psycopg import register_vector

    found, took = [], []
    with psycopg.connect(conninfo) as connection:
        register_vector(connection)
        for query in queries:
            began = time.perf_counter()
            with connection.transaction():
                connection.execute("SET LOCAL enable_indexscan = off")
                rows = connection.execute(EXACT, [ids, query, K], binary=True).fetchall()
            took.append(time.perf_counter() - began)
            found.append({row[0] for row in rows})
    return found, statistics.median(took) * 1000


def raw_connection(conninfo: str):
    """The floor's connection: autocommit off, statements prepared from their first execution."""
    import psycopg
    from pgvector.psycopg import register_vector

    connection = psycopg.connect(conninfo, prepare_threshold=0)
    register_vector(connection)
    return connection


def raw_nearest(connection, ids: list[int], query, k: int, ef_search: int | None = None):
    """`nearest_chunks` without Django: the same two statements (imported from Warden) in one
    transaction. The vector goes as a float32 numpy array through pgvector's binary dumper
    (4 + 1,536 bytes, nothing to format or parse), as Warden's `_vector` and `_cursor` send it
    since c26b2b3; before, formatting it as text '[...]' took about 0.1 ms of each query."""
    from agents.knowledge.retrieval import _NEAREST, _SCAN_SETTINGS, EF_SEARCH

    with connection.cursor() as cursor:
        cursor.execute(_SCAN_SETTINGS, [str(ef_search or EF_SEARCH)])
        cursor.execute(_NEAREST, [query, ids, k], binary=True)
        rows = cursor.fetchall()
    connection.commit()
    return rows


def warden_nearest(ids: list[int], query) -> list[tuple[int, float]]:
    from agents.knowledge.retrieval import nearest_chunks

    return nearest_chunks(knowledge_bases=ids, embedding=query, k=K)


def recall(results: list[list[tuple[int, float]]], exact: list[set[int]]) -> tuple[float, dict]:
    """Mean recall@K; and how many answers came back with fewer than K rows, and with none of
    the true K (the search never reached the query's neighbourhood)."""
    pairs = zip(results, exact, strict=True)
    hits = [len({row[0] for row in rows} & truth) / len(truth) for rows, truth in pairs]
    return statistics.fmean(hits), {
        "short": sum(len(rows) < K for rows in results),
        "lost": sum(hit == 0 for hit in hits),
    }


def plan(conninfo: str, ids: list[int], query, ef_search: int | None = None) -> str:
    """The node types of the plan PostgreSQL picks for Warden's query (a custom plan), and its
    estimate of the rows the filter keeps: the choice between the HNSW index and an exact scan
    hangs on it."""
    import psycopg
    from pgvector.psycopg import register_vector

    from agents.knowledge.retrieval import _NEAREST, _SCAN_SETTINGS, EF_SEARCH

    def nodes(node) -> list[str]:
        name = node["Node Type"] + (f" {node['Index Name']}" if "Index Name" in node else "")
        return [name] + [n for child in node.get("Plans", []) for n in nodes(child)]

    with psycopg.connect(conninfo) as connection:
        register_vector(connection)
        connection.execute(_SCAN_SETTINGS, [str(ef_search or EF_SEARCH)])
        explained = connection.execute(
            "EXPLAIN (FORMAT JSON) " + _NEAREST, [np.asarray(query, dtype=np.float32), ids, K]
        ).fetchone()[0]
        estimate = connection.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM agents_chunk WHERE knowledge_base_id = ANY(%s)",
            [ids],
        ).fetchone()[0][0]["Plan"]["Plan Rows"]
        connection.rollback()
    return f"{' > '.join(nodes(explained[0]['Plan']))} (filter estimated at {estimate:,} rows)"


def client(kind, conninfo, ids, queries, first, seconds, start, results) -> None:
    """One client process: warm up, wait for the others, then query until the time is up."""
    from django.db import connection as django_connection

    raw = raw_connection(conninfo) if kind == "raw" else None

    def once(query) -> None:
        if raw is None:
            warden_nearest(ids, query)
        else:
            raw_nearest(raw, ids, query, K)

    for query in queries[:10]:
        once(query)
    latencies = []
    i = first
    start.wait()
    deadline = time.perf_counter() + seconds
    while (began := time.perf_counter()) < deadline:
        once(queries[i % len(queries)])
        latencies.append(time.perf_counter() - began)
        i += 1
    results.put(latencies)
    if raw is not None:
        raw.close()
    django_connection.close()


def measure(kind, conninfo, ids, queries, clients: int, seconds: float):
    """(latencies in seconds, elapsed seconds) of `clients` processes querying for `seconds`."""
    from django.db import connections

    connections.close_all()  # each forked client opens its own connection
    context = multiprocessing.get_context("fork")
    start = context.Barrier(clients + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=client,
            args=(
                kind,
                conninfo,
                ids,
                queries,
                i * len(queries) // clients,
                seconds,
                start,
                results,
            ),
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    start.wait()
    began = time.perf_counter()
    latencies = [x for _ in processes for x in results.get()]
    elapsed = time.perf_counter() - began
    for process in processes:
        process.join()
    return latencies, elapsed


def interleaved(conninfo, ids, per_kind: dict, clients: int, seconds: float) -> dict:
    """{kind: (p50 ms, p99 ms, queries per second)}, the kinds taking turns for ROUNDS rounds
    of seconds / ROUNDS each, so that a neighbour's load on the machine hits both alike."""
    latencies = {kind: [] for kind in per_kind}
    elapsed = dict.fromkeys(per_kind, 0.0)
    for _ in range(ROUNDS):
        for kind, queries in per_kind.items():
            more, took = measure(kind, conninfo, ids, queries, clients, seconds / ROUNDS)
            latencies[kind] += more
            elapsed[kind] += took
    figures = {}
    for kind, values in latencies.items():
        cuts = statistics.quantiles(values, n=100)
        figures[kind] = (cuts[49] * 1000, cuts[98] * 1000, len(values) / elapsed[kind])
    return figures


def bench_size(size: int, args, conninfo: str, clusters, queries, bases, documents) -> dict:
    log(f"{size:,} chunks: loading")
    load(conninfo, size, clusters, bases, documents, args)
    log(f"{size:,} chunks: building the HNSW index")
    build = build_index(conninfo, args.maintenance_work_mem, args.m, args.ef_construction)
    sizes = relation_sizes(conninfo)
    log(
        f"{size:,} chunks: index built in {build:.1f} s; HNSW {sizes['hnsw'] / 2**20:,.0f} MiB, "
        f"table {sizes['table'] / 2**20:,.0f} MiB, "
        f"all indexes {sizes['all indexes'] / 2**20:,.0f} MiB"
    )
    as_lists = [q.tolist() for q in queries]  # what an embedder returns: list[float]
    rows, exacts = {}, {}
    for name, count in FILTERS.items():
        ids = bases[:count]
        log(f"{size:,} chunks, filter {name}: exact search for {len(queries)} queries")
        exact, exact_ms = exact_neighbours(conninfo, ids, queries)
        warden_recall, warden_misses = recall([warden_nearest(ids, q) for q in as_lists], exact)
        with raw_connection(conninfo) as raw:
            raw_recall, raw_misses = recall([raw_nearest(raw, ids, q, K) for q in queries], exact)
        figures = {
            "plan": plan(conninfo, ids, queries[0]),
            "exact ms": exact_ms,
            "recall": {"warden": warden_recall, "raw": raw_recall},
            "misses": {"warden": warden_misses, "raw": raw_misses},
        }
        exacts[name] = exact
        for clients in (1, 2):
            log(f"{size:,} chunks, filter {name}: warden and raw, {clients} client(s)")
            measured = interleaved(
                conninfo, ids, {"warden": as_lists, "raw": queries}, clients, args.seconds
            )
            for kind, values in measured.items():
                figures[kind, clients] = values
        rows[name] = figures
    log(f"{size:,} chunks: ef_search sweep (raw, no filter)")
    sweep = {}
    exact = exacts["none"]  # all the bases, as the sweep asks
    with raw_connection(conninfo) as raw:
        for ef in EF_SWEEP:
            latencies, results = [], []
            for query in queries:
                began = time.perf_counter()
                results.append(raw_nearest(raw, bases, query, K, ef_search=ef))
                latencies.append(time.perf_counter() - began)
            index = "chunk_embedding_hnsw" in plan(conninfo, bases, queries[0], ef)
            found, misses = recall(results, exact)
            sweep[ef] = (
                found,
                misses["lost"],
                statistics.median(latencies) * 1000,
                "hnsw" if index else "exact scan",
            )
    report(size, build, sizes, rows, sweep, args)
    return rows


def report(size: int, build: float, sizes: dict, rows: dict, sweep: dict, args) -> None:
    from agents.knowledge.retrieval import EF_SEARCH

    print(
        f"\n{size:,} chunks, {args.queries} queries, "
        f"k={K}, ef_search={EF_SEARCH}, {os.cpu_count()} CPUs, {args.seconds:.0f} s per figure; "
        f"HNSW build {build:.1f} s, HNSW {sizes['hnsw'] / 2**20:,.0f} MiB, "
        f"table {sizes['table'] / 2**20:,.0f} MiB; load average now "
        f"{os.getloadavg()[0]:.1f} (other work on the machine skews the latencies)",
        flush=True,
    )
    line = "{:>6} {:>7} {:>9} {:>7} {:>7} {:>8} {:>8} {:>13}".format
    print(line("filter", "", "recall@10", "p50 ms", "p99 ms", "QPS@1", "QPS@2", "warden/raw p50"))
    for name, figures in rows.items():
        for kind in ("warden", "raw"):
            p50, p99, qps1 = figures[kind, 1]
            qps2 = figures[kind, 2][2]
            ratio = figures["warden", 1][0] / figures["raw", 1][0]
            print(
                line(
                    name if kind == "warden" else "",
                    kind,
                    f"{figures['recall'][kind]:.3f}",
                    f"{p50:.2f}",
                    f"{p99:.2f}",
                    f"{qps1:,.0f}",
                    f"{qps2:,.0f}",
                    f"{ratio:.2f}" if kind == "warden" else "",
                )
            )
    for name, figures in rows.items():
        misses = figures["misses"]["warden"]
        extra = (
            f"; Warden's answers with fewer than {K} rows: {misses['short']}, with none of the "
            f"true {K}: {misses['lost']} of {args.queries}"
        )
        print(
            f"plan, filter {name}: {figures['plan']}{extra}; an exact search (no index) takes "
            f"{figures['exact ms']:.1f} ms at p50"
        )
    print(
        "ef_search sweep (raw, no filter; lost: queries with none of the true 10):\n  "
        + "\n  ".join(
            f"{ef:>4}: recall {found:.3f}, lost {lost:>3}, p50 {ms:.2f} ms ({how})"
            for ef, (found, lost, ms, how) in sweep.items()
        ),
        flush=True,
    )


def targets(size: int, rows: dict) -> None:
    none = rows["none"]
    p50, recall_none = none["warden", 1][0], none["recall"]["warden"]
    checks = [
        (
            "unfiltered: p50 < 5 ms with recall@10 >= 0.95",
            p50 < 5 and recall_none >= 0.95,
            f"p50 {p50:.2f} ms, recall {recall_none:.3f}",
        ),
        *(
            (
                f"filter {name}: recall@10 >= 0.9",
                rows[name]["recall"]["warden"] >= 0.9,
                f"recall {rows[name]['recall']['warden']:.3f}",
            )
            for name in FILTERS
            if name != "none"
        ),
        *(
            (
                f"filter {name}: Warden p50 within 1.2x raw",
                rows[name]["warden", 1][0] <= 1.2 * rows[name]["raw", 1][0],
                f"{rows[name]['warden', 1][0] / rows[name]['raw', 1][0]:.2f}x",
            )
            for name in FILTERS
        ),
    ]
    note = "" if size >= 1_000_000 else " (the targets are for 1,000,000)"
    print(f"\ntargets at {size:,} chunks{note}:")
    for label, holds, measured in checks:
        print(f"  {'holds ' if holds else 'misses'}  {label}: {measured}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--noise", type=float, default=0.6, help="noise norm / centre norm")
    parser.add_argument(
        "--subspace",
        type=int,
        default=16,
        help="noise mostly along this many directions per cluster (0: isotropic, the hardest)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--maintenance-work-mem", default="6GB")
    parser.add_argument(
        "--shared-buffers",
        default=f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 4 // 2**20}MB",
        help="PostgreSQL's shared_buffers (default: a quarter of the memory)",
    )
    parser.add_argument(
        "--centre-dims",
        type=int,
        default=32,
        help="centres on a great sphere of this many dimensions, so some clusters neighbour "
        "others (0: uniform on the whole sphere, all nearly orthogonal)",
    )
    parser.add_argument("--m", type=int, help="HNSW m (default: the migration's)")
    parser.add_argument(
        "--ef-construction", type=int, help="HNSW ef_construction (default: the migration's)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with embedded() as (server,):
        declared_m, declared_ef = migration_index()
        args.m = args.m or declared_m
        args.ef_construction = args.ef_construction or declared_ef
        from django.core.management import call_command
        from django.db import connection

        if args.shared_buffers:
            with connection.cursor() as cursor:
                cursor.execute(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'")
            connection.close()
            server.stop()
            server.start()
        call_command("migrate", verbosity=0)
        conninfo = server.conninfo()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('shared_buffers'), extversion FROM pg_extension "
                "WHERE extname = 'vector'"
            )
            buffers, pgvector = cursor.fetchone()
        clusters = Clusters.make(
            seed=args.seed,
            noise=args.noise,
            subspace=args.subspace,
            centre_dims=args.centre_dims,
        )
        queries = clusters.sample(np.random.default_rng([args.seed, 2]), args.queries)
        log(
            f"retrieval bench: sizes {sizes}, {CLUSTERS:,} clusters, noise {args.noise}, "
            f"{f'along {args.subspace} directions' if args.subspace else 'isotropic'}, "
            f"centres in {args.centre_dims or DIMENSIONS} dimensions, "
            f"{args.queries} queries, pgvector {pgvector}, shared_buffers {buffers}, "
            f"HNSW m {args.m}, ef_construction {args.ef_construction}"
        )
        bases, documents = make_bases()
        from agents.knowledge.retrieval import _vector

        as_lists = [q.tolist() for q in queries]
        began = time.perf_counter()
        for query in as_lists:
            _vector(query)
        formatting = (time.perf_counter() - began) * 1000 / len(as_lists)
        log(f"Warden's _vector (an embedder's list[float] to what it sends): {formatting:.3f} ms")
        rows = {}
        for size in sizes:
            rows[size] = bench_size(size, args, conninfo, clusters, queries, bases, documents)
        largest = max(sizes)
        targets(largest, rows[largest])


if __name__ == "__main__":
    main()

"""The answer cache on a replayed workload: tokens saved by its exact and its similar tier, hits
across permissions (must be none), and answers right with the cache on against off.

The workload (generated, seeded): the demo's help desk agent on the offline model, answering from
the demo handbook (every role reads it) and an IT runbook (only the "IT staff" group reads it);
members and IT staff ask it standalone questions, each in a new conversation: popular questions
again and again, in their own words and in paraphrases (the labelled same pairs of
tests/data/cache_question_pairs.json, joined into families), questions asked once (the
handbook's, the runbook's, questions it cannot answer, and look-alikes of popular ones from the
labelled different pairs), and some follow-ups in an earlier conversation (never cached).

Replayed three times, from an empty cache each time, through the real runtime in this process
(`run_start`, then `run_execute` as a worker runs it: retrieval, guardrails, the gateway with
litellm and the offline model, checkpoints, audit; no Celery, no websocket): no cache; the exact
tier (and the gateway's response cache, the route's cache_seconds, which is counted apart); the
exact and the similar tier. For each: model tokens used, tokens saved by each tier (what the
kept answers' model calls used), hits, hits whose kept answer was asked by someone who may read
or use anything else than the asker (counted against the readable knowledge bases and usable
tools, not the digest), and the share of questions with a known fact whose answer states it.
Starts its own embedded PostgreSQL and Redis.

    .venv/bin/python bench/cache_replay.py [--questions 240] [--seed 7] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from _env import ROOT, embedded  # bench/ is on the path

PAIRS = ROOT / "tests" / "data" / "cache_question_pairs.json"
FACTS = ROOT / "tests" / "data" / "handbook_questions.json"

RUNBOOK = b"""# IT runbook

## Restarting the build server

Log in to the jump host, run `sudo systemctl restart buildd` on build-01 and watch the
dashboard until the queue drains. Tell the #builds channel before you restart it.

## Database failover

Promote the standby with `pg_ctl promote` on db-02, then move the service address with the
failover script. Page the on-call DBA first.

## Rotating the TLS certificates

Certificates are renewed by the cert-bot job every 60 days; to rotate one by hand, run the
rotate-certs playbook and restart the load balancer.
"""

# Questions only IT staff can have answered (the runbook), in families of paraphrases.
STAFF_FAMILIES = [
    (
        ["How do I restart the build server?", "How can I restart the build server?"],
        "systemctl restart buildd",
    ),
    (["How do I fail over the database?", "How do I do a database failover?"], "pg_ctl promote"),
    (
        ["How often are TLS certificates renewed?", "How often do TLS certificates get renewed?"],
        "60 days",
    ),
]


def families() -> tuple[list[tuple[list[str], str | None]], list[str]]:
    """(families of questions one answer serves, with the fact that answer must state if
    known; look-alikes: questions like a family's that need another answer)."""
    pairs = json.loads(PAIRS.read_text())
    facts = {
        q.lower(): f
        for split in ("tune", "check")
        for q, f in json.loads(FACTS.read_text())[split]
        if f
    }
    parent: dict[str, str] = {}

    def root(q: str) -> str:
        while parent.setdefault(q, q) != q:
            q = parent[q]
        return q

    lookalikes = []
    for split in ("tune", "held_out"):
        for a, b, same in pairs[split]:
            if same:
                parent[root(a)] = root(b)
            else:
                lookalikes.append(b)
    grouped: dict[str, list[str]] = defaultdict(list)
    for q in list(parent):
        grouped[root(q)].append(q)
    found = []
    for members in grouped.values():
        fact = next((facts[m.lower()] for m in members if m.lower() in facts), None)
        found.append((sorted(members), fact))
    members = {q for qs, _ in found for q in qs}
    return found, sorted(set(lookalikes) - members)


def workload(questions: int, seed: int, users: dict[str, list]) -> list[dict]:
    """The asks, in order: who, what, in which conversation (a follow-up: an earlier one of
    theirs), and the fact its answer must state (if known)."""
    rng = random.Random(seed)
    shared, lookalikes = families()
    rng.shuffle(shared)
    facts = json.loads(FACTS.read_text())
    once = [(q, f) for q, f in facts["check"]]  # asked once: some answered, some not
    rng.shuffle(once)
    staff = STAFF_FAMILIES
    everyone = users["member"] + users["staff"]
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(shared))]  # a few popular questions
    asks: list[dict] = []
    asked_by: dict[str, list[int]] = defaultdict(list)
    for i in range(questions):
        roll = rng.random()
        if roll < 0.62:
            user = rng.choice(everyone)
            variants, fact = rng.choices(shared, weights)[0]
            # The family's most-asked wording half the time, else a paraphrase.
            text = variants[0] if rng.random() < 0.5 else rng.choice(variants)
            kind, family = "popular", f"p{shared.index((variants, fact))}"
        elif roll < 0.74:
            user = rng.choice(users["staff"]) if rng.random() < 0.8 else rng.choice(everyone)
            variants, fact = rng.choice(staff)
            text, kind = rng.choice(variants), "runbook"
            family = f"r{staff.index((variants, fact))}"
        elif roll < 0.86 and once:
            user = rng.choice(everyone)
            text, fact = once.pop()
            kind, family = "once", None
        elif roll < 0.93:
            user = rng.choice(everyone)
            text, fact, kind, family = rng.choice(lookalikes), None, "look-alike", None
        else:
            user = rng.choice(everyone)
            variants, fact = rng.choices(shared, weights)[0]
            text, kind = rng.choice(variants), "follow-up"
            family = f"p{shared.index((variants, fact))}"
        follows = None
        if kind == "follow-up" and asked_by[user]:
            follows = rng.choice(asked_by[user])
        elif kind == "follow-up":
            kind = "popular"
        if follows is None:
            asked_by[user].append(i)
        asks.append(
            {
                "i": i,
                "user": user,
                "text": text,
                "fact": fact,
                "kind": kind,
                "family": family,
                "follows": follows,
            }
        )
    return asks


def setup() -> tuple:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from agents.knowledge.services import document_add, document_ingest
    from agents.models import Agent, Document, KnowledgeBase
    from audit.services import SYSTEM
    from governance.models import Action
    from governance.services import access_grant
    from ops.demo import demo_workspace_seed

    call_command("migrate", verbosity=0)
    from django.conf import settings

    demo_workspace_seed(credentials_path=Path(settings.VAR_DIR) / "logins.json")
    for document in Document.objects.filter(knowledge_base__slug="handbook"):
        document_ingest(document_id=document.pk)
    users = get_user_model().objects
    admin = users.get(username="admin")
    runbook = KnowledgeBase.objects.create(slug="it-runbook", name="IT runbook", owner=admin)
    it_staff = Group.objects.create(name="IT staff")
    access_grant(obj=runbook, holder=it_staff, action=Action.READ, actor=SYSTEM)
    document, _ = document_add(
        knowledge_base=runbook, actor=SYSTEM, name="runbook.md", data=RUNBOOK, enqueue=False
    )
    document_ingest(document_id=document.pk)
    agent = Agent.objects.get(slug="help-desk")
    agent.knowledge_bases.add(runbook)
    member_groups = list(users.get(username="member").groups.all())
    people: dict[str, list] = {"member": [], "staff": []}
    for n in range(4):
        user = users.create_user(f"member{n}", email=f"member{n}@example.com")
        user.groups.add(*member_groups)
        people["member"].append(user.username)
    for n in range(3):
        user = users.create_user(f"staff{n}", email=f"staff{n}@example.com")
        user.groups.add(*member_groups, it_staff)
        people["staff"].append(user.username)
    return agent, people


def access_of(user, agent) -> tuple:
    """What `user` may read and use of the agent, from governance (not from the cache)."""
    from agents.models import KnowledgeBase
    from governance.models import Action
    from tools.models import Tool

    bases = KnowledgeBase.objects.restrict(user, Action.READ).filter(
        pk__in=agent.knowledge_bases.values("pk")
    )
    tools = Tool.objects.restrict(user, Action.USE).filter(
        pk__in=agent.tools.values("pk"), enabled=True
    )
    return (
        frozenset(bases.values_list("pk", flat=True)),
        frozenset(tools.values_list("pk", flat=True)),
    )


def replay(mode: str, asks: list[dict], agent) -> dict:
    from django.contrib.auth import get_user_model
    from django.core.cache import cache

    from agents.gateway.client import cache_stats
    from agents.models import (
        Agent,
        AnswerCache,
        CachedAnswer,
        Conversation,
        ModelRoute,
        Run,
        RunStep,
        StepKind,
    )
    from agents.orchestrator import run_execute
    from agents.services import run_start

    CachedAnswer.objects.all().delete()
    cache.clear()
    setting = {"none": AnswerCache.OFF, "exact": AnswerCache.EXACT, "similar": AnswerCache.SIMILAR}[
        mode
    ]
    Agent.objects.filter(pk=agent.pk).update(answer_cache=setting)
    ModelRoute.objects.filter(pk=agent.route_id).update(cache_seconds=0 if mode == "none" else 3600)
    agent = Agent.objects.get(pk=agent.pk)
    users = {u.username: u for u in get_user_model().objects.all()}
    access = {name: access_of(user, agent) for name, user in users.items()}
    conversations: dict[int, object] = {}
    gateway_before = cache_stats()
    used = 0
    saved = {"exact": 0, "similar": 0}
    hits = {"exact": 0, "similar": 0}
    crossed, lookalike_hits, similar_hits = [], 0, []
    known, right = 0, 0
    states: dict[str, int] = defaultdict(int)
    each: list[dict] = []
    started = time.perf_counter()
    for ask in asks:
        user = users[ask["user"]]
        conversation = conversations.get(ask["follows"]) if ask["follows"] is not None else None
        conversation = conversation or Conversation.objects.create(owner=user, agent=agent)
        conversations[ask["i"]] = conversation
        run = run_start(
            agent=agent, conversation=conversation, actor=user, input=ask["text"], stream=False
        )
        run_execute(run_id=run.pk, holder="bench")
        run = Run.objects.get(pk=run.pk)
        states[run.state] += 1
        used += run.prompt_tokens + run.completion_tokens
        step = RunStep.objects.filter(run=run, kind=StepKind.MODEL).order_by("index").first()
        hit = (step.output.get("answer_cache") if step else None) or None
        each.append(
            {
                "i": ask["i"],
                "state": run.state,
                "tokens": run.prompt_tokens + run.completion_tokens,
                "hit": hit and hit["tier"],
                "kept": CachedAnswer.objects.filter(run=run).exists(),
            }
        )
        if hit is not None:
            hits[hit["tier"]] += 1
            saved[hit["tier"]] += hit["tokens_saved"]
            entry = CachedAnswer.objects.select_related("run__actor").get(pk=hit["entry"])
            if access[entry.run.actor.username] != access[user.username]:
                crossed.append({"ask": ask["i"], "entry": entry.pk})
            if hit["tier"] == "similar":
                similar_hits.append(
                    {
                        "asked": ask["text"],
                        "kept": entry.question,
                        "similarity": hit["similarity"],
                    }
                )
            if ask["kind"] == "look-alike" and entry.question.lower() != ask["text"].lower():
                lookalike_hits += 1
        if ask["i"] % 20 == 19:
            seconds = time.perf_counter() - started
            print(f"{mode}: {ask['i'] + 1} asked, {seconds:.0f} s", file=sys.stderr, flush=True)
        if ask["fact"]:
            known += 1
            right += ask["fact"].lower() in run.answer.lower()
    gateway_after = cache_stats()
    return {
        "mode": mode,
        "questions": len(asks),
        "tokens_used": used,
        "tokens_saved": saved,
        "hits": hits,
        "gateway_cache": {k: gateway_after[k] - gateway_before[k] for k in gateway_after},
        "cross_permission_hits": len(crossed),
        "crossed": crossed,
        "look_alike_hits": lookalike_hits,
        "similar_hits": similar_hits,
        "known_fact_questions": known,
        "known_fact_right": right,
        "states": dict(states),
        "entries_kept": CachedAnswer.objects.count(),
        "seconds": round(time.perf_counter() - started, 1),
        "asks": each,
    }


def reachable(asks: list[dict], base: dict, cached: dict) -> float:
    """The share of the no-cache replay's (`base`) tokens that a cache matching every
    paraphrase and no look-alike would save: each standalone ask of a family (popular or
    runbook) whose answer was kept before for someone with the same access, as the replay with
    the cache (`cached`) kept them."""
    kept: set[tuple] = set()
    saved = 0
    for ask, plain, done in zip(asks, base["asks"], cached["asks"], strict=True):
        if ask["follows"] is not None or ask["family"] is None:
            continue
        key = (ask["family"], ask["user"].startswith("staff"))
        if key in kept:
            saved += plain["tokens"]
        elif done["kept"]:
            kept.add(key)
    return saved / base["tokens_used"] if base["tokens_used"] else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    parser.add_argument(
        "--modes", default="none,exact,similar", help="which replays (none first: the base)"
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "none" or not set(modes) <= {"none", "exact", "similar"}:
        parser.error("--modes: none first, then exact and/or similar")
    with embedded(redis=True):
        import agents.gateway.client  # noqa: F401 - registers warden-local

        began = time.perf_counter()
        agent, people = setup()
        print(f"set up in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        asks = workload(args.questions, args.seed, people)
        kinds: dict[str, int] = defaultdict(int)
        for ask in asks:
            kinds[ask["kind"]] += 1
        results = [replay(mode, asks, agent) for mode in modes]
    base = results[0]["tokens_used"]
    print(f"workload: {len(asks)} questions {dict(kinds)}")
    print("askers: 4 members, 3 IT staff (they may also read the runbook)")
    from django.conf import settings

    print(f"similarity threshold {settings.WARDEN_ANSWER_CACHE_SIMILARITY}")
    ceiling = reachable(asks, results[0], results[-1]) if len(results) > 1 else 0.0
    print(
        f"a perfect matcher would save {ceiling:.1%} (every ask of a family whose answer was "
        "kept before for the same access, served from it)"
    )
    print(
        f"{'cache':<9}{'tokens':>9}{'saved':>8}{'exact hits, saved':>19}"
        f"{'similar hits, saved':>21}{'crossed':>9}{'right':>9}"
    )
    for r in results:
        share = 1 - r["tokens_used"] / base if base else 0.0
        r["saved_share"] = round(share, 3)
        r["saved_share_by_tier"] = {
            t: round(r["tokens_saved"][t] / base, 3) if base else 0.0 for t in ("exact", "similar")
        }
        print(
            f"{r['mode']:<9}{r['tokens_used']:>9}{share:>8.1%}"
            f"{r['hits']['exact']:>10} {r['saved_share_by_tier']['exact']:>8.1%}"
            f"{r['hits']['similar']:>12} {r['saved_share_by_tier']['similar']:>8.1%}"
            f"{r['cross_permission_hits']:>8}"
            f"{r['known_fact_right']:>5}/{r['known_fact_questions']}"
        )
    for r in results:
        print(
            f"{r['mode']}: gateway response cache {r['gateway_cache']}; look-alike hits "
            f"{r['look_alike_hits']}; run states {r['states']}; {r['seconds']} s"
        )
    result = {
        "ceiling": round(ceiling, 3),
        "workload": {
            "questions": len(asks),
            "kinds": dict(kinds),
            "seed": args.seed,
            "asks": asks,
        },
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

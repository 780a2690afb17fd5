"""The search's words as PostgreSQL keeps them (agents_run.search_vector, migration 0019): they
follow what the user was shown, and the GIN index serves the selector's own expression."""

import pytest
from django.contrib.postgres.search import SearchQuery
from django.db import connection, transaction

from agents.models import Conversation, Run
from agents.selectors import RunText, conversations_search

pytestmark = pytest.mark.django_db


def test_an_answer_becomes_searchable_when_it_is_shown(people, help_desk):
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = Run.objects.create(
        agent=help_desk, conversation=conversation, actor=people.member, input="badge?"
    )
    assert conversations_search(people.member, "reception") == []

    Run.objects.filter(pk=run.pk).update(answer="Collect it at reception.", state="succeeded")

    [hit] = conversations_search(people.member, "reception")
    assert hit.run == run
    assert hit.answered == "Collect it at <mark>reception</mark>"  # (a fragment: no stop)


def test_loading_a_run_never_reads_the_search_words(people, help_desk):
    assert "search_vector" not in str(Run.objects.all().query)


def test_the_gin_index_serves_the_selectors_expression(people, help_desk):
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    Run.objects.bulk_create(
        Run(
            agent=help_desk,
            conversation=conversation,
            actor=people.member,
            input=f"question {n} about the printer",
            answer="zeppelin" if n == 7 else "nothing to see",
            state="succeeded",
        )
        for n in range(300)
    )
    query = SearchQuery("zeppelin", search_type="websearch", config="english")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_run")
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = Run.objects.annotate(words=RunText()).filter(words=query).explain()

    assert "Bitmap Index Scan on agents_run_search" in plan, plan


def test_a_very_long_answer_is_still_written_and_its_beginning_found(people, help_desk):
    # PostgreSQL refuses a tsvector over 1 MB: a run whose whole answer went into its words
    # could not be finished. Only the answer's first 100,000 characters are searched.
    import random

    rng = random.Random(1)
    words = ["".join(rng.choices("αβγδεζηθικλμνξοπρστυφχψω", k=8)) for _ in range(110_000)]
    answer = "Kingfisher " + " ".join(words)[:1_000_000]
    conversation = Conversation.objects.create(owner=people.member, agent=help_desk)
    run = Run.objects.create(
        agent=help_desk, conversation=conversation, actor=people.member, input="the project?"
    )

    Run.objects.filter(pk=run.pk).update(answer=answer, state="succeeded")

    [hit] = conversations_search(people.member, "kingfisher")
    assert hit.run == run


def test_an_mcp_client_s_call_keeps_no_search_words(people, help_desk):
    run = Run.objects.create(
        agent=help_desk, actor=people.member, input="a tool's question", kind="mcp"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT search_vector IS NULL FROM agents_run WHERE id = %s", [run.pk])
        assert cursor.fetchone() == (True,)

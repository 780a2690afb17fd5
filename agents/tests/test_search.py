"""The search's words as PostgreSQL keeps them (agents_run.search_vector, migration 0015): they
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

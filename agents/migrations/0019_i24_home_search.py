"""Conversation search (agents.selectors.conversations_search): the words of a run's message
and of its answer once shown to the user, kept as a tsvector in `agents_run.search_vector`
(computed by PostgreSQL as the row is written), with a GIN index.

Why a stored column, not an expression index: the planner took the user's runs one by one and
recomputed to_tsvector on each (0.4 ms apiece: about a second for 2,000 runs, ranked twice),
the expression index unused (bench numbers in the commit and the README). Stored, a match and
its rank read the kept vector.

The column is not a model field, on purpose: the ORM never reads it (a run is loaded on every
step of the runtime; the vector would double what each load reads), only
agents.selectors.RunText names it. PostgreSQL recomputes it when `input`, `answer` or `state`
change, not on the runtime's other updates (tokens, lease). Only runs in a conversation have
one (an MCP client's calls are never searched), and only the first 20,000 characters of the
message and 100,000 of the answer count: PostgreSQL refuses a tsvector over 1 MB, and the
run's own write would fail with it.

Adding it rewrites agents_run under an exclusive lock, and building the index reads it all: on
a large table, expect the migration to take a while with runs stopped.
"""

from django.db import migrations

ADD = """
ALTER TABLE agents_run ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    CASE WHEN conversation_id IS NULL THEN NULL ELSE
        to_tsvector('english'::regconfig, left(input, 20000) || ' ' ||
            CASE WHEN state = 'succeeded' THEN left(answer, 100000) ELSE '' END)
    END
) STORED;
CREATE INDEX agents_run_search ON agents_run USING gin (search_vector);
"""

DROP = """
DROP INDEX IF EXISTS agents_run_search;
ALTER TABLE agents_run DROP COLUMN IF EXISTS search_vector;
"""


class Migration(migrations.Migration):
    dependencies = [("agents", "0018_i24_upload_conversation_files")]

    operations = [migrations.RunSQL(ADD, reverse_sql=DROP)]

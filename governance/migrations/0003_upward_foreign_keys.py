"""Requests, escalations and budgets point at runs, agents and tools by (lazy) foreign key,
where they kept bare ids: the same columns (`run_id`, `agent_id`, `tool_id`) and the same rows,
no database constraint (a decision record keeps the id of what it decided about after that is
gone), so no new check on existing data. Each field is renamed (`run_id` to `run`, in the state)
and then turned into the foreign key, whose column is `run_id` again."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def _upward(
    model_name: str, name: str, to: str, **options: Any
) -> list[migrations.RenameField | migrations.AlterField]:
    field = (models.OneToOneField if options.pop("one", False) else models.ForeignKey)(
        on_delete=django.db.models.deletion.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        to=to,
        **options,
    )
    return [
        migrations.RenameField(model_name=model_name, old_name=f"{name}_id", new_name=name),
        migrations.AlterField(model_name=model_name, name=name, field=field),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0011_provenance"),
        ("governance", "0002_withdrawn"),
        ("tools", "0009_tool_output_trusted"),
    ]

    operations = [
        *_upward("approvalrequest", "run", "agents.run"),
        *_upward("approvalrequest", "agent", "agents.agent", db_index=False),
        *_upward("approvalrequest", "tool", "tools.tool", db_index=False),
        *_upward("escalation", "run", "agents.run", one=True),
        *_upward("escalation", "agent", "agents.agent", db_index=False),
        *_upward("budget", "agent", "agents.agent", null=True, blank=True, db_index=False),
    ]

"""Agent.tools: from a list of Python tool names to rows of the tool registry (tools.Tool).

Each name becomes (or finds) a python Tool row, enabled since an agent already used it; the
post_migrate sync then fills in its description and parameters from the code."""

from django.db import migrations, models


def names_to_rows(apps, schema_editor):
    Agent = apps.get_model("agents", "Agent")
    Tool = apps.get_model("tools", "Tool")
    for agent in Agent.objects.all():
        for name in agent.tools:
            tool, _ = Tool.objects.get_or_create(
                name=name,
                defaults={"kind": "python", "config": {"function": name}, "enabled": True},
            )
            agent.tool_rows.add(tool)


def rows_to_names(apps, schema_editor):
    Agent = apps.get_model("agents", "Agent")
    for agent in Agent.objects.all():
        agent.tools = list(agent.tool_rows.values_list("name", flat=True))
        agent.save(update_fields=["tools"])


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0004_drop_duplicate_chunk_index"),
        ("tools", "0003_tool_registry"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="tool_rows",
            field=models.ManyToManyField(blank=True, related_name="+", to="tools.tool"),
        ),
        migrations.RunPython(names_to_rows, rows_to_names),
        migrations.RemoveField(model_name="agent", name="tools"),
        migrations.RenameField(model_name="agent", old_name="tool_rows", new_name="tools"),
        migrations.AlterField(
            model_name="agent",
            name="tools",
            field=models.ManyToManyField(
                blank=True,
                help_text="The tools the agent may offer the model (disabled ones are not offered).",
                related_name="agents",
                to="tools.tool",
            ),
        ),
    ]

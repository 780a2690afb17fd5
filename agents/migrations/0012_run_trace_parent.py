from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("agents", "0011_provenance")]

    operations = [
        migrations.AddField(
            model_name="run",
            name="trace_parent",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The W3C traceparent of the run's first span: every attempt at the run "
                "is traced under it (telemetry.tracing); empty when tracing is off.",
                max_length=55,
            ),
            preserve_default=False,
        ),
    ]

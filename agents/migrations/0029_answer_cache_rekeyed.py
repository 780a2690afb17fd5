"""The answer cache's exact tier compares questions with a wider normalisation (punctuation
around words and contractions no longer count: agents.answer_cache.normalised), so the digests
kept before would never be found again. The cache is only a cache: its entries are dropped, and
the next answers fill it. Nothing else reads them; reversing keeps the table as it is."""

from django.db import migrations


def drop_kept_answers(apps, schema_editor) -> None:
    apps.get_model("agents", "CachedAnswer").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("agents", "0028_answer_cache")]
    operations = [migrations.RunPython(drop_kept_answers, migrations.RunPython.noop)]

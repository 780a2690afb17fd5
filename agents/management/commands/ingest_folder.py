from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from agents.knowledge.extract import SUPPORTED, too_big
from agents.knowledge.models import DocumentStatus, KnowledgeBase
from agents.knowledge.services import document_add, document_ingest, max_bytes
from audit.services import SYSTEM


class Command(BaseCommand):
    help = (
        "Read every .txt, .md, .html and .pdf file under FOLDER into a knowledge base, here "
        "and now (no worker needed), with a progress bar; files that cannot be read are listed "
        "with the reason and the rest go on."
    )

    def add_arguments(self, parser):
        parser.add_argument("knowledge_base", help="the knowledge base's slug")
        parser.add_argument("folder")

    def handle(self, *args, **options):
        base = KnowledgeBase.objects.filter(slug=options["knowledge_base"]).first()
        if base is None:
            raise CommandError(f"no knowledge base {options['knowledge_base']!r}")
        folder = Path(options["folder"])
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder")
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED
        )
        if not files:
            raise CommandError(f"no .txt, .md, .html or .pdf file under {folder}")
        counts = {"ready": 0, "failed": 0, "unchanged": 0}
        problems = []
        for path in tqdm(files, unit="file", file=self.stderr, disable=None):
            if path.stat().st_size > max_bytes():
                problems.append(f"{path}: {too_big(path.stat().st_size, max_bytes())}")
                counts["failed"] += 1
                continue
            document, created = document_add(
                knowledge_base=base,
                actor=SYSTEM,
                name=path.name,
                data=path.read_bytes(),
                enqueue=False,
            )
            if not created and document.status == DocumentStatus.READY:
                counts["unchanged"] += 1
                continue
            document = document_ingest(document_id=document.pk)
            if document.status == DocumentStatus.READY:
                counts["ready"] += 1
            else:
                counts["failed"] += 1
                problems.append(f"{path}: {document.error or document.status}")
        for problem in problems:
            self.stderr.write(problem)
        self.stdout.write(
            f"{counts['ready']} read, {counts['unchanged']} already there, "
            f"{counts['failed']} failed"
        )

"""The chunk embedding index rebuilt with m=24, ef_construction=128 (see Chunk.Meta): the
rebuild reads every chunk; at a million chunks it took about 6 minutes on 2 cores, during which
retrieval scans without the index."""

import pgvector.django.indexes
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0005_agent_tools_registry"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="chunk",
            name="chunk_embedding_hnsw",
        ),
        migrations.AddIndex(
            model_name="chunk",
            index=pgvector.django.indexes.HnswIndex(
                ef_construction=128,
                fields=["embedding"],
                m=24,
                name="chunk_embedding_hnsw",
                opclasses=["vector_cosine_ops"],
            ),
        ),
    ]

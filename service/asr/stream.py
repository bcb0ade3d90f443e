"""One audio stream's transcription: segmenter, partial cadence and the commit of finals.

A call has one per transcribed speaker; the benchmark drives the very same object, so what
it measures is what a call does. Everything here runs on the hub; decoding happens on the
engine's worker thread and comes back through `on_partial` / `on_final`. A stream keeps
nothing per utterance once its final is answered: a caller that wants timings per utterance
(the benchmark) records them from the callbacks and `on_utterance`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from gevent.event import Event

from service.asr.engine import AsrEngine
from service.asr.scheduler import Drop, Outcome, Request, RequestKind
from service.asr.segmenter import Segmenter, SegmenterConfig, Utterance
from service.frames import FRAME_MS
from service.vocab import Segment, Task

log = logging.getLogger(__name__)

DEFAULT_PARTIAL_INTERVAL_S = 1.0
DEFAULT_PROMPT_CHARS = 200
PROMPT_RESET_TEMPERATURE = 0.5  # as whisper.transcribe: text this uncertain is no context
MAX_OVERLAP_WORDS = 8  # the most words a cut's overlap (SegmenterConfig.cut_overlap_ms) holds


def _word_key(word: str) -> str:
    return "".join(c for c in word.casefold() if c.isalnum())


def without_repeat(previous: str, text: str, max_words: int = MAX_OVERLAP_WORDS) -> str:
    """`text` less its first words when they repeat the last words of `previous`.

    An utterance that follows a cut starts with audio the one before already held; its
    words come out twice, and the longest run of up to `max_words` that ends `previous`
    and starts `text` (compared without case and punctuation) is dropped from `text`.
    """
    before = [_word_key(w) for w in previous.split()[-max_words:]]
    words = text.split()
    after = [_word_key(w) for w in words[:max_words]]
    for n in range(min(len(before), len(after)), 0, -1):
        if before[-n:] == after[:n] and any(after[:n]):
            return " ".join(words[n:])
    return text


class Context:
    """The end of what a stream has committed, given to its next decodes as a prompt.

    Cut into utterances, speech loses the words around it that tell Whisper "Tudor" from
    "two door"; `whisper.transcribe` conditions each window on the text before it for the
    same reason. Only finals feed this, so nothing unconfirmed is ever conditioned on.
    """

    def __init__(self, max_chars: int = DEFAULT_PROMPT_CHARS) -> None:
        self.max_chars = max_chars
        self.text = ""
        self.language: str | None = None

    def add(self, text: str, language: str | None, temperature: float | None) -> None:
        if not self.max_chars or (temperature or 0.0) > PROMPT_RESET_TEMPERATURE:
            self.text = ""  # the model was guessing: its guess is no context
            return
        if language != self.language:
            self.text, self.language = "", language
        text = f"{self.text} {text}".strip()
        cut = len(text) - self.max_chars
        if cut > 0:
            # Start at a word, not inside one (scripts without spaces are cut anywhere).
            if text[cut - 1] != " " and " " in text[cut:]:
                cut = text.index(" ", cut) + 1
            text = text[cut:]
        self.text = text


class Early:
    """A final decoded before its utterance is known to have ended (`Segmenter.tentative_end`).

    It is adopted when the utterance ends with the very audio it holds, and then answered
    like any final; it is retracted when speech resumes first, and its outcome is ignored.
    """

    def __init__(self, utt: Utterance) -> None:
        self.utt = utt
        self.request: Request | None = None
        self.outcome: Outcome | None = None
        self.adopted: tuple[int, Utterance, float] | None = None  # number, utterance, spoke
        self.retracted = False

    def holds(self, utt: Utterance) -> bool:
        """Whether `utt` is the utterance this was decoded from (same frames)."""
        return (
            utt.start_s == self.utt.start_s
            and utt.audio.size == self.utt.audio.size
            and utt.overlap_s == self.utt.overlap_s
        )


PartialHandler = Callable[[int, str, float, float], None]  # utterance, text, start, end
FinalHandler = Callable[[int, list[Segment]], None]  # utterance, segments (maybe none)
UtteranceHandler = Callable[[int, Utterance], None]  # utterance number, its audio and times


class StreamTranscriber:
    """Feed 20 ms frames with `push`; provisional text comes to `on_partial` about once per
    `partial_interval_s` of new speech while an utterance is open (never more than one
    partial in flight), and each ended utterance comes to `on_final` exactly once, in order,
    with an empty list when nothing was kept (silence, or a candidate the filters dropped).
    A segment's times are seconds into the stream; its speaker and number are left to the
    caller (`Segment.numbered`). `on_utterance`, if given, is told of each ended utterance
    as it goes to the model.

    With `early_finals`, a final's decode starts once the utterance's silence reaches the
    trailing silence it keeps (200 ms) instead of the end silence that closes it (500 ms):
    from then on its audio cannot change, and when speech does not resume the final is
    committed as soon as it is decoded (`Early`). It is tried only when the stream owes no
    other final (the prompt it is decoded with is then the one the final would get) and the
    worker is not saturated (a retracted one is a wasted decode).
    """

    def __init__(
        self,
        engine: AsrEngine,
        config: SegmenterConfig,
        on_final: FinalHandler,
        on_partial: PartialHandler | None = None,
        language: str | None = None,
        task: Task | str = Task.TRANSCRIBE,
        partial_interval_s: float = DEFAULT_PARTIAL_INTERVAL_S,
        label: str = "",
        prompt_chars: int = DEFAULT_PROMPT_CHARS,
        on_utterance: UtteranceHandler | None = None,
        early_finals: bool = True,
    ) -> None:
        self.engine = engine
        self.segmenter = Segmenter(config)
        self.language = language
        self.task = Task(task)
        self.label = label
        self._on_final = on_final
        self._on_partial = on_partial
        self._on_utterance = on_utterance
        self._partial_frames = (
            max(1, int(partial_interval_s * 1000 / FRAME_MS)) if partial_interval_s > 0 else 0
        )
        self.context = Context(prompt_chars)
        self._last_text = ""  # the last final's text, to drop what a cut's overlap repeats
        self._utterance = 0  # number of the open (or next) utterance
        self._frames_at_partial = 0  # open-utterance frames covered by the last partial request
        self._partial_in_flight = False
        self._finals_pending = 0
        self._withdrawn = False  # withdraw(): no final is committed any more
        self._early_finals = early_finals
        self._early: Early | None = None  # the open utterance's final, decoded early
        self.idle = Event()
        self.idle.set()
        # Counters a caller may read.
        self.finals_committed = 0
        self.finals_dropped = 0
        self.finals_rejected = 0
        self.partials_shown = 0
        self.early_adopted = 0
        self.early_retracted = 0

    @property
    def pending(self) -> int:
        """Finals submitted and not yet answered."""
        return self._finals_pending

    @property
    def in_speech(self) -> bool:
        return self.segmenter.in_speech

    def push(self, pcm: np.ndarray) -> None:
        segmenter = self.segmenter
        utterance = segmenter.push(pcm)
        if utterance is not None:
            self._submit_final(utterance)
            return
        if self._early is not None:
            if segmenter.silent_frames == 0:  # speech resumed, or the burst was discarded
                self._retract()
            return
        if self._early_finals and not self._finals_pending and not self.engine.saturated:
            ending = segmenter.tentative_end()
            if ending is not None:
                self._submit_early(ending)
                return
        if self._on_partial is not None and self._partial_frames:
            frames = segmenter.open_frames
            if (
                frames - self._frames_at_partial >= self._partial_frames
                and not self._partial_in_flight
                and segmenter.silent_frames == 0  # a pause may be the end: its final goes first
            ):
                self._submit_partial(frames)

    def flush(self) -> None:
        """End of stream: the open utterance becomes a final (nothing said is dropped)."""
        utterance = self.segmenter.flush()
        if utterance is not None:
            self._submit_final(utterance)

    def withdraw(self) -> int:
        """Stop: queued finals are answered as withdrawn without a decode, and one being
        decoded is dropped when it returns; how many finals were queued. For a call that
        ended whose recording its post-call pass will transcribe: the worker's time goes
        to the calls still running, and both nodes keep the same live transcript."""
        self._withdrawn = True
        return self.engine.withdraw(self)

    # -- requests -----------------------------------------------------------------------

    def _submit_partial(self, frames: int) -> None:
        open_utt = self.segmenter.open_utterance()
        if open_utt is None:
            return
        number = self._utterance
        self._frames_at_partial = frames
        request = self._request(
            RequestKind.PARTIAL, open_utt, lambda o: self._partial_done(number, open_utt, o)
        )
        if self.engine.submit(request):
            self._partial_in_flight = True

    def _request(
        self, kind: RequestKind, utt: Utterance, on_done: Callable[[Outcome], None]
    ) -> Request:
        """A decode of this stream's audio, with its committed text as context."""
        return Request(
            kind,
            utt.audio,
            self.language,
            self.task,
            on_done,
            stream=self,
            label=self.label,
            prompt=self.context.text or None,
            prompt_language=self.context.language,
        )

    def _partial_done(self, number: int, utt: Utterance, o: Outcome) -> None:
        self._partial_in_flight = False
        if o.text is None or number != self._utterance or self._on_partial is None:
            return  # dropped, or its utterance has ended meanwhile: the final replaces it
        self.partials_shown += 1
        self._on_partial(number, o.text, utt.start_s, utt.end_s)

    def _submit_early(self, ending: Utterance) -> None:
        early = Early(ending)
        early.request = self._request(
            RequestKind.FINAL, ending, lambda o: self._early_done(early, o)
        )
        if self.engine.submit(early.request):
            self._early = early

    def _early_done(self, early: Early, o: Outcome) -> None:
        early.outcome = o
        if early.adopted is not None and not early.retracted:
            number, utt, spoke = early.adopted
            self._final_done(number, utt, o, spoke)

    def _retract(self) -> None:
        early, self._early = self._early, None
        if early is None:
            return
        early.retracted = True
        self.early_retracted += 1
        if early.request is not None:
            # Still queued: never decoded; decoded alone or with partials: stopped.
            self.engine.cancel(early.request)

    def _submit_final(self, utt: Utterance) -> None:
        early = self._early
        if early is not None and not early.holds(utt):
            self._retract()
            early = None
        self._early = None
        number = self._utterance
        self._utterance += 1
        self._frames_at_partial = 0
        if self._on_utterance is not None:
            self._on_utterance(number, utt)
        # When the speech ended, on this clock: the stream is now at the frame that closed
        # the utterance, its whole end silence after the speech (audio arrives in real
        # time). Not its end_s: that keeps only TRAILING_SILENCE_MS of the silence.
        spoke = time.monotonic() - (self.segmenter.now_s - (utt.speech_end_s or utt.end_s))
        if early is not None:
            early.adopted = (number, utt, spoke)
            self.early_adopted += 1
            if early.outcome is not None:  # decoded already: answered in turn on the hub
                self.engine.deliver(
                    lambda o: self._final_done(number, utt, o, spoke), early.outcome
                )
        else:
            request = self._request(
                RequestKind.FINAL, utt, lambda o: self._final_done(number, utt, o, spoke)
            )
            if not self.engine.submit(request):
                self.finals_rejected += 1
                return
        self._finals_pending += 1
        self.idle.clear()

    def _final_done(self, number: int, utt: Utterance, o: Outcome, spoke: float) -> None:
        try:
            if self._withdrawn:
                self.finals_dropped += 1
                self._on_final(number, [])
                return
            if o.segment is None:
                self.finals_dropped += 1
                self._last_text = ""  # nothing of it was committed: nothing to repeat
                d = o.decoded
                if o.dropped == Drop.ERROR or d is None:
                    log.error("%s: utterance %d failed to decode: %s", self.label, number, o.error)
                else:
                    log.info(
                        "%s: dropped utterance %d (%.1f-%.1f s) as %s (no_speech %.2f, "
                        "logprob %.2f, compression %.2f)",
                        self.label,
                        number,
                        utt.start_s,
                        utt.end_s,
                        o.dropped,
                        d.no_speech_prob or 0.0,
                        d.avg_logprob or 0.0,
                        d.compression_ratio or 0.0,
                    )
                self._on_final(number, [])
                return
            text = o.segment.text
            if utt.overlap_s > 0:
                text = without_repeat(self._last_text, text)
                if not text:
                    self.finals_dropped += 1
                    self._on_final(number, [])
                    return
            self._last_text = o.segment.text
            self.finals_committed += 1
            segment = replace(
                o.segment,
                text=text,
                start=round(utt.start_s + utt.overlap_s, 3),
                end=round(utt.end_s, 3),
            )
            self.context.add(segment.text, segment.language, o.temperature)
            self._on_final(number, [segment])  # committed when it returns
            self.engine.final_latency.observe(time.monotonic() - spoke)
        finally:
            self._finals_pending -= 1
            if self._finals_pending == 0:
                self.idle.set()

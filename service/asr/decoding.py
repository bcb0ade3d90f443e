"""Decoding a batch of requests with one Whisper model, read top-down from `decode_batch`:

1. `encode`: one log-mel (`batched_log_mel`) and one encoder pass for the whole batch; on a
   CPU, short audio is encoded over its own length and the rest of the window filled
   (service/asr/encoding.py), and decodes of those rows are checked before they are kept;
2. `detect_languages`: one pass for the items whose language is not given;
3. `group_items`: items decode together when they share a language, a task and a prompt
   length (the decoder's rows must be equally long), each with its own stream's committed
   text as prompt (`prompt_tokens`);
4. `decode_group`: batched greedy decoding, then temperature fallback only for the items
   whose checks failed (`settle` says, per try, whether an item is done).

Batching is what lets one model serve many calls on a GPU, where a batch costs about what
one item does; on a CPU a batch costs what its items cost one by one (see
`AsrEngine._load`). torch and whisper are imported on first use: importing them costs
seconds, and processes that never decode import this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.asr import filters
from service.asr.encoding import Features, PaddingFill
from service.asr.scheduler import Drop, Outcome, Preempted, Request, RequestKind
from service.vocab import Segment, Task

if TYPE_CHECKING:
    import torch

FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_SEED = 0
PROMPT_MAX_TOKENS = 32  # ~150 English characters: most streams share one length
PROMPT_TOKEN_STEP = 8  # prompt lengths are rounded down to this: see prompt_tokens()
MAX_SAMPLE_LEN = 224  # Whisper's own limit on the tokens one window may decode


def decode_batch(
    model: Any,
    batch: list[Request],
    device: str,
    fp16: bool,
    multilingual: bool,
    fill: PaddingFill | None = None,
) -> list[Outcome]:
    """One outcome per request, in order. `model` is a loaded ``whisper.model.Whisper``;
    `fill`: encode short audio the cheaper way (service/asr/encoding.py)."""
    import torch
    from whisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(multilingual, num_languages=model.num_languages)
    outcomes: dict[int, Outcome] = {}
    with torch.no_grad():
        features = encode(model, batch, device, fp16, fill, multilingual)
        languages = detect_languages(model, tokenizer, features.tensor, batch, multilingual)
        for group in group_items(batch, languages, tokenizer, multilingual):
            outcomes.update(decode_group(model, features, batch, group, fp16))
    return [outcomes.get(i, Outcome(dropped=Drop.ERROR)) for i in range(len(batch))]


def stop_when(model: Any, stop: Callable[[], bool]) -> None:
    """Make every decode of `model` raise `Preempted` as soon as `stop()` is true: it is
    asked before each encoder block and each decoder step (a few ms to a few tens of ms
    apart on a CPU), so a decode of partials gives the worker up to a final within one
    block instead of finishing (service/asr/scheduler.py). Whisper's own decoding loop
    removes its key/value cache hooks in a ``finally``, so a stopped decode leaves the
    model as it was."""

    def check(_module: Any, _args: Any) -> None:
        if stop():
            raise Preempted

    for block in model.encoder.blocks:
        block.register_forward_pre_hook(check)
    model.decoder.register_forward_pre_hook(check)


def encode(
    model: Any,
    batch: list[Request],
    device: str,
    fp16: bool,
    fill: PaddingFill | None = None,
    multilingual: bool = False,
) -> Features:
    """The encoder's features for every item of the batch: in one pass, or with `fill`
    row by row for short audio. An item whose language is to be detected is encoded in
    full: detection is not checked the way a decode is (`decode_group`)."""
    import torch
    from whisper.audio import SAMPLE_RATE

    mel = batched_log_mel([r.audio for r in batch], model.dims.n_mels, device)
    if fp16:
        mel = mel.half()
    if fill is None:
        return Features(model, mel, model.embed_audio(mel))
    seconds = [
        None if multilingual and r.language is None else r.audio.size / SAMPLE_RATE for r in batch
    ]
    approximate = fill.rows(mel, seconds)
    exact = [i for i in range(len(batch)) if i not in approximate]
    dims = model.dims
    shape = (len(batch), dims.n_audio_ctx, dims.n_audio_state)
    tensor = torch.empty(shape, dtype=mel.dtype, device=mel.device)
    if exact:
        tensor[exact] = model.embed_audio(mel[exact])
    for i, row in approximate.items():
        tensor[i] = row[0]
    return Features(model, mel, tensor, set(approximate))


def batched_log_mel(audios: list[np.ndarray], n_mels: int, device: str) -> torch.Tensor:
    """Whisper's log-mel for a batch of clips, each padded to its 30 s window.

    `whisper.log_mel_spectrogram` takes a batch but clamps to the batch-wide maximum; this
    clamps per clip, so an item's features do not depend on what it was batched with.
    """
    import torch
    import whisper
    from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, mel_filters

    batch = np.zeros((len(audios), N_SAMPLES), dtype=np.float32)
    for i, a in enumerate(audios):
        a = a[:N_SAMPLES]
        batch[i, : a.size] = a
    audio = torch.from_numpy(batch).to(device)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(audio.device, n_mels) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    mel = (log_spec + 4.0) / 4.0
    assert mel.shape[-1] == whisper.audio.N_FRAMES
    return mel


def detect_languages(
    model: Any, tokenizer: Any, features: torch.Tensor, batch: list[Request], multilingual: bool
) -> list[str]:
    """Each item's language: the one asked for, else the detected one (an English-only
    model speaks English)."""
    given = [r.language if multilingual else "en" for r in batch]
    unknown = [i for i, lang in enumerate(given) if lang is None]
    detected: dict[int, str] = {}
    if unknown:
        _, probs = model.detect_language(features[unknown], tokenizer)
        for i, p in zip(unknown, probs, strict=True):
            detected[i] = max(p, key=p.get)
    return [lang if lang is not None else detected[i] for i, lang in enumerate(given)]


@dataclass
class Group:
    """Items of a batch that decode together."""

    language: str
    task: Task
    items: list[int] = field(default_factory=list)  # indices into the batch
    prompts: list[list[int]] = field(default_factory=list)  # per item, all equally long


def group_items(
    batch: list[Request], languages: list[str], tokenizer: Any, multilingual: bool
) -> list[Group]:
    """The batch by (language, task, prompt length), in order of first appearance."""
    groups: dict[tuple[str, Task, int], Group] = {}
    for i, r in enumerate(batch):
        task = Task(r.task) if multilingual else Task.TRANSCRIBE
        # Text in another language than the one being decoded would only mislead.
        same = r.prompt_language in (None, languages[i])
        prompt = prompt_tokens(tokenizer, r.prompt) if same else []
        group = groups.setdefault((languages[i], task, len(prompt)), Group(languages[i], task))
        group.items.append(i)
        group.prompts.append(prompt)
    return list(groups.values())


def prompt_tokens(tokenizer: Any, text: str | None) -> list[int]:
    """The end of a stream's committed text as decoder context, in whole steps of
    PROMPT_TOKEN_STEP tokens (at most PROMPT_MAX_TOKENS).

    The decoder has learned positions, so items in one batch need prompts of one length.
    Rounding each prompt down on its own keeps a stream's decode independent of what it
    was batched with, while streams with a few sentences behind them share a length (and
    a batch).
    """
    if not text or not text.strip():
        return []
    tokens: list[int] = tokenizer.encode(" " + text.strip())
    keep = min(PROMPT_MAX_TOKENS, len(tokens) // PROMPT_TOKEN_STEP * PROMPT_TOKEN_STEP)
    return tokens[len(tokens) - keep :] if keep else []


@dataclass(frozen=True)
class Try:
    """One decode of one item: Whisper's ``DecodingResult`` and the temperature it took."""

    result: Any
    temperature: float


def decode_group(
    model: Any, features: Features, batch: list[Request], group: Group, fp16: bool
) -> dict[int, Outcome]:
    """Greedy decoding of the group, then each failed item again at the next temperature,
    until every item is settled. Only finals earn a second try: a partial is soon replaced
    anyway. An item on approximate features (service/asr/encoding.py) is kept from its
    greedy decode only when that decode is sound; else it starts again on exact ones."""
    from whisper.audio import SAMPLE_RATE

    durations = {i: batch[i].audio.size / SAMPLE_RATE for i in group.items}
    sample_len = min(MAX_SAMPLE_LEN, filters.max_tokens(max(durations.values())) + 1)
    prompts = dict(zip(group.items, group.prompts, strict=True))
    outcomes: dict[int, Outcome] = {}
    approximate = [i for i in group.items if i in features.approximate]
    if approximate:
        results = run_decoding(
            model,
            features.tensor[approximate],
            [prompts[i] for i in approximate],
            group.language,
            group.task,
            0.0,
            sample_len,
            fp16,
        )
        for i, result in zip(approximate, results, strict=True):
            if trusted(result, durations[i]):
                outcomes[i] = outcome(
                    batch[i], durations[i], Try(result, 0.0), None, group.language, 0
                )
        features.make_exact([i for i in approximate if i not in outcomes])
    unsure: dict[int, Try] = {}  # item -> its most confident try that failed only on logprob
    todo = [i for i in group.items if i not in outcomes]
    for step, temperature in enumerate((0.0, *FALLBACK_TEMPERATURES)):
        if not todo:
            break
        # A decode that failed the checks with context gets none on retry: a prompt can
        # pull the model into repeating it.
        rows = [prompts[i] for i in todo] if temperature == 0.0 else []
        results = run_decoding(
            model,
            features.tensor[todo],
            rows,
            group.language,
            group.task,
            temperature,
            sample_len,
            fp16,
        )
        retry = []
        for i, result in zip(todo, results, strict=True):
            done = Try(result, temperature)
            verdict = filters.judge(result, durations[i])
            if verdict.reason == "low_logprob":
                unsure[i] = more_confident(unsure.get(i), done)
            last = temperature == FALLBACK_TEMPERATURES[-1] or batch[i].kind == RequestKind.PARTIAL
            settled = settle(done, verdict, unsure.get(i), last)
            if settled is None:
                retry.append(i)
            else:
                kept, dropped = settled
                outcomes[i] = outcome(batch[i], durations[i], kept, dropped, group.language, step)
        if not retry:
            break
        todo = retry
    return outcomes


def trusted(result: Any, duration_s: float) -> bool:
    """Whether a greedy decode on approximate features is kept as it is: the filters keep
    it, the model is sure there is speech (below ``NO_SPEECH_THRESHOLD`` even where the
    filters would let a confident decode through), and it repeats no run of tokens."""
    return (
        filters.judge(result, duration_s).reason is None
        and result.no_speech_prob <= filters.NO_SPEECH_THRESHOLD
        and not filters.repeats_a_run(result.tokens)
    )


def run_decoding(
    model: Any,
    features: torch.Tensor,
    prompts: list[list[int]],
    language: str,
    task: Task,
    temperature: float,
    sample_len: int,
    fp16: bool,
) -> list[Any]:
    """One batched decode at one temperature; `prompts`: one row per item, or none."""
    import torch
    from whisper.decoding import DecodingOptions

    options = DecodingOptions(
        task=task,
        language=language,
        temperature=temperature,
        sample_len=sample_len,
        without_timestamps=True,
        fp16=fp16,
    )
    if temperature > 0:
        # Sampling draws on torch's global generator, which only the worker thread uses:
        # seeded, the same audio in the same batch always gets the same transcript, as a
        # greedy decode does.
        torch.manual_seed(FALLBACK_SEED)
    results: list[Any] = _prompted_decoding()(model, options, prompts).run(features)
    return results


def settle(
    done: Try, verdict: filters.Verdict, unsure: Try | None, last: bool
) -> tuple[Try, str | None] | None:
    """What an item's latest try comes to: None to try again at the next temperature, else
    the try to keep and why it is dropped (None: it is kept)."""
    if verdict.retry and not last:
        return None
    if verdict.reason is None:
        return done, None
    if verdict.retry and unsure is not None:
        # No try was sound and sure: keep the most confident sound one.
        return unsure, None
    return done, verdict.reason


def more_confident(best: Try | None, other: Try) -> Try:
    if best is None or other.result.avg_logprob > best.result.avg_logprob:
        return other
    return best


def outcome(
    request: Request,
    duration_s: float,
    kept: Try,
    dropped: str | None,
    language: str,
    fallbacks: int,
) -> Outcome:
    """The kept try as an outcome: its text cleaned, figures rounded, times within the audio."""
    res = kept.result
    return Outcome(
        decoded=Segment(
            start=0.0,
            end=round(duration_s, 3),
            text=filters.clean(res.text),
            language=language,
            task=Task(request.task),
            avg_logprob=round(float(res.avg_logprob), 4),
            no_speech_prob=round(float(res.no_speech_prob), 4),
            compression_ratio=round(float(res.compression_ratio), 4),
        ),
        dropped=dropped,
        temperature=kept.temperature,
        fallbacks=fallbacks,
    )


@functools.cache
def _prompted_decoding() -> type:
    """`whisper.decoding.DecodingTask` with a prompt per batch item (defined on first use:
    importing whisper costs seconds and this module is imported by processes that never
    decode)."""
    import dataclasses

    import torch
    from whisper.decoding import DecodingTask

    class PromptedDecoding(DecodingTask):
        """Whisper builds one row of initial tokens (<|startofprev|> prompt
        <|startoftranscript|> ...) and repeats it for every item; here each item's row
        carries its own prompt. The rows are equally long (the caller groups by prompt
        length), so all Whisper derives from the row length (where sampling begins, the
        key/value cache, the logit filters) holds."""

        def __init__(self, model: Any, options: Any, prompts: list[list[int]]) -> None:
            self._prompts = prompts if prompts and prompts[0] else None
            if self._prompts is not None:
                if len({len(p) for p in self._prompts}) != 1:
                    raise ValueError("the prompts of one batch must be equally long")
                options = dataclasses.replace(options, prompt=list(self._prompts[0]))
            super().__init__(model, options)

        def _main_loop(self, audio_features: torch.Tensor, tokens: torch.Tensor) -> Any:
            if self._prompts is not None:
                head = [[self.tokenizer.sot_prev, *p] for p in self._prompts]
                rows = torch.tensor(head).repeat_interleave(self.n_group, dim=0)
                tokens = torch.cat([rows.to(tokens.device), tokens[:, len(head[0]) :]], dim=1)
            return super()._main_loop(audio_features, tokens)

    return PromptedDecoding

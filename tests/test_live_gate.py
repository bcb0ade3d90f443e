"""The live path's level handling and its cut overlap, without a model: the gain stage in
front of the VAD (service/asr/vad.py) and the words a cut's overlap repeats
(service/asr/stream.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scaled_to

from service.asr.segmenter import Segmenter, SegmenterConfig
from service.asr.stream import without_repeat
from service.asr.vad import LevelledVad, SileroVad
from service.audio.wavfile import read_wav
from service.frames import FRAME_SAMPLES


def frames(pcm: np.ndarray):
    for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        yield pcm[i : i + FRAME_SAMPLES]


def covered_s(config: SegmenterConfig, pcm: np.ndarray) -> float:
    seg = Segmenter(config)
    utts = [u for f in frames(pcm) if (u := seg.push(f)) is not None]
    if (u := seg.flush()) is not None:
        utts.append(u)
    return sum(u.end_s - u.start_s for u in utts)


def test_the_gain_stage_lets_the_vad_hear_a_quiet_talker(speech_dir):
    """JFK at -60 dBFS (his recording's hiss scaled down with him): Silero alone hears a
    fraction of it, behind the gain stage nearly all of it, as it does at full level."""
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    quiet = scaled_to(pcm, -60.0)
    loud = covered_s(SegmenterConfig(), pcm)
    assert covered_s(SegmenterConfig(vad_gain_db=0), quiet) < 0.6 * loud
    assert covered_s(SegmenterConfig(vad_gain_db=30), quiet) > 0.9 * loud


def test_the_gain_is_bounded_and_never_clips_an_onset():
    vad = LevelledVad(SileroVad(), max_gain_db=30)
    for _ in range(100):  # digital silence: the most gain, on nothing
        vad.is_speech(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    assert vad.gain == pytest.approx(10 ** (30 / 20))
    loud = (np.sin(np.arange(FRAME_SAMPLES) / 3) * 8000).astype(np.int16)  # about -15 dBFS
    vad.is_speech(loud)
    assert vad.gain == 1.0  # its own level sets the gain at once: no 30 dB onset


@pytest.mark.parametrize(
    ("previous", "text", "kept"),
    [
        ("and so, my fellow Americans,", "Americans, ask not", "ask not"),
        ("ask not what your country", "what your country can do", "can do"),
        ("ask not", "what your country can do", "what your country can do"),
        ("", "what your country", "what your country"),
        ("can do for you.", "For you.", ""),
        ("it is the end", "The End of it", "of it"),
    ],
)
def test_the_words_a_cut_repeats_are_dropped_once(previous, text, kept):
    assert without_repeat(previous, text) == kept


class Result:
    """The figures of a whisper DecodingResult that the filters read."""

    def __init__(self, text: str, tokens: int, avg_logprob: float, no_speech_prob: float):
        self.text, self.tokens = text, list(range(100, 100 + tokens))
        self.avg_logprob, self.no_speech_prob = avg_logprob, no_speech_prob
        self.compression_ratio = 1.0


def test_a_stray_word_out_of_seconds_of_chatter_is_dropped():
    """What tiny.en made of 15 s of eight talkers at -45 dBFS ("and", logprob -2.4,
    no-speech 0.58: under Whisper's own rule) is dropped; a sure or a short answer is not."""
    from service.asr import filters

    assert filters.judge(Result("and", 1, -2.38, 0.58), 15.0).reason == "sparse"
    assert filters.judge(Result("and", 1, -0.3, 0.1), 15.0).reason is None  # sure of it
    assert filters.judge(Result("Yes.", 2, -1.2, 0.3), 1.5).reason == "low_logprob"  # retried
    said = "ask not what your country can do for you ask what you can do for your country"
    many = Result(said, 20, -1.2, 0.3)
    assert filters.judge(many, 15.0).reason == "low_logprob"  # hard speech: not sparse

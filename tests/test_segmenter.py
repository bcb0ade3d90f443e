"""Utterance segmentation: speech becomes utterances at its pauses; silence and noise
become nothing at all."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.asr.segmenter import TRAILING_SILENCE_MS, Segmenter, SegmenterConfig
from service.audio.wavfile import read_wav
from service.frames import FRAME_MS, FRAME_SAMPLES


def run(segmenter, pcm):
    out = []
    for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        u = segmenter.push(pcm[i : i + FRAME_SAMPLES])
        if u:
            out.append(u)
    if (u := segmenter.flush()) is not None:
        out.append(u)
    return out


@pytest.mark.parametrize("vad", ["silero", "webrtc"])
def test_silence_and_low_noise_produce_no_utterance(vad):
    config = SegmenterConfig(vad=vad)
    assert run(Segmenter(config), np.zeros(16_000 * 60, dtype=np.int16)) == []
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 200, 16_000 * 60).astype(np.int16)
    assert run(Segmenter(config), noise) == []


def test_silero_ignores_loud_noise_that_webrtcvad_takes_for_speech():
    """The reason Silero is the default (figures: scripts/bench_vad.py, README)."""
    noise = np.random.default_rng(5).normal(0, 4000, 16_000 * 20).astype(np.int16)
    assert run(Segmenter(SegmenterConfig(vad="silero")), noise) == []
    assert run(Segmenter(SegmenterConfig(vad="webrtc")), noise) != []


def test_an_open_utterance_can_be_read_while_it_grows(speech_dir):
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    seg = Segmenter()
    assert seg.open_utterance() is None
    for i in range(0, pcm.size - FRAME_SAMPLES, FRAME_SAMPLES):
        seg.push(pcm[i : i + FRAME_SAMPLES])
        if seg.open_frames >= 75:  # 1.5 s into an utterance
            break
    open_utt = seg.open_utterance()
    assert open_utt is not None
    assert abs(open_utt.audio.size / 16_000 - (open_utt.end_s - open_utt.start_s)) < 0.021


def test_speech_is_cut_into_utterances_that_cover_it(speech_dir):
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    lead = np.zeros(16_000, dtype=np.int16)
    utts = run(Segmenter(), np.concatenate([lead, pcm, np.zeros(16_000, dtype=np.int16)]))
    assert len(utts) >= 2
    assert utts[0].start_s >= 0.7  # nothing long before the speech (1 s lead-in, 0.3 s pre-roll)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(utts))
    assert utts[-1].end_s >= 10.5  # the last words are kept
    for u in utts:
        assert u.audio.dtype == np.float32
        assert abs(u.audio.size / 16_000 - (u.end_s - u.start_s)) < 0.021


def test_long_speech_is_cut_at_the_maximum_length(speech_dir):
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    utts = run(Segmenter(SegmenterConfig(max_utterance_s=3.0, end_silence_ms=2000)), pcm)
    assert len(utts) >= 3
    assert all(u.end_s - u.start_s <= 3.0 + 1e-6 for u in utts)


def test_a_cut_keeps_the_end_of_one_utterance_and_the_start_of_the_next(speech_dir):
    """At the maximum length the next utterance starts cut_overlap_ms before the cut, so
    a word the cut splits is heard whole in one of the two (the stream drops the words
    they then share); the cut itself lands in a quiet stretch."""
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    config = SegmenterConfig(max_utterance_s=3.0, end_silence_ms=2000, cut_overlap_ms=400)
    utts = run(Segmenter(config), pcm)
    assert len(utts) >= 3
    assert utts[0].overlap_s == 0.0
    for before, after in itertools.pairwise(utts):
        if after.overlap_s == 0.0:
            assert after.start_s >= before.end_s  # a pause ended it: nothing shared
            continue
        assert after.overlap_s == pytest.approx(0.4)
        assert after.start_s == pytest.approx(before.end_s - 0.4)
        shared = round(0.4 * 16_000)
        np.testing.assert_array_equal(before.audio[-shared:], after.audio[:shared])
    assert any(u.overlap_s for u in utts)
    assert all(u.end_s - u.start_s <= 3.0 + 1e-6 for u in utts)


def test_a_very_short_maximum_length_still_cuts(speech_dir):
    # IM_MAX_UTTERANCE_S takes any positive number: at 0.2 s the last third of an utterance
    # (3 frames) is shorter than the cut's smoothing window (CUT_SMOOTH_FRAMES), which made
    # the cut raise on every long stretch of speech.
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    utterances = run(Segmenter(SegmenterConfig(max_utterance_s=0.2)), pcm)
    assert len(utterances) > 10
    assert all(u.end_s - u.start_s <= 0.2 + 1e-6 for u in utterances)


def test_an_utterance_ended_by_silence_was_offered_before_as_its_tentative_end(speech_dir):
    """`tentative_end` comes once the silence reaches what an utterance keeps of it, with
    the very audio `push` returns when the end silence closes it (the early final of
    service/asr/stream.py is decoded from it); a pause that speech follows gets one too,
    which the utterance outgrows."""
    pcm = read_wav(speech_dir / "en_jfk_inaugural_1961.wav")
    gap = np.zeros(16_000, dtype=np.int16)
    pcm = np.concatenate([gap, pcm, gap])
    seg = Segmenter()
    offered, ended = [], []
    for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if (u := seg.push(pcm[i : i + FRAME_SAMPLES])) is not None:
            ended.append(u)
        elif (t := seg.tentative_end()) is not None:
            assert seg.silent_frames == TRAILING_SILENCE_MS // FRAME_MS
            offered.append(t)
    assert len(ended) >= 2, "the test needs several utterances"
    assert len(offered) > len(ended), "and a pause that speech followed"
    for u in ended:
        same = [t for t in offered if t.start_s == u.start_s and t.audio.size == u.audio.size]
        assert len(same) == 1
        assert np.array_equal(same[0].audio, u.audio)
        assert (same[0].end_s, same[0].speech_end_s) == (u.end_s, u.speech_end_s)

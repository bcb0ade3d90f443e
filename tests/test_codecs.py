"""service.audio.codecs on real speech: Opus, as a call sends it (the node's own encoder:
16-24 kbit/s, no in-band FEC, complexity 5), keeps it intelligible.

Waveform SNR is a poor judge of a speech codec (SILK does not keep phase), so the figures
here are the ones a listener's experience tracks: the spectrogram and loudness contour, and,
in the slow test, what Whisper hears in the decoded audio versus the original.
"""

from __future__ import annotations

from pathlib import Path

import jiwer
import numpy as np
import pytest
from helpers import call_encoder, reference

from service.audio.codecs import (
    CODECS,
    CodecError,
    OpusDecoder,
    OpusEncoder,
    codec_name,
    make_decoder,
    make_encoder,
)
from service.audio.wavfile import read_wav
from service.frames import FRAME_SAMPLES, SAMPLE_RATE
from service.transport.protocol import Codec

CLIPS = [
    "en_arctic_prompts_cathy_b0006.wav",
    "en_arctic_prompts_cathy_b0030.wav",
    "en_arctic_prompts_cathy_b0054.wav",
    "en_jfk_inaugural_1961.wav",
]


def load(speech_dir: Path, name: str) -> np.ndarray:
    pcm = read_wav(speech_dir / name)
    return pcm[: pcm.size // FRAME_SAMPLES * FRAME_SAMPLES]


def round_trip(pcm: np.ndarray, **env: str) -> tuple[np.ndarray, list[bytes]]:
    """Through the encoder a call with settings ``env`` sends with, and a decoder."""
    enc, dec = call_encoder(**env), OpusDecoder()
    packets = [enc.encode(f) for f in pcm.reshape(-1, FRAME_SAMPLES)]
    return np.concatenate([dec.decode(p) for p in packets]), packets


def align(ref: np.ndarray, out: np.ndarray, max_lag: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Undo the codec's delay (found by cross-correlation, not assumed)."""
    r, o = ref.astype(np.float64), out.astype(np.float64)
    lag = max(range(max_lag), key=lambda k: float(np.dot(r[: r.size - k], o[k:])))
    return r[: r.size - lag], o[lag:]


def log_spectrogram(x: np.ndarray) -> np.ndarray:
    n = x.size // 320 * 320
    frames = x[:n].reshape(-1, 320) * np.hanning(320)
    return 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e2)


def figures(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a, b = align(ref, out)
    sa, sb = log_spectrogram(a), log_spectrogram(b)
    # Speech frames only (within 30 dB of the loudest), each bin floored 50 dB below its
    # frame's peak: how a codec renders near-silence is inaudible and says nothing.
    speech = sa.max(axis=1) > sa.max() - 30
    sa, sb = sa[speech], sb[speech]
    floor = sa.max(axis=1, keepdims=True) - 50
    sa, sb = np.maximum(sa, floor), np.maximum(sb, floor)
    return {
        "snr_db": float(10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2))),
        "spectral_corr": float(np.corrcoef(sa.ravel(), sb.ravel())[0, 1]),
        "log_spectral_distance_db": float(np.mean(np.sqrt(np.mean((sa - sb) ** 2, axis=1)))),
        "loudness_corr": float(np.corrcoef(sa.mean(axis=1), sb.mean(axis=1))[0, 1]),
    }


@pytest.mark.parametrize("bitrate", [16_000, 20_000, 24_000])
@pytest.mark.parametrize("frame_ms", [20, 10])
def test_opus_round_trip_keeps_speech(speech_dir: Path, bitrate: int, frame_ms: int) -> None:
    total_bytes = total_s = 0.0
    for clip in CLIPS:
        pcm = load(speech_dir, clip)
        out, packets = round_trip(pcm, IM_OPUS_BITRATE=str(bitrate), IM_OPUS_FRAME_MS=str(frame_ms))
        assert out.dtype == np.int16 and out.size == pcm.size
        f = figures(pcm, out)
        print(clip, bitrate, frame_ms, {k: round(v, 3) for k, v in f.items()})
        assert f["spectral_corr"] > 0.9, f
        assert f["log_spectral_distance_db"] < 6, f
        assert f["loudness_corr"] > 0.97, f
        assert f["snr_db"] > 3, f  # not a codec target, but garbage would be near 0 or below
        # Every packet is SILK wideband (TOC configs 8-11): nothing fell back to 4-6 kHz.
        assert {p[0] >> 3 for p in packets} <= {8, 9, 10, 11}, sorted({p[0] >> 3 for p in packets})
        total_bytes += sum(len(p) for p in packets)
        total_s += pcm.size / SAMPLE_RATE
    kbps = total_bytes * 8 / total_s / 1000
    print(f"{bitrate} bit/s, {frame_ms} ms frames: {kbps:.1f} kbit/s measured")
    assert kbps <= 32
    assert 0.75 * bitrate / 1000 <= kbps <= 1.15 * bitrate / 1000 + (2 if frame_ms == 10 else 0)


def test_a_call_sends_no_fec_so_a_lost_frame_is_concealed_from_the_past(
    speech_dir: Path,
) -> None:
    """TCP loses nothing, so the node sends Opus without in-band FEC (bits no receiver could
    use). The packet after a missing one then holds no copy of it: decoding that packet for
    FEC gives exactly plain concealment, which still comes closer to the missing speech than
    silence would (0 dB)."""
    pcm = load(speech_dir, "en_jfk_inaugural_1961.wav")
    enc = call_encoder()
    packets = [enc.encode(f) for f in pcm.reshape(-1, FRAME_SAMPLES)]
    clean_dec = OpusDecoder()
    clean = [clean_dec.decode(p) for p in packets]
    lost = set(range(20, len(packets) - 1, 15))
    concealed: dict[str, list[np.ndarray]] = {}
    for mode in ("next packet", "none"):
        dec = OpusDecoder()
        concealed[mode] = []
        for i, packet in enumerate(packets):
            if i in lost:
                concealed[mode].append(dec.conceal(packets[i + 1] if mode != "none" else None))
            else:
                dec.decode(packet)
    for with_next, without in zip(concealed["next packet"], concealed["none"], strict=True):
        assert np.array_equal(with_next, without), "the node's packets carry an FEC copy"
    refs = [clean[i].astype(np.float64) for i in sorted(lost)]
    signal = sum(float(np.sum(r**2)) for r in refs)
    error = sum(float(np.sum((r - g) ** 2)) for r, g in zip(refs, concealed["none"], strict=True))
    snr = 10 * np.log10(signal / error)
    print(f"concealed lost frames against the clean decode: {snr:.2f} dB SNR")
    assert snr > 0.5, snr


def test_pcm16_is_exact_and_checks_its_input() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(-32768, 32767, FRAME_SAMPLES, dtype=np.int16)
    enc, dec = make_encoder("pcm16"), make_decoder("pcm16")
    payload = enc.encode(frame)
    assert len(payload) == 640 and np.array_equal(dec.decode(payload), frame)
    assert not dec.conceals and not np.any(dec.conceal())
    with pytest.raises(CodecError, match="640"):
        dec.decode(payload[:-2])
    with pytest.raises(CodecError, match="int16"):
        enc.encode(frame.astype(np.float32))
    with pytest.raises(CodecError, match="320"):
        enc.encode(frame[:160])


def test_opus_refuses_bad_settings_and_bad_packets() -> None:
    for bad in ({"bitrate": 8000}, {"bitrate": 64000}, {"frame_ms": 40}, {"complexity": 11}):
        with pytest.raises(CodecError):
            OpusEncoder(**bad)
    with pytest.raises(CodecError, match="no options"):
        make_encoder("pcm16", bitrate=20000)
    dec = OpusDecoder()
    with pytest.raises(CodecError, match="empty"):
        dec.decode(b"")
    with pytest.raises(CodecError):
        dec.decode(b"\xff" * 3)  # a code-3 packet that claims more than it holds
    # A decoder that has seen a bad packet still decodes good ones.
    enc = OpusEncoder()
    t = np.arange(FRAME_SAMPLES * 5) / SAMPLE_RATE
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).reshape(-1, FRAME_SAMPLES)
    outs = [dec.decode(enc.encode(f)) for f in tone]
    assert float(np.abs(outs[-1]).max()) > 3000


def test_codec_names_from_strings_and_wire_enums() -> None:
    """Every codec the wire can name (protocol.Codec, what an Audio message carries) is one
    this module encodes and decodes, under the same name, and no other."""
    assert {c.name.lower() for c in Codec} == set(CODECS)
    for codec in Codec:
        assert codec_name(codec) == codec.name.lower()
        assert make_decoder(codec).name == codec.name.lower()
        assert make_encoder(codec).name == codec.name.lower()
    assert codec_name("PCM16") == "pcm16" and codec_name("opus") == "opus"
    with pytest.raises(CodecError, match="unknown codec"):
        codec_name("g711")


@pytest.mark.slow
def test_whisper_hears_opus_speech_as_well_as_the_original(
    speech_dir: Path, model_dir: Path
) -> None:
    """The transcriber on the receiving side (when the peer does not transcribe) hears the
    decoded audio: as a call sends it by default its word error rate must stay close to that
    of the uncompressed clip."""
    from whisper.normalizers import EnglishTextNormalizer

    from service.asr.weights import load_model

    model = load_model("tiny.en", model_dir, "cpu")
    normalize = EnglishTextNormalizer()
    refs, originals, decoded = [], [], []
    for clip in CLIPS:
        pcm = load(speech_dir, clip)
        out, _ = round_trip(pcm)
        for audio, bucket in ((pcm, originals), (out, decoded)):
            result = model.transcribe(
                audio.astype(np.float32) / 32768, language="en", fp16=False, temperature=0.0
            )
            bucket.append(normalize(result["text"]))
        refs.append(normalize(reference(speech_dir, clip)))
    wer_original = jiwer.wer(refs, originals)
    wer_opus = jiwer.wer(refs, decoded)
    print(f"WER original {wer_original:.3f}, Opus as a call sends it {wer_opus:.3f}")
    assert wer_opus <= wer_original + 0.05, list(zip(refs, decoded, strict=True))

"""Splitting one side's audio into utterances with a voice activity detector.

Whisper is a 30-second-window model: fed a continuous stream it hallucinates on silence and
cannot say when a sentence is final. Cutting at pauses gives it whole utterances, keeps
silence from ever reaching it, and gives each segment a natural end time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from service.asr.vad import Vad, make_vad
from service.frames import FRAME_MS, FRAME_SAMPLES, to_float32

# Of the silence that closes an utterance, this much is kept with it: Whisper places the
# final word better with a little silence after it.
TRAILING_SILENCE_MS = 200
CUT_SMOOTH_FRAMES = 5  # a cut goes in the quietest 100 ms, not in one quiet frame of a word


@dataclass(frozen=True)
class Utterance:
    start_s: float  # seconds from the start of the stream
    end_s: float
    audio: np.ndarray  # float32 mono 16 kHz, pre-roll included
    speech_end_s: float | None = None  # end of the last voiced frame (for latency figures)
    # After a cut at the maximum length: how much of the start (seconds) is the end of the
    # utterance before, given again so that a word the cut split is heard whole in one of
    # them (service/asr/stream.py drops the words the two then share).
    overlap_s: float = 0.0


@dataclass(frozen=True)
class SegmenterConfig:
    vad: str = "silero"  # "silero" | "webrtc": see service/asr/vad.py and the README
    aggressiveness: int = 2  # webrtcvad only
    silero_threshold: float = 0.5  # Silero only: speech probability that counts as voiced
    silero_hysteresis: float = 0.0  # Silero only: in speech, voiced down to threshold - this
    vad_gain_db: float = 30.0  # most gain before the VAD (vad.LevelledVad); 0: none
    end_silence_ms: int = 500  # this much non-speech closes an utterance
    max_utterance_s: float = 15.0
    pre_roll_ms: int = 300  # kept before the trigger so first syllables are not cut
    start_window: int = 5  # frames looked at to decide speech has started ...
    start_voiced: int = 4  # ... and how many of them must be voiced
    min_speech_ms: int = 200  # shorter bursts (clicks, coughs) are discarded
    cut_overlap_ms: int = 500  # at a cut, the next utterance starts this much before it

    def make_vad(self) -> Vad:
        """A fresh VAD as this configuration hears speech, gain stage included: the
        post-call pass listens to a recording with the one the live path used, so that a
        quiet or whispered side it captioned is not silence to the pass."""
        return make_vad(
            self.vad,
            self.aggressiveness,
            self.silero_threshold,
            hysteresis=self.silero_hysteresis,
            max_gain_db=self.vad_gain_db,
        )


class Segmenter:
    """Feed 20 ms frames in order; get an Utterance back when one ends.

    The maximum length cuts at the quietest recent frame rather than mid-word, so a long
    monologue becomes sentences instead of chopped syllables.
    """

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = c = config or SegmenterConfig()
        self._vad = c.make_vad()
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(1, c.pre_roll_ms // FRAME_MS))
        self._recent: deque[bool] = deque(maxlen=c.start_window)
        self._frames: list[np.ndarray] = []
        self._voiced: list[bool] = []  # per open frame: did the VAD call it speech
        self._overlap_frames = 0  # of the open utterance: repeated from the one before
        self._voiced_frames = 0
        self._silent_run = 0
        self._start_frame = 0  # frame index of the utterance's first kept frame
        self._frame_index = 0
        self._last_voiced = 0  # frame index of the newest voiced frame
        self._end_frames = max(1, c.end_silence_ms // FRAME_MS)
        self._max_frames = int(c.max_utterance_s * 1000 / FRAME_MS)
        self._trail_frames = TRAILING_SILENCE_MS // FRAME_MS

    @property
    def in_speech(self) -> bool:
        return bool(self._frames)

    @property
    def open_frames(self) -> int:
        """Frames of the utterance in progress (0 when none is open)."""
        return len(self._frames)

    def open_utterance(self) -> Utterance | None:
        """The utterance in progress as it stands, for a provisional (partial) transcript."""
        if not self._frames:
            return None
        keep = self._kept_frames()
        return Utterance(
            start_s=self._start_frame * FRAME_MS / 1000,
            end_s=(self._start_frame + keep) * FRAME_MS / 1000,
            audio=to_float32(np.concatenate(self._frames[:keep])),
        )

    @property
    def now_s(self) -> float:
        """Where the stream is: the end of the newest frame pushed, in stream seconds."""
        return self._frame_index * FRAME_MS / 1000

    @property
    def silent_frames(self) -> int:
        """Non-speech frames since the open utterance's last voiced one (0 when none is open)."""
        return self._silent_run if self._frames else 0

    def tentative_end(self) -> Utterance | None:
        """The open utterance as it will end if no speech follows, offered at the one frame
        where its silence reaches TRAILING_SILENCE_MS; otherwise None.

        From that frame on its audio is fixed: either a voiced frame comes and the
        utterance goes on, or the end silence closes it and `push` returns this very audio.
        A final decoded from it now is ready up to end_silence_ms - TRAILING_SILENCE_MS
        sooner (service/asr/stream.py). None too when it will not be one (too little
        speech) or will be cut at the maximum length first.
        """
        c = self.config
        if (
            not self._frames
            or self._silent_run != self._trail_frames
            or self._silent_run >= self._end_frames
            or self._voiced_frames * FRAME_MS < c.min_speech_ms
            or len(self._frames) + self._end_frames - self._silent_run >= self._max_frames
        ):
            return None
        return self._utterance(self._frames, self._start_frame, self._overlap_frames)

    def push(self, pcm: np.ndarray) -> Utterance | None:
        if pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected one {FRAME_MS} ms frame of {FRAME_SAMPLES} samples")
        index = self._frame_index
        self._frame_index += 1
        voiced = self._vad.is_speech(pcm)
        if voiced:
            self._last_voiced = index

        if not self._frames:
            self._recent.append(voiced)
            if sum(self._recent) >= self.config.start_voiced:
                self._frames = [*self._pre_roll, pcm]
                self._voiced = [False] * len(self._pre_roll) + [True]
                self._start_frame = index - len(self._pre_roll)
                self._voiced_frames = sum(self._recent)
                self._silent_run = 0
                self._pre_roll.clear()
                self._recent.clear()
            else:
                self._pre_roll.append(pcm)
            return None

        self._frames.append(pcm)
        self._voiced.append(voiced)
        if voiced:
            self._voiced_frames += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._end_frames:
            return self._emit(self._kept_frames())
        if len(self._frames) >= self._max_frames:
            return self._emit(self._cut_point(), carry_rest=True)
        return None

    def flush(self) -> Utterance | None:
        """End of stream: whatever is open is an utterance (nothing said is dropped)."""
        if not self._frames:
            return None
        return self._emit(self._kept_frames())

    def _kept_frames(self) -> int:
        """The open utterance's frames less its trailing silence beyond TRAILING_SILENCE_MS."""
        return len(self._frames) - max(0, self._silent_run - self._trail_frames)

    def _cut_point(self) -> int:
        """The best available pause in the last third: the middle of its quietest 100 ms
        (mean absolute level over CUT_SMOOTH_FRAMES), among the frames the VAD called
        non-speech when it called any such."""
        frames = self._frames
        lo = len(frames) * 2 // 3
        energy = np.array([float(np.mean(np.abs(f.astype(np.int32)))) for f in frames[lo:]])
        smooth = energy  # fewer frames than the window (a tiny IM_MAX_UTTERANCE_S): as they are
        if energy.size >= CUT_SMOOTH_FRAMES:  # "same" would return the window's length
            smooth = np.convolve(energy, np.ones(CUT_SMOOTH_FRAMES) / CUT_SMOOTH_FRAMES, "same")
        quiet = ~np.array(self._voiced[lo:])
        if quiet.any():
            smooth = np.where(quiet, smooth, np.inf)
        return lo + int(np.argmin(smooth)) + 1

    def _emit(self, keep: int, carry_rest: bool = False) -> Utterance | None:
        frames, rest = self._frames[:keep], self._frames[keep:]
        flags = self._voiced
        start = self._start_frame
        voiced = self._voiced_frames
        overlap = self._overlap_frames
        self._frames = []
        self._voiced = []
        self._overlap_frames = 0
        self._voiced_frames = 0
        self._silent_run = 0
        if carry_rest and rest:
            # The words after the cut continue straight into the next utterance, which
            # starts cut_overlap_ms before the cut (within what this one holds beyond
            # its own overlap, so the repeat never grows from one cut to the next).
            back = min(self.config.cut_overlap_ms // FRAME_MS, keep - overlap - 1)
            back = max(0, back)
            self._frames = frames[keep - back :] + rest
            self._voiced = flags[keep - back :]
            self._overlap_frames = back
            self._start_frame = start + keep - back
            self._voiced_frames = len(rest)
        if voiced * FRAME_MS < self.config.min_speech_ms:
            return None
        return self._utterance(frames, start, overlap)

    def _utterance(self, frames: list[np.ndarray], start: int, overlap: int) -> Utterance:
        end = start + len(frames)
        return Utterance(
            start_s=start * FRAME_MS / 1000,
            end_s=end * FRAME_MS / 1000,
            audio=to_float32(np.concatenate(frames)),
            speech_end_s=min(self._last_voiced + 1, end) * FRAME_MS / 1000,
            overlap_s=overlap * FRAME_MS / 1000,
        )

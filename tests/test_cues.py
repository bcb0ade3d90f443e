"""Subtitle cues from word timings (service/api/cues.py), and SRT/WebVTT of a final revision
built from them (service/api/formats.py): the limits of common subtitle practice."""

from __future__ import annotations

from datetime import UTC, datetime

from service.api import formats
from service.api.cues import MAX_CUE_S, MAX_LINE_CHARS, MIN_CUE_S, split_cues, wrap
from service.store.models import SegmentRow


def words(text: str, start: float = 0.0, step: float = 0.3, gaps: dict[int, float] | None = None):
    """One word every ``step`` seconds (each lasting most of it); ``gaps``: extra silence
    before word i."""
    out, t = [], start
    for i, w in enumerate(text.split()):
        t += (gaps or {}).get(i, 0.0)
        out.append({"word": " " + w, "start": round(t, 3), "end": round(t + step * 0.8, 3)})
        t += step
    return out


def check_limits(cues, reserve: int = 0) -> None:
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2, cue
        assert reserve + len(cue.lines[0]) <= MAX_LINE_CHARS, cue
        assert all(len(line) <= MAX_LINE_CHARS for line in cue.lines), cue
        assert cue.end - cue.start <= MAX_CUE_S + 1e-9, cue
        assert cue.start <= cue.end


def test_a_short_sentence_is_one_cue_of_one_line_timed_by_its_words():
    cues = split_cues(words("He understood the meaning of the look.", start=2.0))
    assert len(cues) == 1
    assert cues[0].lines == ("He understood the meaning of the look.",)
    assert cues[0].start == 2.0 and abs(cues[0].end - (2.0 + 6 * 0.3 + 0.24)) < 1e-9


def test_a_long_stretch_of_speech_is_split_into_cues_of_two_lines_of_42_characters():
    text = (
        "it was not so much the loss of the continent itself but the fantasy the hopes "
        "the dreams built around it that had been the real treasure of his youth and now "
        "that it was gone nothing was left to him but the plain grey road ahead"
    )
    ws = words(text, step=0.2)  # fast speech, no pause, no punctuation: only the limits cut
    cues = split_cues(ws)
    assert len(cues) >= 3  # about 215 characters: three cues of two full lines
    check_limits(cues)
    # Every word is shown once, in order.
    assert " ".join(" ".join(c.lines) for c in cues).split() == text.split()


def test_no_cue_stays_on_screen_longer_than_7_seconds():
    ws = words("one two three four five six seven eight nine ten eleven twelve", step=1.0)
    cues = split_cues(ws)  # 12 s of slow words: short text, but too long a time
    assert len(cues) >= 2
    check_limits(cues)


def test_a_sentence_end_starts_a_new_cue():
    cues = split_cues(words("Gregson held a lighted match. It burnt his fingertips."))
    assert [c.lines for c in cues] == [
        ("Gregson held a lighted match.",),
        ("It burnt his fingertips.",),
    ]


def test_a_pause_starts_a_new_cue():
    cues = split_cues(words("so we met on the bridge and then we walked home", gaps={6: 0.8}))
    assert [" ".join(c.lines) for c in cues] == [
        "so we met on the bridge",
        "and then we walked home",
    ]


def test_a_sentence_end_too_early_does_not_make_a_flash_cue():
    # "Yes." lasts 0.24 s: shorter than MIN_CUE_S, so the next sentence joins it.
    cues = split_cues(words("Yes. I will come tomorrow."))
    assert len(cues) == 1


def test_a_short_cue_is_held_a_second_but_never_over_the_next_one():
    alone = split_cues([{"word": " Yes.", "start": 5.0, "end": 5.2}])
    assert alone[0].end - alone[0].start == MIN_CUE_S
    two = split_cues(
        [
            {"word": " Yes.", "start": 5.0, "end": 5.2},
            {"word": " Right.", "start": 5.9, "end": 6.1},  # after a 0.7 s pause
        ]
    )
    assert len(two) == 1 or two[0].end <= two[1].start


def test_a_full_cue_is_cut_after_a_comma_rather_than_mid_phrase():
    text = (
        "when the train finally came into the station, everyone on the platform rushed "
        "forward at once"
    )
    cues = split_cues(words(text, step=0.15))
    check_limits(cues)
    assert cues[0].lines[-1].endswith("station,")


def test_the_first_line_leaves_room_for_the_speaker_label():
    text = "the quick brown fox jumps over the lazy dog again and again today"
    reserve = len("Remote: ")
    cues = split_cues(words(text, step=0.1), reserve)
    check_limits(cues, reserve)


def test_wrap_balances_two_lines_and_refuses_what_does_not_fit():
    assert wrap(["a"] * 5) == ("a a a a a",)
    sentence = "the meaning of the look was clear to everyone in the room"
    two = wrap(sentence.split(" "))
    assert two is not None and len(two) == 2
    assert abs(len(two[0]) - len(two[1])) <= 8
    assert wrap(["word"] * 30) is None  # 149 characters: more than two lines
    assert wrap(["x" * 60]) == ("x" * 60,)  # one over-long word is a line of its own


def _row(speaker: str, ws: list[dict], revision: str = "final") -> SegmentRow:
    return SegmentRow(
        id=1,
        call_id="c",
        speaker=speaker,
        number=0,
        start_s=ws[0]["start"],
        end_s=ws[-1]["end"],
        text=" ".join(w["word"].strip() for w in ws),
        revision=revision,
        words=ws,
        live_missed=False,
        created_at=datetime.now(UTC),
    )


def test_srt_and_vtt_of_a_final_revision_follow_the_words():
    ws = words("Gregson held a lighted match. It burnt his fingertips <b>badly</b>.", start=61.0)
    row = _row("remote", ws)
    srt = formats.as_srt([row])
    blocks = srt.strip().split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines()[:3] == [
        "1",
        "00:01:01,000 --> 00:01:02,440",
        "Remote: Gregson held a lighted match.",
    ]
    assert "<" not in srt  # still escaped
    vtt = formats.as_vtt([row])
    assert vtt.startswith("WEBVTT\n\n00:01:01.000 --> 00:01:02.440\n<v Remote>Gregson held")
    assert "&lt;b&gt;badly&lt;/b&gt;" in vtt


def test_a_segment_without_words_is_one_cue_as_before():
    row = _row("local", words("hello there"), revision="live")
    row.words = None
    assert formats.as_srt(
        [row]
    ) == "1\n00:00:00.000 --> 00:00:00.540\nLocal: hello there\n".replace(".", ",", 2)

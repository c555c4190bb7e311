import logging

import pytest
import torch

from lightning_core import prompt_schedule
from lightning_core.prompt_schedule import Keyframe


def test_parses_plain_and_json_style_lines_sorted_by_frame():
    text = """
    # a comment
    {
    "16": "a dog running",
    0: a cat walking, in the rain

    8 : "a bird: flying"
    }
    """
    assert prompt_schedule.parse_schedule(text, frames=32) == [
        Keyframe(0, "a cat walking, in the rain"), Keyframe(8, "a bird: flying"), Keyframe(16, "a dog running")]


# AnimateDiff-Evolved's forms (its animatediff/scheduling.py and utils_scheduling.py), for a 16-frame video
@pytest.mark.parametrize("text,expected", [
    ('"0": "a cat",\n"8": "a dog",', [(0, "a cat"), (8, "a dog")]),
    ('0 = "a cat",\n8 = "a dog"', [(0, "a cat"), (8, "a dog")]),
    ('{"0": "a cat", "8": "a dog, running"}', [(0, "a cat"), (8, "a dog, running")]),  # several on one line
    ('0 = "a cat", 12 = "a dog",', [(0, "a cat"), (12, "a dog")]),
    ('"0:4": "a cat"', [(f, "a cat") for f in range(4)]),  # END excluded
    ('"4:0": "a cat"', [(f, "a cat") for f in range(4)]),  # reversed ends are swapped
    ('"3:3": "a cat"', [(3, "a cat")]),  # equal ends: the one frame
    ('"-4:-1": "a cat"', [(12, "a cat"), (13, "a cat"), (14, "a cat")]),  # negative ends count from the end
    ('"-20:2": "a cat"', [(0, "a cat"), (1, "a cat")]),  # a range's start clamps at frame 0
    ('"-1": "a dog"', [(15, "a dog")]),
    ('"0.5": "half", "1.0": "end", "0.0": "start"', [(0, "start"), (8, "half"), (15, "end")]),
    ('"0.3": "a cat"', [(4, "a cat")]),  # int(0.3 * 16)
    ('"0:0.25": "a cat"', [(f, "a cat") for f in range(4)]),
    ('0:4: a cat', [(f, "a cat") for f in range(4)]),  # our plain form takes the same keys
    ('"0": ""', [(0, "")]),  # an empty quoted prompt is a prompt
])
def test_animatediff_evolved_keyframe_forms(text, expected):
    assert [(k.frame, k.prompt) for k in prompt_schedule.parse_schedule(text, frames=16)] == expected


def test_a_trailing_colon_holds_the_prompt_until_the_next_keyframe():
    keyframes = prompt_schedule.parse_schedule('"0:": "a cat"\n"4": "a dog"\n"8": "a bird"', frames=12)
    assert [k.hold for k in keyframes] == [True, False, False]
    left, right, weight = prompt_schedule.frame_weights([0, 4, 8], 12, holds=[True, False, False])
    blended = [(1 - w) * l + w * r for l, r, w in zip(left.tolist(), right.tolist(), weight.tolist())]
    assert blended == pytest.approx([0, 0, 0, 0, 1, 1.25, 1.5, 1.75, 2, 2, 2, 2])


def test_keyframes_past_the_last_frame_are_ignored_with_a_warning(caplog):
    text = "0: a cat\n32: a dog\n95: a bird\n\"60:70\": a fish"
    with caplog.at_level(logging.WARNING, logger="animatediff_lightning"):
        keyframes = prompt_schedule.parse_schedule(text, frames=64)
    assert [(k.frame, k.prompt) for k in keyframes] == [(0, "a cat"), (32, "a dog")] + [
        (f, "a fish") for f in range(60, 64)]
    assert "past the last frame (63) ignored, on line(s) 3, 4" in caplog.text


@pytest.mark.parametrize("text,line,expected", [
    ("0: a cat\nthe dog", 2, "is not a keyframe"),
    ("0: a cat\nabc: a dog", 2, "is not a keyframe"),
    ('0: a cat\n"4": "a dog" "8"', 2, "is not a keyframe"),
    ("0: a cat\n\n1.5: a dog", 3, "a decimal index is a fraction of the video from 0.0 to 1.0"),
    ("0: a cat\n7:", 2, "has no prompt"),
    ('"-17": "a cat"', 1, "frame -17 counts back past the first frame"),
    ('":4": "a cat"', 1, "is not a frame, a fraction or a range"),
    ('"0:4:2": "a cat"', 1, "is not a frame, a fraction or a range"),
    ('"1-2": "a cat"', 1, "'1-2' is not a frame number"),
    ("0: a cat\n4: a dog\n4: a bird", 3, "frame 4 is already set on line 2"),
    ('"0:8": "a cat"\n"4": "a dog"', 2, "frame 4 is already set on line 1"),
])
def test_bad_lines_are_named(text, line, expected):
    with pytest.raises(ValueError) as error:
        prompt_schedule.parse_schedule(text, frames=16)
    message = str(error.value)
    assert f"line {line} " in message and expected in message, message
    assert repr(text.splitlines()[line - 1].strip()) in message, message


def test_a_schedule_wholly_past_the_end_is_refused():
    with pytest.raises(ValueError, match=r"every keyframe .* past the last frame \(15\)"):
        prompt_schedule.parse_schedule("20: a cat\n40: a dog", frames=16)


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n{\n}"])
def test_empty_schedule_is_refused(text):
    with pytest.raises(ValueError, match="prompt schedule is empty"):
        prompt_schedule.parse_schedule(text, frames=16)


def test_weights_hold_before_first_and_after_last_keyframe_and_are_linear_between():
    left, right, weight = prompt_schedule.frame_weights([2, 6, 7], frames=10)
    assert weight.dtype == torch.float64
    # frames 0-2 hold keyframe 0; 2..6 blend 0 -> 1; 6..7 blend 1 -> 2; 7-9 hold keyframe 2
    blended = [(1 - w) * l + w * r for l, r, w in zip(left.tolist(), right.tolist(), weight.tolist())]
    assert blended == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1, 2, 2, 2])


def test_interpolation_is_exact_at_keyframes_and_linear_between():
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, 77, 8, generator=gen)
    keyframes = [0, 4, 12]
    frames = prompt_schedule.interpolate(embeddings, keyframes, frames=16)
    assert frames.shape == (16, 77, 8) and frames.dtype == embeddings.dtype
    for index, frame in enumerate(keyframes):
        assert torch.equal(frames[frame], embeddings[index])
    for frame in (13, 15):
        assert torch.equal(frames[frame], embeddings[2])
    for frame, (a, b, w) in {1: (0, 1, 0.25), 2: (0, 1, 0.5), 7: (1, 2, 3 / 8), 11: (1, 2, 7 / 8)}.items():
        # the same arithmetic as ComfyUI's ConditioningAverage(to=b, from=a, strength=w)
        expected = torch.mul(embeddings[b], w) + torch.mul(embeddings[a], 1.0 - w)
        assert torch.equal(frames[frame], expected), frame


def test_single_keyframe_holds_for_every_frame():
    embedding = torch.randn(1, 77, 8)
    frames = prompt_schedule.interpolate(embedding, [5], frames=9)
    assert torch.equal(frames, embedding.expand(9, 77, 8))


def test_pooled_outputs_interpolate_like_the_tokens():
    pooled = torch.tensor([[0.0, 10.0], [4.0, -2.0]])
    frames = prompt_schedule.interpolate(pooled, [0, 4], frames=6)
    assert frames.tolist() == [[0, 10], [1, 7], [2, 4], [3, 1], [4, -2], [4, -2]]


def test_token_lengths_are_matched_by_repeating():
    short, long = torch.randn(1, 77, 4), torch.randn(1, 154, 4)
    a, b = prompt_schedule.match_token_length([short, long])
    assert a.shape == b.shape == (1, 154, 4)
    assert torch.equal(a, torch.cat([short, short], dim=1)) and torch.equal(b, long)

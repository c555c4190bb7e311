import pytest
import torch

from lightning_core import prompt_schedule


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
        (0, "a cat walking, in the rain"), (8, "a bird: flying"), (16, "a dog running")]


@pytest.mark.parametrize("text,line,expected", [
    ("0: a cat\nthe dog", 2, "is not `FRAME: prompt`"),
    ("0: a cat\nabc: a dog", 2, "is not `FRAME: prompt`"),
    ("0: a cat\n\n1.5: a dog", 3, "is not `FRAME: prompt`"),
    ("0: a cat\n7:", 2, "has no prompt"),
    ("0: a cat\n16: a dog", 2, "frame 16 is out of range; frames are 0 to 15"),
    ("-1: a cat", 1, "frame -1 is out of range"),
    ("0: a cat\n4: a dog\n4: a bird", 3, "frame 4 is already set on line 2"),
])
def test_bad_lines_are_named(text, line, expected):
    with pytest.raises(ValueError) as error:
        prompt_schedule.parse_schedule(text, frames=16)
    message = str(error.value)
    assert f"line {line} " in message and expected in message, message
    assert repr(text.splitlines()[line - 1].strip()) in message, message


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

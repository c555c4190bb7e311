"""Our CLIP BPE tokenizer against transformers' CLIPTokenizer built from the same vocab.json / merges.txt."""
import pytest
import torch

from fixtures.sd15 import comfy_dir
from trainer.sd15 import ByteTokenizer, CLIPTokenizer, TokenizerError

PROMPTS = [
    "a cat",
    "A Photo of an astronaut riding a horse on Mars, 4k, highly detailed!!!",
    "  multiple   spaces\tand\nnewlines  ",
    "it's what they've done; we'll see (masterpiece:1.2) [sketch] {x}_y-z",
    "Numbers 1234567 and 3.14159, ½ ² and émigré café naïve",
    "日本語のテキスト 中文 한국어 emoji 🎉🐱",
    "under_score and <|endoftext|> in text",
    "",
    "word " * 100,  # truncated to 75 tokens
]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import CLIPTokenizer as Reference

    folder = comfy_dir() / "comfy" / "sd1_tokenizer"  # openai/clip-vit-large-patch14's files, shipped by ComfyUI
    return CLIPTokenizer(folder), Reference.from_pretrained(str(folder), model_max_length=77)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_transformers_clip_tokenizer(tokenizers, prompt):
    ours, reference = tokenizers
    expected = reference(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = ours([prompt])
    assert got.shape == (1, 77) and got.dtype == torch.long
    assert got.tolist() == expected.tolist()


def test_layout_is_bos_tokens_eos_then_eos_padding(tokenizers):
    ids = tokenizers[0](["a cat", "word " * 100])
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407] and (ids[0, 4:] == 49407).all()
    assert ids[1, 0] == 49406 and ids[1, 76] == 49407 and (ids[1, 1:76] != 49407).all()


def test_missing_vocabulary_names_the_file(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"merges\.txt not found"):
        CLIPTokenizer(tmp_path)


def test_byte_tokenizer_for_tiny_models():
    ids = ByteTokenizer()(["Hi é", ""])
    assert ids.shape == (2, 77)
    assert ids[0, :6].tolist() == [256, ord("h"), ord("i"), ord(" "), 0xC3, 0xA9]
    assert ids[0, 6:].eq(257).all() and ids[1, 0] == 256 and ids[1, 1:].eq(257).all()
    assert int(ids.max()) < ByteTokenizer.vocab_size


def test_stdlib_pattern_splits_like_the_regex_one_on_common_text():
    import re

    import regex

    from trainer.sd15.tokenizer import PATTERN, STDLIB_PATTERN, clean_text

    for prompt in PROMPTS[:5] + PROMPTS[6:]:
        text = clean_text(prompt.replace("½ ² ", ""))
        assert re.findall(STDLIB_PATTERN, text, re.IGNORECASE) == regex.findall(PATTERN, text, regex.IGNORECASE)

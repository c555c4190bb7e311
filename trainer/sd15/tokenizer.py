"""Prompt -> 77 token ids for the CLIP text encoder.

`CLIPTokenizer` is OpenAI CLIP's byte-level BPE as transformers' CLIPTokenizer runs it without ftfy (the
way ComfyUI tokenizes SD1.x prompts): control characters dropped, whitespace collapsed, NFC, CJK
characters split, lower case; then BOS, at most 75 tokens, EOS, padded with EOS to 77. It reads
`vocab.json` and `merges.txt` from a directory (e.g. openai/clip-vit-large-patch14's tokenizer files).

`ByteTokenizer` is for the tiny random test models only: one id per UTF-8 byte, no real vocabulary.
"""

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Without the `regex` package: stdlib classes for \p{L} / \p{N}, the same on letters and decimal digits
# (they differ on rarer characters such as '½' or combining marks).
STDLIB_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+"""


def compile_pattern():
    """CLIP's pre-tokenizer regex (case-insensitive), with `regex` when installed."""
    try:
        import regex
        return regex.compile(PATTERN, regex.IGNORECASE)
    except ImportError:
        return re.compile(STDLIB_PATTERN, re.IGNORECASE)


MAX_LENGTH = 77
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


class TokenizerError(ValueError):
    """The tokenizer files are missing or unreadable."""


@lru_cache(maxsize=1)
def bytes_to_unicode():
    """GPT-2's reversible map of the 256 bytes to printable characters (so BPE never sees spaces/controls)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))  # transformers' _is_chinese_char


def _is_cjk(cp):
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def clean_text(text):
    """transformers' BasicTokenizer as CLIPTokenizer uses it without ftfy, then lower case."""
    kept = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")):
            continue
        kept.append(" " if ch in " \t\n\r" or unicodedata.category(ch) == "Zs" else
                    f" {ch} " if _is_cjk(cp) else ch)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split()).lower()


class CLIPTokenizer:
    """OpenAI CLIP BPE over vocab.json + merges.txt; `__call__(prompts)` -> LongTensor [b, 77]."""

    def __init__(self, directory):
        directory = Path(directory)
        vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
        for f in (vocab_file, merges_file):
            if not f.is_file():
                raise TokenizerError(f"CLIP tokenizer file {f} not found: the tokenizer directory needs vocab.json "
                                     f"and merges.txt (e.g. from openai/clip-vit-large-patch14)")
        self.encoder = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")[1:]  # first line is a version header
        merges = [tuple(line.split()) for line in lines if len(line.split()) == 2]
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pattern = compile_pattern()
        self.bos_id, self.eos_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.vocab_size = len(self.encoder)
        self.cache = {}

    def bpe(self, token):
        """Merges the characters of one pre-token by rank; the last symbol carries the `</w>` word end."""
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, prompt):
        """Token ids of one prompt, without BOS/EOS."""
        ids = []
        for piece in self.pattern.findall(clean_text(prompt)):
            if piece in SPECIAL_TOKENS:  # written out in a prompt, they stay one token (as in transformers)
                ids.append(self.encoder[piece])
                continue
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder.get(s, self.eos_id) for s in self.bpe(symbols))  # unknown -> <|endoftext|>
        return ids

    def __call__(self, prompts):
        return pad_batch([self.encode(p) for p in prompts], self.bos_id, self.eos_id)


class ByteTokenizer:
    """Tiny-model-only stand-in: UTF-8 bytes as ids 0..255, BOS 256, EOS 257 (vocab 258); not CLIP's vocabulary."""

    vocab_size = 258
    bos_id, eos_id = 256, 257

    def encode(self, prompt):
        return list(clean_text(prompt).encode("utf-8"))

    def __call__(self, prompts):
        return pad_batch([self.encode(p) for p in prompts], self.bos_id, self.eos_id)


def pad_batch(token_lists, bos_id, eos_id, length=MAX_LENGTH):
    """[BOS] + tokens[:length - 2] + [EOS], padded with EOS to `length` (SD1.x / ComfyUI), as a [b, length] tensor."""
    rows = [[bos_id] + ids[: length - 2] + [eos_id] for ids in token_lists]
    return torch.tensor([row + [eos_id] * (length - len(row)) for row in rows], dtype=torch.long)

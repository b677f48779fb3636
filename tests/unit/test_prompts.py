"""Prompt assembly as the official code: caption + a_prompt without a separator, literal captions, truncation."""
from __future__ import annotations

from fsupir_under_test.supir_modules import prompts as p


def test_positive_prompt_joins_without_separator_and_escapes_caption_weights():
    assert p.positive_prompt("A cat (sitting).", "Cinematic.") == "A cat \\(sitting\\).Cinematic."
    assert p.positive_prompt("  a dog  ", "HQ", "Deblur with sigma 3.0") == "Deblur with sigma 3.0 a dogHQ"
    assert p.DEFAULT_POSITIVE.startswith("Cinematic, High Contrast") and p.DEFAULT_NEGATIVE.endswith("over-smooth")


def test_truncate_like_official_rejoins_chunks_at_75_tokens():
    start, end, pad = 49406, 49407, 0
    body = list(range(1, 101))  # 100 body tokens
    # ComfyUI-style chunks: the first stops early at a word boundary (70 tokens), padded with `pad`.
    c1 = [(start, 1.0, 0)] + [(t, 1.0, 1) for t in body[:70]] + [(end, 1.0, 0)] + [(pad, 1.0, 0)] * 5
    c2 = [(start, 1.0, 0)] + [(t, 1.0, 2) for t in body[70:]] + [(end, 1.0, 0)] + [(pad, 1.0, 0)] * 45
    out = p.truncate_like_official([c1, c2], start, end, pad)
    assert len(out) == 1 and len(out[0]) == 77
    ids = [t[0] for t in out[0]]
    assert ids == [start] + body[:75] + [end]
    short = [[(start, 1.0), (5, 1.2), (end, 1.0)] + [(end, 1.0)] * 74]
    got = p.truncate_like_official(short, start, end, end)
    assert [t[0] for t in got[0]] == [start, 5] + [end] * 75 and got[0][1] == (5, 1.2)

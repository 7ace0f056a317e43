"""The words of the synthetic shapes world: its shape names, and how a text mentions them.

The drawing code (`ue_dpo.synthetic.shapes`, `ue_dpo.synthetic.blind_spots`) and the exact CHAIR metric
(`ue_dpo.benchmarks`) both read them from here; this module imports nothing, so the metric stays free of PIL.
"""

import re

SHAPES = ("circle", "square", "triangle", "star")

_SHAPE_MENTION = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b", re.IGNORECASE)
# The nouns that name the blind-spot world's faint shapes ("a small grey star"), for `ue-dpo inspect --word-group`:
# "small grey" marks them, and its own tokens are spelled out from there on, so they are left out.
FAINT_SHAPE_WORDS = r"(?<=small grey )(?:" + "|".join(SHAPES) + ")"
_FAINT_NOUN = re.compile(FAINT_SHAPE_WORDS + r"s?\b", re.IGNORECASE)


def mentioned_shapes(text: str) -> list[str]:
    """The shape words in `text`, singular and lower-case, in order of mention (plurals count once)."""
    return [match.lower() for match in _SHAPE_MENTION.findall(text)]


def named_faint_shapes(text: str) -> list[str]:
    """The shapes `text` names as faint ("small grey <shape>"), singular and lower-case, in order of mention."""
    return [mentioned_shapes(noun)[0] for noun in _FAINT_NOUN.findall(text)]

"""A shapes world with blind spots: salient shapes, faint background shapes, and a language prior in the warm-up.

A scene holds one or two large shapes in saturated colours, each filling a quadrant as in `ue_dpo.synthetic.shapes`,
and possibly one faint shape: small, light grey on the white background, in an empty quadrant. How visible it is
is the world's knob: its grey level (`faint_grey`, FAINT_GREY by default) and its side as a share of a large
shape's (`faint_side`, FAINT_SIDE by default). Captions list the large shapes in reading order of their quadrants,
then the faint one as "a small grey <shape>", so the words of a faint shape can be told apart in text
(`ue_dpo.synthetic.vocabulary.FAINT_SHAPE_WORDS`).

The warm-up (SFT) captions carry a language prior, as web captions do:
- large shapes come in partner pairs (`PARTNERS`): a second large shape is the first one's partner with
  probability `SFT_PARTNER_SHARE`, and a `noisy_share` of the captions name the absent partner of a lone shape;
- a faint shape is named in only `SFT_FAINT_NAMED_SHARE` of the warm-up captions of the scenes that hold one.
The preference pairs and the held-out images are drawn without the prior (a second shape is any other shape).
A pair's chosen caption is the complete, true one; its rejected caption either omits the faint shape or names
the absent partner of the first large shape in its place (a prior-driven guess). The held-out manifest records
each image's faint shapes (`faint`), which `shapes_blind_spots` scores as `faint_recall`.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ue_dpo.synthetic.shapes import (
    BACKGROUND,
    COLOURS,
    QUADRANTS,
    SHAPES,
    ShapeObject,
    caption_record,
    check_count,
    check_image_size,
    check_share,
    draw_shape,
    listing_caption,
    preference_record,
    quadrant_box,
    save_image,
    write_dataset,
    write_eval_manifest,
)

PREFERENCE_DATASET = "blind_spots_pref"
SFT_DATASET = "blind_spots_sft"
PARTNERS = {"circle": "square", "square": "circle", "triangle": "star", "star": "triangle"}
FAINT_GREY = 222  # the faint shape's default grey level: on the white background, a contrast of 33 of 255 levels
FAINT_SIDE = 0.4  # the faint shape's default side, as a share of the side of a large shape
MAX_FAINT_GREY = 254  # 255 is the background itself: the shape would not be drawn at all
FAINT_SCENE_SHARE = 0.75  # scenes that hold a faint shape
SFT_PARTNER_SHARE = 0.9  # warm-up scenes with two large shapes whose second is the first's partner
SFT_FAINT_NAMED_SHARE = 0.3  # warm-up captions that name the scene's faint shape


@dataclass(frozen=True)
class FaintShape:
    shape: str
    quadrant: int


@dataclass(frozen=True)
class BlindSpotScene:
    large: tuple[ShapeObject, ...]  # sorted by quadrant
    faint: tuple[FaintShape, ...]  # none or one

    def __post_init__(self):
        shapes = [item.shape for item in (*self.large, *self.faint)]
        quadrants = [item.quadrant for item in (*self.large, *self.faint)]
        if (
            not self.large
            or len(set(shapes)) != len(shapes)
            or len(set(quadrants)) != len(quadrants)
            or [item.quadrant for item in self.large] != sorted(item.quadrant for item in self.large)
        ):
            raise ValueError(
                f"a blind-spot scene needs large shapes sorted by quadrant, and distinct shapes in "
                f"distinct quadrants; got {self}"
            )

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(item.shape for item in (*self.large, *self.faint))

    @property
    def faint_shapes(self) -> tuple[str, ...]:
        return tuple(item.shape for item in self.faint)

    def caption(self, *, name_faint: bool = True) -> str:
        phrases = [f"a {item.colour} {item.shape}" for item in self.large]
        if name_faint:
            phrases += [faint_phrase(item.shape) for item in self.faint]
        return listing_caption(phrases)


def faint_phrase(shape: str) -> str:
    return f"a small grey {shape}"


def random_blind_spot_scene(rng: random.Random, *, partner_share: float) -> BlindSpotScene:
    """One or two large shapes (the second the first's partner with probability `partner_share`, else any other
    shape), then a faint shape in a free quadrant for FAINT_SCENE_SHARE of the scenes."""
    first = rng.choice(SHAPES)
    shapes = [first]
    if rng.random() < 0.5:
        others = [shape for shape in SHAPES if shape != first]
        shapes.append(PARTNERS[first] if rng.random() < partner_share else rng.choice(others))
    quadrants = rng.sample(range(QUADRANTS), len(shapes) + 1)
    large = sorted(
        (ShapeObject(rng.choice(list(COLOURS)), shape, quadrant) for shape, quadrant in zip(shapes, quadrants)),
        key=lambda item: item.quadrant,
    )
    faint = ()
    if rng.random() < FAINT_SCENE_SHARE:
        faint = (FaintShape(rng.choice([shape for shape in SHAPES if shape not in shapes]), quadrants[-1]),)
    return BlindSpotScene(tuple(large), faint)


def check_faint_grey(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FAINT_GREY:
        raise ValueError(
            f"{name} must be an integer grey level in [0, {MAX_FAINT_GREY}] (0 black, {MAX_FAINT_GREY} the faintest "
            f"on the white background {BACKGROUND[0]}; default {FAINT_GREY}), got {value!r}"
        )


def check_faint_side(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(
            f"{name} must be a share in (0, 1] of a large shape's side (default {FAINT_SIDE}), got {value!r}"
        )


def faint_box(quadrant: int, image_size: int, faint_side: float = FAINT_SIDE) -> tuple[int, int, int, int]:
    """A square `faint_side` the side of `quadrant_box` (at least 2 pixels), centred in it."""
    left, top, right, bottom = quadrant_box(quadrant, image_size)
    side = max(2, round((right - left + 1) * faint_side))
    offset = (right - left + 1 - side) // 2
    return left + offset, top + offset, left + offset + side - 1, top + offset + side - 1


def draw_blind_spot_scene(
    scene: BlindSpotScene, image_size: int, *, faint_grey: int = FAINT_GREY, faint_side: float = FAINT_SIDE
) -> Image.Image:
    check_image_size(image_size)
    check_faint_grey("faint_grey", faint_grey)
    check_faint_side("faint_side", faint_side)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene.large:
        draw_shape(draw, item.shape, quadrant_box(item.quadrant, image_size), COLOURS[item.colour])
    for item in scene.faint:
        draw_shape(draw, item.shape, faint_box(item.quadrant, image_size, faint_side), (faint_grey,) * 3)
    return image


def prior_driven_caption(scene: BlindSpotScene, rng: random.Random) -> str | None:
    """The caption naming, in place of the faint shape, the absent partner of the first large shape (in a random
    colour); None when that partner is in the scene."""
    partner = PARTNERS[scene.large[0].shape]
    if partner in scene.shapes:
        return None
    phrases = [f"a {item.colour} {item.shape}" for item in scene.large] + [f"a {rng.choice(list(COLOURS))} {partner}"]
    return listing_caption(phrases)


def write_blind_spot_sft_dataset(
    out_dir: Path,
    *,
    n_examples: int,
    seed: int = 0,
    image_size: int = 56,
    noisy_share: float = 0.0,
    faint_grey: int = FAINT_GREY,
    faint_side: float = FAINT_SIDE,
) -> Path:
    """Add `blind_spots_sft` (image, caption with the language prior) to a LLaMA-Factory dataset dir.

    A `noisy_share` of the captions of scenes with one large shape also name its absent partner. `faint_grey` and
    `faint_side` draw the faint shapes (`draw_blind_spot_scene`); the scenes and captions do not depend on them.
    """
    check_count("n_examples", n_examples)
    check_image_size(image_size)
    check_share("noisy_share", noisy_share)
    rng = random.Random(f"blind_spots/{SFT_DATASET}/{seed}")
    caption_rng = random.Random(f"blind_spots/{SFT_DATASET}/captions/{seed}")
    records = []
    for index in range(n_examples):
        scene = random_blind_spot_scene(rng, partner_share=SFT_PARTNER_SHARE)
        drawn = draw_blind_spot_scene(scene, image_size, faint_grey=faint_grey, faint_side=faint_side)
        image = save_image(drawn, Path(out_dir), SFT_DATASET, index)
        name_faint = caption_rng.random() < SFT_FAINT_NAMED_SHARE
        text = scene.caption(name_faint=name_faint)
        if len(scene.large) == 1 and caption_rng.random() < noisy_share:
            guessed = prior_driven_caption(scene, caption_rng)
            if guessed is not None:
                text = guessed
        records.append(caption_record(image, text))
    return write_dataset(Path(out_dir), SFT_DATASET, records, ranking=False)


def write_blind_spot_preference_dataset(
    out_dir: Path,
    *,
    n_pairs: int,
    seed: int = 0,
    image_size: int = 56,
    faint_grey: int = FAINT_GREY,
    faint_side: float = FAINT_SIDE,
) -> Path:
    """Add `blind_spots_pref` to a LLaMA-Factory dataset dir: scenes with a faint shape; chosen names it, rejected
    omits it or names the absent partner of the first large shape instead (half each, where a partner is absent)."""
    check_count("n_pairs", n_pairs)
    check_image_size(image_size)
    rng = random.Random(f"blind_spots/{PREFERENCE_DATASET}/{seed}")
    records = []
    while len(records) < n_pairs:
        scene = random_blind_spot_scene(rng, partner_share=0.0)
        if not scene.faint:
            continue
        rejected = prior_driven_caption(scene, rng) if rng.random() < 0.5 else None
        drawn = draw_blind_spot_scene(scene, image_size, faint_grey=faint_grey, faint_side=faint_side)
        image = save_image(drawn, Path(out_dir), PREFERENCE_DATASET, len(records))
        records.append(preference_record(image, scene.caption(), rejected or scene.caption(name_faint=False)))
    return write_dataset(Path(out_dir), PREFERENCE_DATASET, records, ranking=True)


def write_blind_spot_eval_set(
    out_dir: Path,
    *,
    n_images: int,
    seed: int = 0,
    image_size: int = 56,
    faint_grey: int = FAINT_GREY,
    faint_side: float = FAINT_SIDE,
) -> list[dict]:
    """Held-out scenes (no prior) in `shapes_eval.json`: `shapes` all true shapes, `faint` the faint ones."""
    check_count("n_images", n_images)
    check_image_size(image_size)
    out_dir = Path(out_dir)
    rng = random.Random(f"blind_spots/eval/{seed}")
    manifest = []
    for index in range(n_images):
        scene = random_blind_spot_scene(rng, partner_share=0.0)
        drawn = draw_blind_spot_scene(scene, image_size, faint_grey=faint_grey, faint_side=faint_side)
        image = save_image(drawn, out_dir, "eval", index)
        manifest.append(
            {
                "image": image,
                "shapes": list(scene.shapes),
                "faint": list(scene.faint_shapes),
                "caption": scene.caption(),
            }
        )
    write_eval_manifest(out_dir, manifest)
    return manifest

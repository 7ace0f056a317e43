"""A synthetic "shapes" world: images of coloured shapes whose true captions are known by construction.

A scene holds one to three shapes, all different, each filling one quadrant of a plain white image.
Captions list the shapes in reading order of their quadrants ("There is a red circle and a blue
square."); a hallucinated caption adds one shape that is not in the image, placed in an empty quadrant.
Everything is drawn from `random.Random` streams seeded by a string, so a seed gives the same
images and captions on every machine.
"""

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ue_dpo.synthetic.vocabulary import SHAPES, mentioned_shapes  # noqa: F401 (mentioned_shapes: part of this world)

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
BACKGROUND = (255, 255, 255)
QUADRANTS = 4  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
MAX_SHAPES_PER_IMAGE = 3
MIN_IMAGE_SIZE = 28

PREFERENCE_DATASET = "shapes_pref"
SFT_DATASET = "shapes_sft"
EVAL_MANIFEST = "shapes_eval.json"
CAPTION_PROMPT = "Describe this image."
IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's placeholder; each template's plugin expands it

_SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    quadrant: int

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}: use one of {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}: use one of {', '.join(SHAPES)}")
        if self.quadrant not in range(QUADRANTS):
            raise ValueError(
                f"quadrant must be 0-3 (top-left, top-right, bottom-left, bottom-right), got {self.quadrant!r}"
            )


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # distinct shapes, sorted by quadrant

    def __post_init__(self):
        quadrants = [item.quadrant for item in self.objects]
        if not self.objects or len(set(self.shapes)) != len(self.objects) or quadrants != sorted(set(quadrants)):
            raise ValueError(
                f"a scene needs distinct shapes in distinct quadrants, sorted by quadrant; got {self.objects}"
            )

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(item.shape for item in self.objects)

    @property
    def caption(self) -> str:
        return caption(self.objects)


@dataclass(frozen=True)
class CaptionEvalImage:
    image_path: Path
    shapes: tuple[str, ...]  # ground truth, in reading order
    caption: str  # the true caption


def caption(objects: Sequence[ShapeObject]) -> str:
    if not objects:
        raise ValueError("a caption needs at least one shape object")
    return listing_caption([f"a {item.colour} {item.shape}" for item in objects])


def listing_caption(phrases: Sequence[str]) -> str:
    """ "There is A, B and C." for the phrases A, B, C."""
    if not phrases:
        raise ValueError("a caption needs at least one phrase")
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"There is {listed}."


def random_scene(rng: random.Random) -> Scene:
    count = rng.randint(1, MAX_SHAPES_PER_IMAGE)
    shapes = rng.sample(SHAPES, count)
    quadrants = sorted(rng.sample(range(QUADRANTS), count))
    return Scene(
        tuple(ShapeObject(rng.choice(list(COLOURS)), shape, quadrant) for shape, quadrant in zip(shapes, quadrants))
    )


def hallucinated_caption(scene: Scene, rng: random.Random) -> str:
    """The scene's caption with one absent shape added, listed where an empty quadrant falls in reading order."""
    absent = [shape for shape in SHAPES if shape not in scene.shapes]
    empty = [quadrant for quadrant in range(QUADRANTS) if quadrant not in {item.quadrant for item in scene.objects}]
    if not absent or not empty:
        raise ValueError(
            f"a scene with {len(scene.objects)} shapes leaves no absent shape in an empty quadrant; "
            f"hallucinate on scenes of at most {MAX_SHAPES_PER_IMAGE} shapes"
        )
    ghost = ShapeObject(rng.choice(list(COLOURS)), rng.choice(absent), rng.choice(empty))
    return caption(sorted((*scene.objects, ghost), key=lambda item: item.quadrant))


def quadrant_box(quadrant: int, image_size: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) square, inclusive, that a shape in `quadrant` fills edge to edge."""
    cell = image_size // 2
    margin = max(1, cell // 8)
    left, top = (quadrant % 2) * cell + margin, (quadrant // 2) * cell + margin
    return left, top, left + cell - 2 * margin - 1, top + cell - 2 * margin - 1


def draw_scene(scene: Scene, image_size: int) -> Image.Image:
    check_image_size(image_size)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene.objects:
        draw_shape(draw, item.shape, quadrant_box(item.quadrant, image_size), COLOURS[item.colour])
    return image


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    """`shape` filling the (left, top, right, bottom) square `box`, inclusive."""
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=fill)
    elif shape == "star":
        centre = ((left + right) / 2, (top + bottom) / 2)
        draw.polygon(_star_points(centre, (right - left) / 2), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")


def _star_points(centre: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """A five-pointed star, point up, inner radius 0.4 of the outer one."""
    points = []
    for corner in range(10):
        reach = radius if corner % 2 == 0 else radius * 0.4
        angle = math.pi / 2 + corner * math.pi / 5
        points.append((centre[0] + reach * math.cos(angle), centre[1] - reach * math.sin(angle)))
    return points


def write_preference_dataset(out_dir: Path, *, n_pairs: int, seed: int = 0, image_size: int = 56) -> Path:
    """Add the `shapes_pref` preference dataset (true vs hallucinated caption) to a LLaMA-Factory dataset dir."""
    check_count("n_pairs", n_pairs)
    check_image_size(image_size)
    rng = random.Random(f"shapes/{PREFERENCE_DATASET}/{seed}")
    records = []
    for index in range(n_pairs):
        scene = random_scene(rng)
        image = save_image(draw_scene(scene, image_size), Path(out_dir), PREFERENCE_DATASET, index)
        records.append(preference_record(image, scene.caption, hallucinated_caption(scene, rng)))
    return write_dataset(Path(out_dir), PREFERENCE_DATASET, records, ranking=True)


def write_sft_dataset(
    out_dir: Path, *, n_examples: int, seed: int = 0, image_size: int = 56, noisy_share: float = 0.0
) -> Path:
    """Add the `shapes_sft` dataset (image, caption) to a LLaMA-Factory dataset dir, for a warm-up stage.

    A `noisy_share` of the captions, drawn from a stream of its own (the scenes do not change with it), name
    one absent shape, like the noisy captions of web data that teach real models to hallucinate.
    """
    check_count("n_examples", n_examples)
    check_image_size(image_size)
    check_share("noisy_share", noisy_share)
    rng = random.Random(f"shapes/{SFT_DATASET}/{seed}")
    noise_rng = random.Random(f"shapes/{SFT_DATASET}/noise/{seed}")
    records = []
    for index in range(n_examples):
        scene = random_scene(rng)
        image = save_image(draw_scene(scene, image_size), Path(out_dir), SFT_DATASET, index)
        noisy = noise_rng.random() < noisy_share
        text = hallucinated_caption(scene, noise_rng) if noisy else scene.caption
        records.append(caption_record(image, text))
    return write_dataset(Path(out_dir), SFT_DATASET, records, ranking=False)


def write_caption_eval_set(
    out_dir: Path, *, n_images: int, seed: int = 0, image_size: int = 56
) -> list[CaptionEvalImage]:
    """Held-out images (a random stream of their own) with ground truth, also listed in `shapes_eval.json`."""
    check_count("n_images", n_images)
    check_image_size(image_size)
    out_dir = Path(out_dir)
    rng = random.Random(f"shapes/eval/{seed}")
    items, manifest = [], []
    for index in range(n_images):
        scene = random_scene(rng)
        image = save_image(draw_scene(scene, image_size), out_dir, "eval", index)
        items.append(CaptionEvalImage((out_dir / image).resolve(), scene.shapes, scene.caption))
        manifest.append({"image": image, "shapes": list(scene.shapes), "caption": scene.caption})
    write_eval_manifest(out_dir, manifest)
    return items


def _user_turn() -> dict[str, str]:
    return {"role": "user", "content": IMAGE_PLACEHOLDER + CAPTION_PROMPT}


def caption_record(image: str, caption_text: str) -> dict:
    """A sharegpt row of a warm-up dataset: the caption prompt on `image`, answered by `caption_text`."""
    return {"messages": [_user_turn(), {"role": "assistant", "content": caption_text}], "images": [image]}


def preference_record(image: str, chosen: str, rejected: str) -> dict:
    """A sharegpt ranking row: the caption prompt on `image`, a chosen and a rejected caption."""
    return {
        "messages": [_user_turn()],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "images": [image],
    }


def save_image(image: Image.Image, out_dir: Path, subset: str, index: int) -> str:
    """Saves the PNG and returns its path relative to `out_dir` (LLaMA-Factory's default `media_dir`)."""
    relative = Path("images") / subset / f"{index:05d}.png"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_dir / relative)
    return relative.as_posix()


def write_eval_manifest(out_dir: Path, entries: list[dict]) -> None:
    """`shapes_eval.json`: one entry per held-out image (`image`, `shapes`, `caption`, more keys as a world has)."""
    (Path(out_dir) / EVAL_MANIFEST).write_text(json.dumps(entries, indent=1))


def write_dataset(out_dir: Path, name: str, records: list[dict], *, ranking: bool) -> Path:
    """Writes `<name>.json` and adds its entry to `dataset_info.json`, keeping the entries already there."""
    file_name = f"{name}.json"
    (out_dir / file_name).write_text(json.dumps(records, indent=1))
    columns = {"messages": "messages", "images": "images"}
    if ranking:
        columns.update(chosen="chosen", rejected="rejected")
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": ranking,
        "columns": columns,
        "tags": dict(_SHAREGPT_TAGS),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return out_dir


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")


def check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an integer of at least {MIN_IMAGE_SIZE} pixels (the tiny models' patch grid), "
            f"got {image_size!r}"
        )

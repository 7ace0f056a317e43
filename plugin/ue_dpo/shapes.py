"""A synthetic "shapes" world: images of coloured shapes whose true captions are known by construction."""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle", "star")
PREFERENCE_DATASET = "shapes_pref"
SFT_DATASET = "shapes_sft"
PROMPT = "<image>Describe this image."


@dataclass(frozen=True)
class ShapeScene:
    objects: tuple[tuple[str, str], ...]  # (colour, shape), distinct shapes

    def caption(self, objects: tuple[tuple[str, str], ...] | None = None) -> str:
        phrases = [f"a {colour} {shape}" for colour, shape in (objects or self.objects)]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"There is {listed}."


def random_scene(rng: random.Random) -> ShapeScene:
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    return ShapeScene(tuple((rng.choice(list(COLOURS)), shape) for shape in shapes))


def hallucinated_caption(scene: ShapeScene, rng: random.Random) -> str:
    """The true caption plus one shape that is not in the image."""
    absent = rng.choice([shape for shape in SHAPES if shape not in {s for _, s in scene.objects}])
    return scene.caption(scene.objects + ((rng.choice(list(COLOURS)), absent),))


def mentioned_shapes(text: str) -> list[str]:
    """Every shape word in `text`, in order (the CHAIR vocabulary of this world)."""
    words = [word.strip(".,;:!?").lower() for word in text.split()]
    return [word.removesuffix("s") for word in words if word.removesuffix("s") in SHAPES]


def draw_scene(scene: ShapeScene, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    cell = size // 2
    for (colour, shape), slot in zip(scene.objects, rng.sample(range(4), len(scene.objects))):
        left, top = (slot % 2) * cell + 2, (slot // 2) * cell + 2
        box = (left, top, left + cell - 4, top + cell - 4)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
        else:
            cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (cell - 4) / 2
            draw.polygon([(cx, cy - r), (cx + r * 0.3, cy - r * 0.3), (cx + r, cy), (cx + r * 0.3, cy + r * 0.3),
                          (cx, cy + r), (cx - r * 0.3, cy + r * 0.3), (cx - r, cy), (cx - r * 0.3, cy - r * 0.3)],
                         fill=fill)
    return image


def _dataset_entry(file_name: str, ranking: bool) -> dict:
    columns = {"messages": "messages", "images": "images"}
    if ranking:
        columns.update(chosen="chosen", rejected="rejected")
    return {
        "file_name": file_name, "formatting": "sharegpt", "ranking": ranking, "columns": columns,
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def write_preference_dataset(out_dir: Path, *, n_pairs: int, seed: int = 0, image_size: int = 56) -> Path:
    """A LLaMA-Factory dataset folder with `shapes_pref` (ranking) and `shapes_sft` entries."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs, sft = [], []
    for index in range(n_pairs):
        scene = random_scene(rng)
        image_path = out_dir / "images" / f"{index:05d}.png"
        draw_scene(scene, image_size, rng).save(image_path)
        prompt = [{"role": "user", "content": PROMPT}]
        pairs.append({
            "messages": prompt, "images": [str(image_path)],
            "chosen": {"role": "assistant", "content": scene.caption()},
            "rejected": {"role": "assistant", "content": hallucinated_caption(scene, rng)},
        })
        sft.append({"messages": prompt + [{"role": "assistant", "content": scene.caption()}],
                    "images": [str(image_path)]})
    (out_dir / "shapes_pref.json").write_text(json.dumps(pairs, indent=1))
    (out_dir / "shapes_sft.json").write_text(json.dumps(sft, indent=1))
    info = {PREFERENCE_DATASET: _dataset_entry("shapes_pref.json", True), SFT_DATASET: _dataset_entry("shapes_sft.json", False)}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return out_dir

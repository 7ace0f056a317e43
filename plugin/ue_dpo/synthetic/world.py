"""An embedded experiment's world: a tiny local model, training data and held-out images with ground truth."""

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from ue_dpo.synthetic import blind_spots, shapes

WORLDS = ("shapes", "blind_spots")  # ue_dpo.synthetic.shapes, ue_dpo.synthetic.blind_spots
ARCHITECTURES = ("llava", "qwen2_vl")  # the tiny models a world is built with (of tiny_models.ARCHITECTURES)
BLIND_SPOT_KEYS = ("faint_grey", "faint_side")  # read by `world: blind_spots` alone


@dataclass(frozen=True)
class SyntheticWorld:
    """An embedded world, built under `<output>/synthetic`: a tiny model, training data, held-out images."""

    world: str = "shapes"  # one of WORLDS
    arch: str = "qwen2_vl"
    seed: int = 0
    image_size: int = 56
    sft_examples: int = 512
    # share of warm-up captions that name one absent shape (noisy web captions); in `blind_spots`, of the captions
    # of a lone large shape, which then also name its absent partner
    sft_noisy_share: float = 0.0
    preference_pairs: int = 256
    eval_images: int = 64
    faint_grey: int = field(
        default=blind_spots.FAINT_GREY,
        metadata={
            "help": f"`blind_spots` only: the faint shapes' grey level, 0 (black) to {blind_spots.MAX_FAINT_GREY} "
            f"(the faintest on the white background)."
        },
    )
    faint_side: float = field(
        default=blind_spots.FAINT_SIDE,
        metadata={"help": "`blind_spots` only: the faint shapes' side, as a share in (0, 1] of a large shape's side."},
    )

    def __post_init__(self):
        blind_spots.check_faint_grey("synthetic.faint_grey", self.faint_grey)
        blind_spots.check_faint_side("synthetic.faint_side", self.faint_side)
        defaults = {item.name: item.default for item in fields(self)}
        check_blind_spot_keys(self.world, [name for name in BLIND_SPOT_KEYS if getattr(self, name) != defaults[name]])


def check_blind_spot_keys(world: str, keys: Iterable[str]) -> None:
    """Refuses any of BLIND_SPOT_KEYS among `keys` unless `world` is `blind_spots`, the only world that reads them."""
    named = [name for name in BLIND_SPOT_KEYS if name in keys]
    if world != "blind_spots" and named:
        raise ValueError(
            f"synthetic.{named[0]}: only `world: blind_spots` draws faint shapes, and this world is {world!r}, "
            f"which would ignore it; remove {named[0]} or set `world: blind_spots`"
        )


def build_synthetic_world(world: SyntheticWorld, root: Path) -> None:
    """`root/model` (tiny checkpoint), `root/data` (the world's SFT and preference datasets), `root/eval`
    (held-out set): `shapes_sft` and `shapes_pref` for `world: shapes`, `blind_spots_sft` and `blind_spots_pref`
    for `world: blind_spots`."""
    # torch and transformers: only building the model needs them, not the experiment file's parser, which reads
    # SyntheticWorld from here
    from ue_dpo.synthetic.tiny_models import build_tiny_model

    drawing = {"seed": world.seed, "image_size": world.image_size}
    if world.world == "blind_spots":
        write_sft_dataset = blind_spots.write_blind_spot_sft_dataset
        write_preference_dataset = blind_spots.write_blind_spot_preference_dataset
        write_eval_set = blind_spots.write_blind_spot_eval_set
        drawing.update(faint_grey=world.faint_grey, faint_side=world.faint_side)
    else:
        write_sft_dataset = shapes.write_sft_dataset
        write_preference_dataset = shapes.write_preference_dataset
        write_eval_set = shapes.write_caption_eval_set
    build_tiny_model(world.arch, root / "model", seed=world.seed)
    write_sft_dataset(root / "data", n_examples=world.sft_examples, noisy_share=world.sft_noisy_share, **drawing)
    write_preference_dataset(root / "data", n_pairs=world.preference_pairs, **drawing)
    write_eval_set(root / "eval", n_images=world.eval_images, **drawing)

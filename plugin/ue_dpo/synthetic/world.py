"""An embedded experiment's world: a tiny local model, training data and held-out images with ground truth."""

from dataclasses import dataclass
from pathlib import Path

from ue_dpo.synthetic import blind_spots, shapes

WORLDS = ("shapes", "blind_spots")  # ue_dpo.synthetic.shapes, ue_dpo.synthetic.blind_spots
ARCHITECTURES = ("llava", "qwen2_vl")  # the tiny models a world is built with (of tiny_models.ARCHITECTURES)


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


def build_synthetic_world(world: SyntheticWorld, root: Path) -> None:
    """`root/model` (tiny checkpoint), `root/data` (the world's SFT and preference datasets), `root/eval`
    (held-out set): `shapes_sft` and `shapes_pref` for `world: shapes`, `blind_spots_sft` and `blind_spots_pref`
    for `world: blind_spots`."""
    # torch and transformers: only building the model needs them, not the experiment file's parser, which reads
    # SyntheticWorld from here
    from ue_dpo.synthetic.tiny_models import build_tiny_model

    if world.world == "blind_spots":
        write_sft_dataset = blind_spots.write_blind_spot_sft_dataset
        write_preference_dataset = blind_spots.write_blind_spot_preference_dataset
        write_eval_set = blind_spots.write_blind_spot_eval_set
    else:
        write_sft_dataset = shapes.write_sft_dataset
        write_preference_dataset = shapes.write_preference_dataset
        write_eval_set = shapes.write_caption_eval_set
    build_tiny_model(world.arch, root / "model", seed=world.seed)
    write_sft_dataset(
        root / "data",
        n_examples=world.sft_examples,
        seed=world.seed,
        image_size=world.image_size,
        noisy_share=world.sft_noisy_share,
    )
    write_preference_dataset(
        root / "data", n_pairs=world.preference_pairs, seed=world.seed, image_size=world.image_size
    )
    write_eval_set(root / "eval", n_images=world.eval_images, seed=world.seed, image_size=world.image_size)

"""An embedded experiment's world: a tiny local model, training data and held-out images with ground truth."""

from pathlib import Path

from ue_dpo.experiment.config import SyntheticWorld


def build_synthetic_world(world: SyntheticWorld, root: Path) -> None:
    """`root/model` (tiny checkpoint), `root/data` (the world's SFT and preference datasets), `root/eval`
    (held-out set): `shapes_sft` and `shapes_pref` for `world: shapes`, `blind_spots_sft` and `blind_spots_pref`
    for `world: blind_spots`."""
    from ue_dpo.synthetic.tiny_models import build_tiny_model

    if world.world == "blind_spots":
        from ue_dpo.synthetic.blind_spots import (
            write_blind_spot_eval_set as write_eval_set,
            write_blind_spot_preference_dataset as write_preference_dataset,
            write_blind_spot_sft_dataset as write_sft_dataset,
        )
    else:
        from ue_dpo.synthetic.shapes import (
            write_caption_eval_set as write_eval_set,
            write_preference_dataset,
            write_sft_dataset,
        )
    build_tiny_model(world.arch, root / "model", seed=world.seed)
    write_sft_dataset(root / "data", n_examples=world.sft_examples, seed=world.seed, image_size=world.image_size,
                      noisy_share=world.sft_noisy_share)
    write_preference_dataset(root / "data", n_pairs=world.preference_pairs, seed=world.seed,
                             image_size=world.image_size)
    write_eval_set(root / "eval", n_images=world.eval_images, seed=world.seed, image_size=world.image_size)

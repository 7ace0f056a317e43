"""The embedded default's world: a tiny local model, shapes training data and held-out images with ground truth."""

from pathlib import Path

from ue_dpo.experiment.config import SyntheticWorld


def build_synthetic_world(world: SyntheticWorld, root: Path) -> None:
    """`root/model` (tiny checkpoint), `root/data` (`shapes_sft` and `shapes_pref`), `root/eval` (held-out set)."""
    from ue_dpo.synthetic.shapes import write_caption_eval_set, write_preference_dataset, write_sft_dataset
    from ue_dpo.synthetic.tiny_models import build_tiny_model

    build_tiny_model(world.arch, root / "model", seed=world.seed)
    write_sft_dataset(root / "data", n_examples=world.sft_examples, seed=world.seed, image_size=world.image_size,
                      noisy_share=world.sft_noisy_share)
    write_preference_dataset(root / "data", n_pairs=world.preference_pairs, seed=world.seed,
                             image_size=world.image_size)
    write_caption_eval_set(root / "eval", n_images=world.eval_images, seed=world.seed, image_size=world.image_size)

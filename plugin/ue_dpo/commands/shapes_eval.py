"""`ue-dpo shapes-eval`: write held-out shapes images with ground truth for the `shapes_caption` task."""

import argparse
from pathlib import Path

from ue_dpo.commands import int_at_least
from ue_dpo.synthetic.shapes import EVAL_MANIFEST, MIN_IMAGE_SIZE, write_caption_eval_set


def _run(args: argparse.Namespace) -> None:

    items = write_caption_eval_set(args.out, n_images=args.images, seed=args.seed, image_size=args.image_size)
    print(
        f"wrote {len(items)} images and {args.out / EVAL_MANIFEST}; evaluate with "
        f"UE_DPO_SHAPES_EVAL_DIR={args.out} lmms-eval --tasks shapes_caption ..."
    )


def register(commands) -> None:
    parser = commands.add_parser("shapes-eval", help="write held-out shapes images for the shapes_caption task")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=int_at_least(1), default=100, help="number of images (default: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-size", type=int_at_least(MIN_IMAGE_SIZE), default=56, help="pixels per side (default: 56)"
    )
    parser.set_defaults(handler=_run)

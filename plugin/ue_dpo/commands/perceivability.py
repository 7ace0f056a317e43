"""`ue-dpo perceivability`: how well a linear probe on a model's image features tells which faint shape a held-out
image of a blind-spot world holds (ue_dpo.evaluation.perceivability)."""

import argparse
import json
from pathlib import Path

from ue_dpo.commands import exit_with_user_error, int_at_least
from ue_dpo.machine import this_machine


def _run(args: argparse.Namespace) -> None:
    # torch, transformers, LLaMA-Factory and scikit-learn: loaded when the command runs, not for `ue-dpo --help`
    from ue_dpo.evaluation.perceivability import PerceivabilityError, measure_perceivability

    try:
        measured = measure_perceivability(args.model, args.eval_dir, batch_size=args.batch_size)
    except PerceivabilityError as error:
        exit_with_user_error("perceivability", error)
    text = json.dumps({**measured, "machine": this_machine()}, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


def register(commands) -> None:
    parser = commands.add_parser(
        "perceivability",
        help="the cross-validated accuracy of a linear probe on a model's image features that tells which faint "
        "shape each held-out image of a blind-spot world holds, with its 95%% interval and the chance level (JSON)",
    )
    parser.add_argument(
        "--model", required=True, help="the model, e.g. an experiment's warm-up <output>/runs/warmup (or a LoRA dir)"
    )
    parser.add_argument(
        "--eval-dir",
        type=Path,
        required=True,
        help="the held-out folder of a blind-spot world (<output>/synthetic/eval), whose manifest lists `faint`",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument(
        "--batch-size", type=int_at_least(1), default=16, help="images per forward of the vision tower (default: 16)"
    )
    parser.set_defaults(handler=_run)

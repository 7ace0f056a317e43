"""`ue-dpo inspect`: every response token of N pairs coloured by its UE-DPO category, with u, Δ and λ."""

import argparse
from pathlib import Path

from ue_dpo.commands import exit_with_user_error, int_at_least


def _run(args: argparse.Namespace) -> None:
    # inspection imports torch (and LLaMA-Factory when it builds the trainer): loaded when the command runs,
    # not for `ue-dpo --help`
    from ue_dpo.inspection import (
        InspectError,
        build_trainer,
        data_keys,
        inspect_pairs,
        model_keys,
        parse_ue_settings,
        parse_word_groups,
        summary_table,
        write_report,
    )

    try:
        word_groups = parse_word_groups(args.word_group)
        settings = (
            model_keys(args.model, args.template, args.base_model),
            data_keys(args.data, args.dataset_dir, args.out / "data"),
            parse_ue_settings(args.ue),
        )
        trainer = build_trainer(*settings, n=args.n, cutoff_len=args.cutoff_len, out_dir=args.out)
    except InspectError as error:
        exit_with_user_error("inspect", error)
    pairs = inspect_pairs(trainer, batch_size=args.batch_size)
    summary = write_report(
        pairs, args.out, title=f"UE-DPO tokens of {args.model} on {args.data}", word_groups=word_groups
    )
    print(summary_table(summary))
    print(f"wrote {args.out / 'index.html'} and {len(pairs)} PNG images")


def register(commands) -> None:
    parser = commands.add_parser(
        "inspect",
        help="colour each response token by its UE-DPO category (Type-I blind spot, Type-II language "
        "prior, sensitive rejected, unselected) with u, Δ, λ: HTML page, PNG images, summary",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model directory, or LoRA adapter directory (its base model is read from adapter_config.json)",
    )
    parser.add_argument(
        "--base-model",
        help="base model of a LoRA adapter --model, when it is no longer where its "
        "adapter_config.json says (default: that path)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help='dataset name in --dataset-dir (needs "ranking": true), or '
        "a sharegpt preference file (messages, chosen, rejected, images columns)",
    )
    parser.add_argument("--dataset-dir", default="data", help="folder holding dataset_info.json (default: data)")
    parser.add_argument("--n", type=int_at_least(1), default=20, help="pairs to inspect, the first N (default: 20)")
    parser.add_argument("--out", type=Path, default=Path("inspect"), help="output folder (default: inspect/)")
    parser.add_argument("--template", help="LLaMA-Factory template (default: from the model's model_type)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=4, help="pairs per forward (default: 4)")
    parser.add_argument(
        "--cutoff-len", type=int_at_least(1), default=2048, help="LLaMA-Factory cutoff_len (default: 2048)"
    )
    parser.add_argument(
        "--ue",
        action="append",
        default=[],
        metavar="ue_KEY=VALUE",
        help="a UE-DPO key as in training, e.g. --ue ue_tau=0.3 --ue ue_seed=42 (repeatable; "
        "ue_seed defaults to 42, the training seed's default)",
    )
    parser.add_argument(
        "--word-group",
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="count the chosen response tokens inside matches of REGEX (in the decoded response) "
        "and outside them, their Type-I blind spots, λ > 1 and the ratio of the Type-I rates, "
        "into summary.json's word_groups (repeatable), e.g. --word-group 'faint=small grey \\w+'",
    )
    parser.set_defaults(handler=_run)

"""`ue-dpo data rlhf_v|rlaif_v --out DIR`: a public preference dataset as a LLaMA-Factory dataset folder."""

import argparse
from pathlib import Path

from ue_dpo.commands import exit_with_user_error, int_at_least
from ue_dpo.datasets import (
    BAD_SAMPLE_POLICIES,
    PROVENANCE_SUFFIX,
    SOURCES,
    BadSampleError,
    SourceError,
    Subset,
    convert,
)


def _run(args: argparse.Namespace) -> None:
    import logging

    if args.seed is not None and args.random is None:
        exit_with_user_error("data", "--seed applies to --random N; pass --random N --seed S, or drop --seed")
    if args.first is not None:
        subset = Subset("first", args.first)
    elif args.random is not None:
        subset = Subset("random", args.random, 0 if args.seed is None else args.seed)
    else:
        subset = Subset()
    conversion_logger = logging.getLogger("ue_dpo.datasets")
    conversion_logger.addHandler(logging.StreamHandler())
    conversion_logger.setLevel(logging.INFO)
    try:
        report = convert(
            args.dataset,
            args.out,
            source=args.source,
            revision=args.revision,
            subset=subset,
            on_bad_sample=args.on_bad_sample,
        )
    except (BadSampleError, SourceError) as error:
        exit_with_user_error("data", error)
    print(report.summary())


def register(commands) -> None:
    copies = "; ".join(
        f"{name}: {', '.join(schema.hub_id for schema in spec.schemas)}" for name, spec in SOURCES.items()
    )
    parser = commands.add_parser(
        "data",
        help="convert RLHF-V or RLAIF-V into a LLaMA-Factory dataset folder (ranking, with images)",
        description=f"Convert a public preference dataset (any of its copies: {copies}) into DIR: <name>.json "
        f"(sharegpt ranking records), <name>_images/, <name>_skipped.jsonl, <name>{PROVENANCE_SUFFIX} "
        "(the hub revision, the digests of the files read, the subset, the rows read) and its "
        "dataset_info.json entry (other entries are kept). Re-running with the same arguments rewrites "
        "the same files.",
    )
    parser.add_argument("dataset", choices=tuple(SOURCES), help="which dataset; also its dataset_info.json name")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="dataset folder to write (the training recipes use `dataset_dir: data`)",
    )
    parser.add_argument(
        "--source",
        metavar="HUB_ID_OR_DIR",
        help="hub dataset id, downloaded into the Hugging Face cache, or a local folder of its "
        "parquet/arrow files, read as it is (default: the first copy listed above)",
    )
    parser.add_argument(
        "--revision",
        metavar="REV",
        help="branch, tag or commit of the hub dataset to download (default: main); the commit it "
        "resolves to is recorded",
    )
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument(
        "--first",
        type=int_at_least(1),
        metavar="N",
        help="convert only the first N rows of the source, counted by their index in the source "
        "(bad rows among them are skipped, not replaced)",
    )
    subset.add_argument(
        "--random",
        type=int_at_least(1),
        metavar="N",
        help="convert N rows of the source drawn at random with --seed (the same rows on every "
        "machine); reads the source twice",
    )
    parser.add_argument("--seed", type=int, metavar="S", help="seed of --random (default 0)")
    parser.add_argument(
        "--on-bad-sample",
        choices=BAD_SAMPLE_POLICIES,
        default="skip",
        help="a sample without an image, with an undecodable image or an empty question/response: "
        "skip it (logged, counted, listed in <name>_skipped.jsonl; default) or stop",
    )
    parser.set_defaults(handler=_run)

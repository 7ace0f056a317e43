"""`ue-dpo data rlhf_v|rlaif_v --out DIR`: a public preference dataset as a LLaMA-Factory dataset folder."""

import argparse
from pathlib import Path

from ue_dpo.commands import int_at_least
from ue_dpo.datasets import BAD_SAMPLE_POLICIES, SOURCES


def _run(args: argparse.Namespace) -> None:
    import logging

    from ue_dpo.commands import exit_with_user_error
    from ue_dpo.datasets import BadSampleError, SourceError, convert

    conversion_logger = logging.getLogger("ue_dpo.datasets")
    conversion_logger.addHandler(logging.StreamHandler())
    conversion_logger.setLevel(logging.INFO)
    try:
        report = convert(args.dataset, args.out, source=args.source, limit=args.limit,
                         on_bad_sample=args.on_bad_sample)
    except (BadSampleError, SourceError) as error:
        exit_with_user_error("data", error)
    print(report.summary())


def register(commands) -> None:
    sources = ", ".join(f"{name}: {spec.hub_id}" for name, spec in SOURCES.items())
    parser = commands.add_parser(
        "data", help="convert RLHF-V or RLAIF-V into a LLaMA-Factory dataset folder (ranking, with images)",
        description=f"Convert a public preference dataset ({sources}) into DIR: <name>.json (sharegpt ranking "
                    "records), <name>_images/, <name>_skipped.jsonl and its dataset_info.json entry (other "
                    "entries are kept). Re-running with the same arguments rewrites the same files.",
    )
    parser.add_argument("dataset", choices=tuple(SOURCES), help="which dataset; also its dataset_info.json name")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="dataset folder to write (the training recipes use `dataset_dir: data`)")
    parser.add_argument("--source", metavar="HUB_ID_OR_DIR",
                        help="hub dataset id, or a local folder of its parquet/arrow files (default: the public "
                             "hub dataset, streamed)")
    parser.add_argument("--limit", type=int_at_least(1), metavar="N", help="stop after N pairs (in source order)")
    parser.add_argument("--on-bad-sample", choices=BAD_SAMPLE_POLICIES, default="skip",
                        help="a sample without an image, with an undecodable image or an empty question/response: "
                             "skip it (logged, counted, listed in <name>_skipped.jsonl; default) or stop")
    parser.set_defaults(handler=_run)

"""`ue-dpo demo`: `ue-dpo run` on the embedded default (what `make demo` runs)."""

import argparse

from ue_dpo.commands.run import add_experiment_options, run_experiment_file
from ue_dpo.experiment import embedded_default_path


def _run(args: argparse.Namespace) -> None:
    run_experiment_file(embedded_default_path(), args)


def register(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="the embedded default: a tiny local model on synthetic shapes, warm-up, DPO and UE-DPO, "
        "exact CHAIR with lmms-eval, results table and chart",
    )
    add_experiment_options(parser)
    parser.set_defaults(handler=_run)

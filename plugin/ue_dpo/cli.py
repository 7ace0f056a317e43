"""`ue-dpo` command line."""

import argparse
import importlib
import sys

from ue_dpo.versions import UnsupportedVersionError, check_supported

# One module per subcommand under ue_dpo/commands/.
SUBCOMMANDS = ("demo", "run", "shapes_eval", "score", "data", "inspect", "compare", "perceivability")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ue-dpo", description="UE-DPO for LLaMA-Factory and lmms-eval.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"ue_dpo.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        check_supported()
    except UnsupportedVersionError as error:
        sys.exit(f"ue-dpo: {error}")
    args.handler(args)


if __name__ == "__main__":
    main()

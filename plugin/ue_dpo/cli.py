"""`ue-dpo` command line."""

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from ue_dpo.demo import run_demo

    run_demo(args.out, arch=args.arch, pairs=args.pairs, steps=args.steps, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ue-dpo", description="UE-DPO for LLaMA-Factory and lmms-eval.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a tiny local model with stage: ue_dpo and print the ue/ stats")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    demo.add_argument("--arch", choices=("qwen2_vl", "llava"), default="qwen2_vl")
    demo.add_argument("--pairs", type=int, default=32, help="synthetic preference pairs (default: 32)")
    demo.add_argument("--steps", type=int, default=8, help="training steps (default: 8)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()

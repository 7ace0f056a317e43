"""`ue-dpo score amber|object_halbench|mmhal_bench`: score saved responses in the official formats with the
code the lmms-eval tasks use; `--json` prints one JSON object, otherwise a table.

The subcommands are the `score_command`s of the benchmark registry (`ue_dpo.benchmarks.registry`), which also says
which of them take the judge's flags and how they count empty responses; this module holds each one's flags,
file reading and table rows.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_dpo.benchmarks.judge_config import JudgeConfig, JudgeConfigError, JudgeError
from ue_dpo.benchmarks.nlp import AMBER_SPACY_MODEL, OBJECT_HALBENCH_SPACY_MODEL, NLPResourceError
from ue_dpo.benchmarks.registry import Benchmark, score_commands
from ue_dpo.commands import exit_with_user_error, int_at_least
from ue_dpo.evaluation.judge_settings import (
    JUDGE_MAX_RETRIES_ENV,
    JUDGE_MODEL_ENV,
    JUDGE_TIMEOUT_ENV,
    JUDGE_UNPARSED_AS_ZERO_ENV,
    unparsed_as_zero,
)

JUDGE_FLAGS = {
    "model": "--judge-model",
    "base_url": "--judge-base-url",
    "api_key": "OPENAI_API_KEY",
    "cache_dir": "--judge-cache-dir",
    "max_retries": "--judge-max-retries",
    "timeout": "--judge-timeout",
    "allow_failures": "--allow-judge-failures",
}

UNPARSED_AS_ZERO_FLAG = "--judge-unparsed-as-zero"

SCORED: dict[str, tuple[Benchmark, ...]] = score_commands()  # subcommand -> the benchmarks it scores
# How the official code scores an empty response, which we keep (so the numbers stay the official ones).
EMPTY_RESPONSE_SCORING = {
    command: "; ".join(benchmark.empty_responses for benchmark in benchmarks) for command, benchmarks in SCORED.items()
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge-model", help=f"judge model name (default: ${JUDGE_MODEL_ENV})")
    parser.add_argument(
        "--judge-base-url",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
        "(default: $OPENAI_BASE_URL, else api.openai.com); the key is read from $OPENAI_API_KEY",
    )
    parser.add_argument(
        "--judge-cache-dir",
        type=Path,
        help="on-disk cache of judge replies (default: $UE_DPO_JUDGE_CACHE_DIR, else a folder per "
        "server under ~/.cache/ue_dpo/judge)",
    )
    parser.add_argument(
        "--judge-max-retries",
        type=int_at_least(0),
        metavar="N",
        help=f"retries of a failed judge request after the first attempt (default: ${JUDGE_MAX_RETRIES_ENV}, else "
        f"{JudgeConfig.max_retries})",
    )
    parser.add_argument(
        "--judge-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help=f"seconds to wait for one judge reply (default: ${JUDGE_TIMEOUT_ENV}, else {JudgeConfig.timeout:g})",
    )
    parser.add_argument(
        "--allow-judge-failures",
        action="store_true",
        help="count items the judge never answered (judge_failures) instead of stopping",
    )


def _judge(args: argparse.Namespace):
    from ue_dpo.evaluation.judge_settings import task_judge  # loads the openai client, which only judged runs need

    if not (args.judge_model or os.environ.get(JUDGE_MODEL_ENV, "").strip()):
        raise JudgeConfigError(
            f"name the judge model with --judge-model MODEL (or {JUDGE_MODEL_ENV}); for a local vLLM "
            "server also pass --judge-base-url http://HOST:PORT/v1"
        )
    metadata = {
        "judge_model": args.judge_model,
        "judge_base_url": args.judge_base_url,
        "judge_cache_dir": None if args.judge_cache_dir is None else str(args.judge_cache_dir),
        "judge_max_retries": args.judge_max_retries,
        "judge_timeout": args.judge_timeout,
        "allow_judge_failures": True if args.allow_judge_failures else None,
    }
    return task_judge(f"ue-dpo score {args.benchmark}", metadata, setting_names=JUDGE_FLAGS)


def _score_amber(args: argparse.Namespace) -> dict[str, Any]:
    from ue_dpo.benchmarks.amber import score_amber_files  # loads spaCy and NLTK, which only this benchmark needs

    result = score_amber_files(args.data_dir, args.responses, nlp=args.spacy_model, parse=args.answer_parse)
    return {**result, "spacy_model": args.spacy_model}


def _score_object_halbench(args: argparse.Namespace) -> dict[str, Any]:
    # spaCy, NLTK and the COCO annotations are loaded only for this benchmark
    from ue_dpo.benchmarks.object_halbench import load_object_halbench_answers, score_object_halbench
    from ue_dpo.evaluation.coco_ground_truth import cached_coco_ground_truth

    answers = load_object_halbench_answers(args.responses)
    image_ids = {
        answer["image_id"]
        for answer in answers
        if isinstance(answer, dict) and isinstance(answer.get("image_id"), (int, str))
    }
    ground_truth = cached_coco_ground_truth(args.coco_dir, image_ids)
    judge = _judge(args) if args.extractor == "gpt" else None
    result = score_object_halbench(ground_truth, answers, extractor=args.extractor, judge=judge, nlp=args.spacy_model)
    if judge is not None:
        result.update(spacy_model=args.spacy_model, judge=judge.config.public_dict())
    return result


def _score_mmhal_bench(args: argparse.Namespace) -> dict[str, Any]:
    from ue_dpo.benchmarks.mmhal import (  # numpy and the judge, which only this benchmark needs
        MMHAL_NUM_ITEMS,
        load_mmhal_responses,
        mmhal_metrics,
        score_mmhal_items,
    )

    judge = _judge(args)
    zero = unparsed_as_zero({"judge_unparsed_as_zero": True if args.judge_unparsed_as_zero else None})
    items = load_mmhal_responses(args.responses, expected_items=None)
    if len(items) != MMHAL_NUM_ITEMS and not args.allow_subset:
        raise ValueError(
            f"MMHal-Bench responses file {args.responses} has {len(items)} items, expected "
            f"{MMHAL_NUM_ITEMS}; answer every item, or pass --allow-subset to score these {len(items)}."
        )
    records = score_mmhal_items(items, judge, unparsed_as_zero=zero)
    metrics = mmhal_metrics(records, unparsed_fix=f"pass {UNPARSED_AS_ZERO_FLAG}")
    return {**metrics, "judge": judge.config.public_dict(), "judge_unparsed_as_zero": zero}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def _amber_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [(f"generative {key}", result["generative"][key]) for key in ("CHAIR", "Cover", "Hal", "Cog", "n")]
    for group in ("overall", "existence", "attribute", "relation"):
        rows += [
            (f"{group} {key}", result["discriminative"][group][key])
            for key in ("Accuracy", "Precision", "Recall", "F1")
        ]
    rows += [
        ("empty responses", result["generative"]["empty"]),
        ("unparsed answers", result["discriminative"]["overall"]["unparsed"]),
        ("AMBER Score", result["amber_score"]),
        ("answer parse", result["parse"]),
    ]
    return rows


def _object_halbench_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = ("chair_s", "chair_s_all", "chair_i", "recall", "n", "missing", "empty", "extraction_failures", "extractor")
    return [(key, result[key]) for key in keys] + (
        [("judge model", result["judge"]["model"])] if "judge" in result else []
    )


def _mmhal_bench_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [(key, result[key]) for key in ("score", "hallucination_rate", "informativeness")]
    rows += [(f"score {kind}", value) for kind, value in result["per_type"].items()]
    return rows + [(key, result[key]) for key in ("n", "empty", "judge_model", "judge_failures", "judge_unparsed")]


def _empty_responses(result: dict[str, Any], benchmark: str) -> int:
    return sum(scored.empty_count(result) for scored in SCORED[benchmark] if scored.empty_count is not None)


def _run(args: argparse.Namespace) -> None:
    try:
        result = _COMMANDS[args.benchmark].score(args)
    except (OSError, ValueError, NLPResourceError, JudgeError) as error:
        exit_with_user_error(f"score {args.benchmark}", error)
    empty = _empty_responses(result, args.benchmark)
    if empty:
        print(
            f"ue-dpo score {args.benchmark}: note: {empty} response{'s are' if empty != 1 else ' is'} empty; "
            f"{EMPTY_RESPONSE_SCORING[args.benchmark]} (counted as `empty`)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
        return
    rows = _COMMANDS[args.benchmark].rows(result)
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {_format(value)}" for name, value in rows))


def _amber_arguments(amber: argparse.ArgumentParser) -> None:
    amber.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="AMBER's data/ folder (annotations.json, relation.json, safe_words.txt)",
    )
    amber.add_argument(
        "--responses", type=Path, required=True, help='JSON list of {"id", "response"} (AMBER\'s format)'
    )
    amber.add_argument(
        "--spacy-model",
        default=AMBER_SPACY_MODEL,
        help=f"spaCy pipeline for word similarity (default: {AMBER_SPACY_MODEL})",
    )
    amber.add_argument(
        "--answer-parse",
        choices=("exact", "lenient"),
        default="exact",
        help="exact: the official exact 'Yes'/'No' (default); lenient: first word, any case (not comparable)",
    )


def _object_halbench_arguments(object_halbench: argparse.ArgumentParser) -> None:
    object_halbench.add_argument(
        "--coco-dir",
        type=Path,
        required=True,
        help="folder with instances_{train,val}2014.json and captions_{train,val}2014.json",
    )
    object_halbench.add_argument(
        "--responses",
        type=Path,
        required=True,
        help='JSON lines with "question_id", "image_id", "text" (and "prompt" for --extractor gpt)',
    )
    object_halbench.add_argument(
        "--extractor",
        choices=("nltk", "gpt"),
        default="nltk",
        help="nltk: CHAIR's rule path (default); gpt: the LLM extraction of the published numbers",
    )
    object_halbench.add_argument(
        "--spacy-model",
        default=OBJECT_HALBENCH_SPACY_MODEL,
        help=f"spaCy pipeline of the gpt extractor (default: {OBJECT_HALBENCH_SPACY_MODEL})",
    )


def _mmhal_bench_arguments(mmhal: argparse.ArgumentParser) -> None:
    mmhal.add_argument(
        "--responses", type=Path, required=True, help="the official response template with model_answer filled in"
    )
    mmhal.add_argument("--allow-subset", action="store_true", help="score fewer than the 96 items")
    mmhal.add_argument(
        UNPARSED_AS_ZERO_FLAG,
        action="store_true",
        help="score 0, as the official script does, a judge reply that still names zero or several "
        "ratings after the retries, instead of stopping (counted as judge_unparsed; default: "
        f"${JUDGE_UNPARSED_AS_ZERO_ENV})",
    )


@dataclass(frozen=True)
class _Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # its own flags (the judge's are added for judged benchmarks)
    score: Callable[[argparse.Namespace], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[tuple[str, Any]]]


# The command-line side of each registry `score_command`: its flags, how it reads the files, its table.
_COMMANDS = {
    "amber": _Command(
        "AMBER: CHAIR, Cover, Hal, Cog, yes/no metrics, AMBER Score", _amber_arguments, _score_amber, _amber_rows
    ),
    "object_halbench": _Command(
        "Object-HalBench: CHAIR on COCO objects",
        _object_halbench_arguments,
        _score_object_halbench,
        _object_halbench_rows,
    ),
    "mmhal_bench": _Command(
        "MMHal-Bench: judge ratings 0-6", _mmhal_bench_arguments, _score_mmhal_bench, _mmhal_bench_rows
    ),
}


def register(commands) -> None:
    score = commands.add_parser("score", help="score saved responses of AMBER, Object-HalBench or MMHal-Bench")
    benchmarks = score.add_subparsers(dest="benchmark", required=True)
    if set(_COMMANDS) != set(SCORED):
        raise RuntimeError(
            f"the registry's score commands ({', '.join(SCORED)}) and the command-line ones "
            f"({', '.join(_COMMANDS)}) differ; give each `score_command` of ue_dpo.benchmarks.registry "
            f"an entry in ue_dpo.commands.score._COMMANDS"
        )
    for name, command in _COMMANDS.items():  # in this order on the command line
        scored = SCORED[name]
        parser = benchmarks.add_parser(name, help=command.help)
        command.arguments(parser)
        if any(benchmark.judged != "never" for benchmark in scored):
            _add_judge_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        parser.set_defaults(handler=_run)

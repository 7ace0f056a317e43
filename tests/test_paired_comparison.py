"""Paired bootstrap intervals of metric differences (ue_dpo.statistics, ue_dpo.benchmarks.paired_comparison) and
`ue-dpo compare` on lmms-eval output folders in lmms-eval 0.7.3's logged-samples format, hand-written."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ue_dpo.benchmarks.judge import JudgeResult
from ue_dpo.benchmarks.mmhal import mmhal_item_record
from ue_dpo.benchmarks.paired_comparison import (
    PairingError,
    paired_differences,
    paired_records,
)
from ue_dpo.cli import main
from ue_dpo.evaluation.shapes_caption import blind_spots_process_results, shapes_process_results
from ue_dpo.experiment import embedded_default_path
from ue_dpo.experiment.config import SYNTHETIC_PATHS, load_experiment
from ue_dpo.experiment.outputs import CompareError, compare_folders, run_folder
from ue_dpo.experiment.runner import ExperimentRunner
from ue_dpo.experiment.stages import StageError
from ue_dpo.statistics import percentile_interval, seed_level_interval

REPO = Path(__file__).resolve().parents[1]


def logged_sample(doc_id: int, target: str, response: str, metrics: dict) -> dict:
    """One line of lmms-eval 0.7.3's *_samples_<task>.jsonl for a generate_until task
    (EvaluationTracker.save_results_samples)."""
    return {
        "doc_id": doc_id,
        "target": target,
        "filtered_resps": response,
        "token_counts": [None],
        "doc_hash": "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b",
        **metrics,
        "input": "Describe this image.",
    }


def shapes_samples(responses: list[str], truths: list[list[str]]) -> list[dict]:
    """What the shapes_caption task logs: its process_results record under every metric name."""
    return [
        logged_sample(doc_id, f"caption {doc_id}", response, shapes_process_results({"shapes": truth}, [response]))
        for doc_id, (response, truth) in enumerate(zip(responses, truths))
    ]


def amber_samples(records: list[dict]) -> list[dict]:
    names = (
        ("chair", "cover", "hal", "cog", "amber_score")
        if records[0]["task"] == "generative"
        else ("accuracy", "precision", "recall", "f1")
    )
    return [
        logged_sample(doc_id, str(record["id"]), "...", {name: record for name in names})
        for doc_id, record in enumerate(records)
    ]


def generative_record(item_id: int, mentions: int, hallucinated: int, truth: int, covered: int) -> dict:
    return {
        "id": item_id,
        "task": "generative",
        "missing": False,
        "empty": False,
        "mentions": mentions,
        "hallucinated_mentions": hallucinated,
        "truth_objects": truth,
        "covered_truth_objects": covered,
        "hallu_objects": 2,
        "mentioned_hallu_objects": 0,
        "hallucination_free": hallucinated == 0,
        "counted_nouns": [],
        "hallucinated_nouns": [],
    }


def mmhal_samples(ratings: list[int], judge_model: str = "judge-x") -> list[dict]:
    samples = []
    for doc_id, rating in enumerate(ratings):
        item = {"question_type": "attribute", "question": f"q{doc_id}", "model_answer": "..."}
        record = mmhal_item_record(item, JudgeResult(content=f"Rating: {rating}", judge_model=judge_model))
        samples.append(
            logged_sample(
                doc_id,
                f"answer {doc_id}",
                "...",
                {name: record for name in ("score", "hallucination_rate", "informativeness")},
            )
        )
    return samples


# -- the interval, by hand ----------------------------------------------------------------------------------------

# Two images, truth circle and square. A never hallucinates; B adds a star to the first caption.
HAND_A = shapes_samples(["A red circle.", "A green square."], [["circle"], ["square"]])
HAND_B = shapes_samples(["A red circle and a blue star.", "A green square."], [["circle"], ["square"]])


def test_two_item_resamples_give_the_interval_computed_by_hand():
    """Each resample of two items is (0,0), (0,1), (1,0) or (1,1), each with probability 1/4, so the 2.5% and
    97.5% quantiles of 4000 resamples are the all-item-1 and all-item-0 values."""
    result = paired_differences(HAND_A, HAND_B, "shapes_caption", resamples=4000, seed=0)
    # chair_s_all: B hallucinates in 1 of 2 captions; (0,0) -> 100, (1,1) -> 0.
    assert result["chair_s_all"] == (0.0, 50.0, 50.0, 0.0, 100.0)
    # chair_i: B has 1 hallucinated of 3 mentions (pooled: 33.3, a mean of per-caption ratios would say 25);
    # (0,0) -> 2 of 4 mentions = 50, (1,1) -> 0 of 2.
    assert result["chair_i"] == pytest.approx((0.0, 100 / 3, 100 / 3, 0.0, 50.0))
    # recall: both name every true shape on every resample.
    assert result["recall"] == (100.0, 100.0, 0.0, 0.0, 0.0)
    # mean_shapes_mentioned: 1.5 vs 1 shapes per caption; (0,0) -> 2 - 1, (1,1) -> 0.
    assert result["mean_shapes_mentioned"] == (1.0, 1.5, 0.5, 0.0, 1.0)


def test_faint_recall_is_resampled_from_the_faint_shapes_of_the_drawn_items():
    docs = [
        {"shapes": ["circle", "star"], "faint": ["star"]},
        {"shapes": ["square", "triangle", "circle"], "faint": ["triangle"]},
    ]

    def samples(responses):
        return [
            logged_sample(doc_id, f"caption {doc_id}", response, blind_spots_process_results(doc, [response]))
            for doc_id, (doc, response) in enumerate(zip(docs, responses))
        ]

    a = samples(["There is a red circle.", "There is a red square and a blue circle."])
    b = samples(["There is a red circle and a small grey star.", "There is a red square and a blue circle."])
    result = paired_differences(a, b, "shapes_blind_spots", resamples=4000, seed=0)
    # B names the faint star of item 0, no one the faint triangle of item 1: 1 of 2 against 0 of 2;
    # resample (0,0) -> 100 - 0, (1,1) -> 0 - 0.
    assert result["faint_recall"] == (0.0, 50.0, 50.0, 0.0, 100.0)
    assert result["recall"] == pytest.approx((60.0, 80.0, 20.0, 0.0, 50.0))


def test_amber_chair_is_resampled_from_counts_with_the_official_rounding():
    """CHAIR = round(hallucinated / (mentions + 0.001) * 100, 1) over the drawn items."""
    a = amber_samples(
        [
            generative_record(1, mentions=4, hallucinated=1, truth=3, covered=2),
            generative_record(2, mentions=1, hallucinated=0, truth=1, covered=1),
        ]
    )
    b = amber_samples(
        [
            generative_record(1, mentions=4, hallucinated=0, truth=3, covered=3),
            generative_record(2, mentions=1, hallucinated=0, truth=1, covered=1),
        ]
    )
    result = paired_differences(a, b, "amber_generative", resamples=4000, seed=1)
    # A: 1 / 5.001 -> 20.0 (the mean of the items' ratios would be 12.5); resample (0,0): 2 / 8.001 -> 25.0.
    assert result["chair"] == pytest.approx((20.0, 0.0, -20.0, -25.0, 0.0))
    # Cover A 3 / 4.001 -> 75.0, B 4 / 4.001 -> 100.0; (0,0): 4 / 6.001 -> 66.7 vs 100.0; (1,1): 100 vs 100.
    assert result["cover"] == pytest.approx((75.0, 100.0, 25.0, 0.0, 33.3))
    # Hal: 100 - 1 / 2.001 * 100 -> 50.0 against 100 - 2 / 2.001 * 100 -> 0.0.
    assert result["hal"] == pytest.approx((50.0, 0.0, -50.0, -100.0, 0.0))


def test_amber_f1_and_mmhal_scores_of_the_full_sample_are_the_official_values():
    truths, answers_a, answers_b = ["no", "no", "yes", "yes"], ["No", "Yes", "Yes", "No"], ["No", "No", "Yes", "Yes"]
    records = [
        [
            {
                "id": 1005 + i,
                "task": "discriminative",
                "group": "existence",
                "truth": truth,
                "answer": answer,
                "unparsed": False,
                "missing": False,
            }
            for i, (truth, answer) in enumerate(zip(truths, answers))
        ]
        for answers in (answers_a, answers_b)
    ]
    f1 = paired_differences(*map(amber_samples, records), "amber_discriminative", resamples=50, seed=0)["f1"]
    # A: precision = recall = 1 / 2.001 -> 50.0, F1 = 2 * .5 * .5 / 1.0001 -> 50.0; B: 2 / 2.001 -> 100.0 both.
    assert (f1.a, f1.b, f1.delta) == (50.0, 100.0, 50.0)
    assert f1.low <= f1.delta <= f1.high

    mmhal = paired_differences(
        mmhal_samples([1, 4, 5]), mmhal_samples([3, 4, 6]), "mmhal_bench", resamples=4000, seed=0
    )
    # per-item score differences 2, 0, 1: all-item-1 (p = 1/27) -> 0, all-item-0 -> 2.
    assert mmhal["score"] == pytest.approx((10 / 3, 13 / 3, 1.0, 0.0, 2.0))
    assert mmhal["hallucination_rate"] == pytest.approx((1 / 3, 0.0, -1 / 3, -1.0, 0.0))


# -- the interval, against a naive re-implementation ---------------------------------------------------------------


def naive_chair_i_interval(
    a: list[tuple[int, int]], b: list[tuple[int, int]], resamples: int, seed: int, pooled: bool
) -> tuple[float, float]:
    """(hallucinated, mentions) per item; the documented draw: numpy.random.default_rng(seed).integers(0, n, (R, n))."""

    def chair_i(items: list[tuple[int, int]]) -> float:
        if pooled:
            return sum(h for h, _ in items) / sum(m for _, m in items) * 100
        return sum(h / m * 100 for h, m in items) / len(items)

    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    deltas = [chair_i([b[i] for i in row]) - chair_i([a[i] for i in row]) for row in draws]
    return tuple(np.quantile(deltas, [0.025, 0.975]))


TRUTHS = [
    ["circle", "square"],
    ["star"],
    ["triangle", "circle", "square"],
    ["square"],
    ["star", "circle"],
    ["triangle"],
    ["circle"],
    ["square", "star"],
    ["triangle", "star"],
    ["circle", "triangle"],
]
CAPTIONS_A = [
    "A circle, a square and a star.",
    "A star.",
    "A triangle, a circle and a square.",
    "A square and a circle.",
    "A star.",
    "A triangle and a square and a star.",
    "A circle.",
    "A square.",
    "A triangle and a circle.",
    "A circle and a triangle.",
]
CAPTIONS_B = [
    "A circle and a square.",
    "A star and a circle.",
    "A triangle, a circle, a square and a star.",
    "A square.",
    "A star, a circle.",
    "A triangle.",
    "A circle and a star.",
    "A square and a star.",
    "A triangle.",
    "A circle, a triangle, a square.",
]


def counts(captions: list[str]) -> list[tuple[int, int]]:
    """(hallucinated, mentions) per caption, counted word by word apart from the benchmark code."""
    found = []
    for caption, truth in zip(captions, TRUTHS):
        named = re.findall(r"circle|square|triangle|star", caption.lower())
        found.append((sum(shape not in truth for shape in named), len(named)))
    return found


def test_chair_i_interval_equals_a_naive_bootstrap_of_pooled_counts_and_not_of_per_item_ratios():
    result = paired_differences(
        shapes_samples(CAPTIONS_A, TRUTHS), shapes_samples(CAPTIONS_B, TRUTHS), "shapes_caption", resamples=500, seed=7
    )["chair_i"]
    a, b = counts(CAPTIONS_A), counts(CAPTIONS_B)
    assert result.a == pytest.approx(sum(h for h, _ in a) / sum(m for _, m in a) * 100)
    assert result.b == pytest.approx(sum(h for h, _ in b) / sum(m for _, m in b) * 100)
    pooled = naive_chair_i_interval(a, b, 500, 7, pooled=True)
    assert (result.low, result.high) == pytest.approx(pooled)
    averaged = naive_chair_i_interval(a, b, 500, 7, pooled=False)
    assert max(abs(x - y) for x, y in zip(pooled, averaged)) > 1  # so the test above tells the two apart


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    samples = shapes_samples(CAPTIONS_A, TRUTHS), shapes_samples(CAPTIONS_B, TRUTHS)
    first = paired_differences(*samples, "shapes_caption", resamples=200, seed=3)
    assert paired_differences(*samples, "shapes_caption", resamples=200, seed=3) == first
    assert paired_differences(*samples, "shapes_caption", resamples=200, seed=4)["chair_i"] != first["chair_i"]


def test_percentile_interval_of_an_enumerated_distribution():
    # 0..40: the 2.5% quantile sits at position 0.025 * 40 = 1, the 97.5% one at 39.
    assert percentile_interval(list(range(41))) == pytest.approx((1.0, 39.0))
    assert percentile_interval([5.0, 1.0, 3.0], level=0.5) == pytest.approx((2.0, 4.0))


# -- refusals -----------------------------------------------------------------------------------------------------


def test_runs_on_different_items_are_refused():
    with pytest.raises(PairingError, match=r"do not cover the same items \(A has 2, B has 1; doc_ids only in A: 1"):
        paired_records(HAND_A, HAND_B[:1], "shapes_caption")
    other_data = [{**sample, "target": "another caption"} for sample in HAND_B]
    with pytest.raises(PairingError, match="2 doc_id\\(s\\) have different targets, e.g. doc_id 0"):
        paired_records(HAND_A, other_data, "shapes_caption")
    with pytest.raises(PairingError, match="doc_id 0 is logged twice"):
        paired_records(HAND_A + HAND_A[:1], HAND_B, "shapes_caption")
    with pytest.raises(PairingError, match="differ in judge_model"):
        paired_records(mmhal_samples([1, 2]), mmhal_samples([1, 2], judge_model="judge-y"), "mmhal_bench")
    with pytest.raises(PairingError, match="no paired comparison for task 'mme'; supported: object_halbench"):
        paired_records(HAND_A, HAND_B, "mme")
    with pytest.raises(PairingError, match="logged sample 0 has no `doc_id` or no `chair` record"):
        paired_records(HAND_A, HAND_B, "amber_generative")


# -- across seeds -------------------------------------------------------------------------------------------------


def test_seed_level_interval_is_the_t_interval_of_the_mean_difference():
    # mean 2, s = 1, t(0.975, 2 df) = 4.303 from the table: 2 -+ 4.303 / sqrt(3).
    result = seed_level_interval([1.0, 2.0, 3.0])
    assert result.mean == 2.0 and result.seeds == 3
    assert (result.low, result.high) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5), abs=1e-3)
    differences = [0.4, -0.1, 0.9, 0.3, 0.2]
    reference = stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
    assert seed_level_interval(differences)[1:3] == pytest.approx((reference.low, reference.high))
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_level_interval([0.5])


# -- the command --------------------------------------------------------------------------------------------------

LMMS_EVAL_DATE = "20260101_000000"


def write_lmms_eval_output(
    folder: Path, model: str, samples: dict[str, list[dict]], judges: dict[str, str] | None = None
) -> None:
    """An lmms-eval --output_path folder: <model_name_sanitized>/<date>_results.json and _samples_<task>.jsonl;
    `judges` are the judge models our judged tasks record in their config (metadata.judge)."""
    model_dir = folder / model
    model_dir.mkdir(parents=True)
    results = {
        "results": {task: {"alias": task} for task in samples},
        "n-samples": {task: {"original": len(lines), "effective": len(lines)} for task, lines in samples.items()},
        "configs": {task: {"metadata": {"judge": {"model": judge}}} for task, judge in (judges or {}).items()},
        "higher_is_better": {},
        "config": {"model": "ue_dpo_hf"},
    }
    (model_dir / f"{LMMS_EVAL_DATE}_results.json").write_text(json.dumps(results))
    for task, lines in samples.items():
        (model_dir / f"{LMMS_EVAL_DATE}_samples_{task}.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )


@pytest.fixture
def demo_output(tmp_path, monkeypatch):
    """A `ue-dpo run` output folder as the README names it, with two evaluated runs."""
    monkeypatch.chdir(tmp_path)
    root = Path("demo_output")
    write_lmms_eval_output(root / "evals" / "dpo", "runs__dpo", {"shapes_caption": shapes_samples(CAPTIONS_A, TRUTHS)})
    write_lmms_eval_output(
        root / "evals" / "ue_dpo",
        "runs__ue_dpo",
        {"shapes_caption": shapes_samples(CAPTIONS_B, TRUTHS), "mmhal_bench": mmhal_samples([1, 2, 3])},
    )
    (root / "results.json").write_text(json.dumps({"runs": [{"name": "dpo"}, {"name": "ue_dpo"}]}))
    return root


def readme_compare_commands() -> list[list[str]]:
    page = (REPO / "docs" / "evaluation.md").read_text()
    section = page[page.index("## Is the difference real? (`ue-dpo compare`)") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```\n", section.index("```bash") + 7)]
    return [shlex.split(line.split("#")[0]) for line in block.strip().splitlines()]


def test_the_readme_commands_print_the_table_and_the_json(demo_output, capsys):
    table_command, json_command = readme_compare_commands()
    assert table_command[:2] == json_command[:2] == ["ue-dpo", "compare"]
    expected = paired_differences(
        shapes_samples(CAPTIONS_A, TRUTHS), shapes_samples(CAPTIONS_B, TRUTHS), "shapes_caption", resamples=1000, seed=0
    )

    main(table_command[1:])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["task", "metric", "A", "B", "Δ", "(B", "−", "A)", "95%", "CI"]
    chair_i = expected["chair_i"]
    assert table[3].split() == [
        "shapes_caption",
        "chair_i",
        f"{chair_i.a:.2f}",
        f"{chair_i.b:.2f}",
        f"{chair_i.delta:+.2f}",
        f"[{chair_i.low:+.2f},",
        f"{chair_i.high:+.2f}]",
    ]
    assert "1000 resamples, seed 0" in table[-2]
    assert table[-1] == "not compared: mmhal_bench (logged only in B)"

    main(json_command[1:])
    printed = json.loads(capsys.readouterr().out)
    assert (printed["seed"], printed["resamples"], printed["level"]) == (0, 1000, 0.95)
    assert printed["tasks"]["shapes_caption"] == {name: value._asdict() for name, value in expected.items()}
    assert printed["b"] == "demo_output/evals/ue_dpo"


def test_the_command_names_the_fix_for_bad_input(demo_output, capsys):
    write_lmms_eval_output(Path("limited"), "runs__dpo", {"shapes_caption": shapes_samples(CAPTIONS_A[:4], TRUTHS)})
    cases = [
        (
            ["compare", "limited", "demo_output/evals/ue_dpo"],
            re.escape(
                "shapes_caption: the runs do not cover the same items (A has 4, B has 10; doc_ids only in A: none; "
                "only in "
                "B: 4, 5, 6, 7, 8 ...); evaluate both on the same data with the same --limit"
            ),
        ),
        (
            ["compare", "demo_output", "demo_output/evals/dpo"],
            re.escape(
                "demo_output is the output folder of `ue-dpo run`, which holds several runs (dpo, ue_dpo); name two of "
                "them: ue-dpo compare RUN_A RUN_B --experiment demo_output"
            ),
        ),
        (["compare", "dpo", "ppo", "--experiment", "demo_output"], "has no evaluated run 'ppo'"),
        (
            ["compare", "dpo", "ue_dpo", "--experiment", "demo_output", "--resamples", "0"],
            "--resamples must be at least 1, got 0",
        ),
        (
            ["compare", "dpo", "ue_dpo", "--experiment", "demo_output", "--tasks", "mmhal_bench"],
            "no task to compare .* \\(mmhal_bench: logged only in B\\)",
        ),
        # evaluated without --log_samples: lmms-eval wrote the results, not the items they come from
        (
            ["compare", "unlogged", "demo_output/evals/ue_dpo"],
            re.escape(
                "task shapes_caption under unlogged/runs__dpo was evaluated without --log_samples (its results file "
                "has "
                "no samples file beside it), so its items cannot be compared: evaluate it again with lmms-eval "
                "--log_samples"
            ),
        ),
    ]
    write_lmms_eval_output(Path("unlogged"), "runs__dpo", {"shapes_caption": shapes_samples(CAPTIONS_A, TRUTHS)})
    for samples in Path("unlogged").rglob("*_samples_*.jsonl"):
        samples.unlink()
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2, error  # a user error, as for every other command
        assert error.startswith("ue-dpo compare: error: "), error
        assert re.search(message, error), error


def test_comparing_a_run_with_itself_gets_a_note(demo_output, capsys):
    main(["compare", "dpo", "dpo", "--experiment", "demo_output"])
    table = capsys.readouterr().out
    assert "note: A and B are the same folder (demo_output/evals/dpo), so every Δ is 0" in table
    main(["compare", "demo_output/evals/dpo", "demo_output/evals/dpo/", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["note"].startswith("A and B are the same folder")
    main(["compare", "dpo", "ue_dpo", "--experiment", "demo_output", "--json"])
    assert "note" not in json.loads(capsys.readouterr().out)


def test_experiment_run_names_resolve_to_the_folders_ue_dpo_run_evaluates_into(tmp_path):
    runner = ExperimentRunner(load_experiment(embedded_default_path(), output=tmp_path / "out"))
    run = runner.experiment.run("dpo")
    runner.paths.update(
        {f"synthetic.{name}": str(tmp_path / name) for name in SYNTHETIC_PATHS},
        **{f"runs.{run.name}": str(tmp_path / "model")},
    )
    [entry] = runner.lmms_eval_entries(run.name, runner.evaluation_settings())
    output_path = Path(entry["output_path"])
    output_path.mkdir(parents=True)
    assert run_folder("dpo", tmp_path / "out") == output_path.parent


def test_a_run_evaluated_in_several_protocols_is_compared_over_all_of_them(tmp_path):
    for run, captions, ratings in (("a", CAPTIONS_A, [1, 2, 3]), ("b", CAPTIONS_B, [2, 2, 5])):
        write_lmms_eval_output(
            tmp_path / run / "shapes_caption", "m", {"shapes_caption": shapes_samples(captions, TRUTHS)}
        )
        write_lmms_eval_output(
            tmp_path / run / "mmhal_bench",
            "m",
            {"mmhal_bench": mmhal_samples(ratings)},
            judges={"mmhal_bench": "judge-x"},
        )
    comparison = compare_folders(tmp_path / "a", tmp_path / "b", resamples=50, seed=0)
    assert sorted(comparison["tasks"]) == ["mmhal_bench", "shapes_caption"]
    assert comparison["tasks"]["mmhal_bench"]["score"]["delta"] == pytest.approx(1.0)  # (2+2+5)/3 - (1+2+3)/3
    write_lmms_eval_output(tmp_path / "a" / "again", "m", {"shapes_caption": shapes_samples(CAPTIONS_A, TRUTHS)})
    with pytest.raises(StageError, match=r"both hold \['shapes_caption'\]; keep one lmms-eval run per task there"):
        compare_folders(tmp_path / "a", tmp_path / "b", resamples=50, seed=0)


def test_runs_scored_by_different_judges_are_refused(tmp_path):
    for run, judge in (("a", "judge-x"), ("b", "judge-y")):
        write_lmms_eval_output(
            tmp_path / run,
            "m",
            {
                "mmhal_bench": mmhal_samples([1, 2, 3], judge_model=judge),
                "shapes_caption": shapes_samples(CAPTIONS_A, TRUTHS),
            },
            judges={"mmhal_bench": judge},
        )
    with pytest.raises(CompareError, match="mmhal_bench: A was scored with judge judge-x, B with judge judge-y"):
        compare_folders(tmp_path / "a", tmp_path / "b", resamples=50, seed=0)
    # a task scored without a judge against the same task scored with one (Object-HalBench: nltk vs gpt extractor)
    write_lmms_eval_output(tmp_path / "rules", "m", {"shapes_caption": shapes_samples(CAPTIONS_A, TRUTHS)})
    write_lmms_eval_output(
        tmp_path / "gpt",
        "m",
        {"shapes_caption": shapes_samples(CAPTIONS_B, TRUTHS)},
        judges={"shapes_caption": "judge-x"},
    )
    with pytest.raises(CompareError, match="shapes_caption: A was scored with judge none, B with judge judge-x"):
        compare_folders(tmp_path / "rules", tmp_path / "gpt", resamples=50, seed=0)

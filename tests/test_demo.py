"""The README's main command, `make demo`, on the embedded default at small sizes: train, evaluate, report;
killed during a training and run again, it resumes that training from its checkpoint and skips finished stages.
Then, on the same folder, the peers experiment with its baseline, and the README's seeded run with a baseline.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from scipy import stats

from llamafactory_runs import offline_env
from ue_dpo.cli import main
from ue_dpo.machine import summarize_machine
from ue_dpo.synthetic.shapes import EVAL_MANIFEST, SHAPES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
EVAL_IMAGES = 4
DPO_STEPS = 24
SMALL = [
    "synthetic.sft_examples=16",
    "synthetic.preference_pairs=8",
    f"synthetic.eval_images={EVAL_IMAGES}",
    "runs.warmup.overrides.max_steps=2",
    f"runs.dpo.overrides.max_steps={DPO_STEPS}",
    "runs.dpo.overrides.save_steps=1",
    "runs.ue_dpo.overrides.max_steps=2",
    "evaluation.gen_kwargs.max_new_tokens=16",
]
RUN_LABELS = ("base (SFT warm-up)", "DPO", "UE-DPO")


def make_demo(out: Path, stdout=subprocess.PIPE) -> subprocess.Popen:
    arguments = " ".join(f"--set {setting}" for setting in SMALL)
    # `-o .venv/.installed`: use the environment the tests run in, never reinstall it from here
    return subprocess.Popen(
        ["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", "demo", f"DEMO_OUT={out}", f"DEMO_ARGS={arguments}"],
        env=offline_env(),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Three `make demo` runs on one folder: killed during the DPO training, run to the end, run once more."""
    out = tmp_path_factory.mktemp("demo") / "out"
    # its output goes to a file: a pipe nobody reads while waiting would fill up and stop the run
    interrupted_log = out.parent / "interrupted.log"
    with interrupted_log.open("w") as log:
        interrupted = make_demo(out, stdout=log)
    deadline = time.monotonic() + 600
    # any complete DPO checkpoint: with `save_total_limit: 1` each one is deleted when the next is saved
    while not any((out / "runs" / "dpo").glob("checkpoint-*/trainer_state.json")):
        assert interrupted.poll() is None, interrupted_log.read_text()[-6000:]
        assert time.monotonic() < deadline, "no DPO checkpoint within 600 s"
        time.sleep(0.2)
    started = children_of(interrupted.pid)  # ue-dpo and its llamafactory-cli
    os.killpg(interrupted.pid, signal.SIGKILL)
    interrupted.wait()
    _, left_running = psutil.wait_procs(started, timeout=60)
    assert not left_running, "the killed `ue-dpo run` left its training running"
    killed_state = {path.name for path in (out / "state").iterdir()}
    # Complete checkpoints only: the kill may land while a checkpoint is being written.
    killed_checkpoints = [
        path.parent.name
        for path in sorted(
            (out / "runs" / "dpo").glob("checkpoint-*/trainer_state.json"),
            key=lambda path: int(path.parent.name.split("-")[1]),
        )
    ]
    resumed = finish(make_demo(out))
    results = json.loads((out / "results.json").read_text())
    again = finish(make_demo(out))
    return {
        "out": out,
        "killed_state": killed_state,
        "killed_checkpoints": killed_checkpoints,
        "resumed": resumed,
        "again": again,
        "results": results,
        "results_again": json.loads((out / "results.json").read_text()),
    }


def test_the_killed_run_had_finished_the_warm_up_but_not_the_dpo_training(demo):
    assert {"synthetic.done.json", "train-warmup.done.json", "train-dpo.started.json"} <= demo["killed_state"]
    assert "train-dpo.done.json" not in demo["killed_state"]
    assert not any(name.startswith("eval-") for name in demo["killed_state"])
    assert demo["killed_checkpoints"] and all(name != f"checkpoint-{DPO_STEPS}" for name in demo["killed_checkpoints"])


def test_the_rerun_skips_finished_stages_and_resumes_training_from_the_checkpoint(demo):
    resumed = demo["resumed"]
    assert "synthetic shapes world: done, skipped" in resumed
    assert "train warmup: done, skipped" in resumed
    match = re.search(r"train dpo: resuming from (\S+/checkpoint-(\d+))", resumed)
    assert match, resumed[-4000:]
    step = int(match.group(2))
    assert match.group(1).endswith(demo["killed_checkpoints"][-1])
    assert re.search(rf"Resuming training from checkpoint with epoch \d+ and global step {step}\b", resumed)
    assert "train ue_dpo: llamafactory-cli train" in resumed
    dpo_state = json.loads((demo["out"] / "runs" / "dpo" / "trainer_state.json").read_text())
    assert dpo_state["global_step"] == DPO_STEPS
    marker = json.loads((demo["out"] / "state" / "train-dpo.done.json").read_text())
    assert marker["resumed_from"] == match.group(1)


def test_a_third_run_skips_every_stage_and_reports_the_same_numbers(demo):
    again = demo["again"]
    assert "llamafactory-cli train" not in again and "evaluate: every run done, skipped" in again
    assert "Resuming training" not in again
    assert demo["results_again"]["runs"] == demo["results"]["runs"]


def naive_chair(responses: list[str], truths: list[list[str]]) -> dict:
    """Exact CHAIR counted word by word, apart from the package's code."""
    mentioning = hallucinating = mentions = hallucinated = truth_total = covered = distinct = 0
    for response, truth in zip(responses, truths):
        named = [word[:-1] if word[:-1] in SHAPES else word for word in re.findall(r"[a-z]+", response.lower())]
        named = [word for word in named if word in SHAPES]
        wrong = [word for word in named if word not in truth]
        mentioning += bool(named)
        hallucinating += bool(wrong)
        mentions += len(named)
        hallucinated += len(wrong)
        truth_total += len(truth)
        covered += len(set(truth) & set(named))
        distinct += len(set(named))
    return {
        "chair_s": 100 * hallucinating / mentioning if mentioning else None,
        "chair_s_all": 100 * hallucinating / len(responses),
        "chair_i": 100 * hallucinated / mentions if mentions else None,
        "recall": 100 * covered / truth_total,
        "mean_shapes_mentioned": distinct / len(responses),
    }


def logged_captions(out: Path, run: dict) -> tuple[list[str], list[list[str]]]:
    """A run's captions of the held-out images in doc_id order, and each image's true shapes."""
    manifest = json.loads((out / "synthetic" / "eval" / EVAL_MANIFEST).read_text())
    lines = Path(run["evaluation"]["samples_files"]["shapes_caption"]).read_text().splitlines()
    samples = sorted((json.loads(line) for line in lines), key=lambda sample: sample["doc_id"])
    assert [sample["doc_id"] for sample in samples] == list(range(EVAL_IMAGES))
    responses = [
        sample["filtered_resps"][0] if isinstance(sample["filtered_resps"], list) else sample["filtered_resps"]
        for sample in samples
    ]
    return responses, [manifest[sample["doc_id"]]["shapes"] for sample in samples]


def test_results_json_equals_chair_recomputed_from_the_logged_samples(demo):
    results = demo["results"]
    assert [run["label"] for run in results["runs"]] == list(RUN_LABELS)
    for run in results["runs"]:
        expected = naive_chair(*logged_captions(demo["out"], run))
        measured = run["metrics"]["shapes_caption"]
        for metric, value in expected.items():
            assert measured[metric] == (None if value is None else pytest.approx(value)), (run["name"], metric)


def test_results_record_configs_seeds_versions_and_the_table_and_chart(demo):
    results, out = demo["results"], demo["out"]
    warmup, dpo, ue_dpo = results["runs"]
    assert warmup["training"]["config"]["stage"] == "sft" and warmup["training"]["config"]["max_steps"] == 2
    assert dpo["training"]["config"]["model_name_or_path"] == str(out.resolve() / "runs" / "warmup")
    assert ue_dpo["training"]["config"]["stage"] == "ue_dpo"
    assert (warmup["training"]["seeds"], ue_dpo["training"]["seeds"]) == ({"seed": 0}, {"seed": 0, "ue_seed": 0})
    # the synthetic data was not converted by `ue-dpo data`, so there is no source record to copy
    assert (warmup["training"]["data"], dpo["training"]["data"]) == ({"shapes_sft": None}, {"shapes_pref": None})
    assert dpo["model"] == str(out.resolve() / "runs" / "dpo")
    [protocol] = dpo["evaluation"]["protocols"]
    assert (protocol["tasks"], protocol["backend"], protocol["batch_size"]) == (["shapes_caption"], "ue_dpo_hf", 16)
    assert dpo["evaluation"]["world_size"] == 1
    assert results["evaluation"]["seed"] == [0, 1234, 1234, 1234]
    assert results["versions"]["llamafactory"] == "0.9.5" and results["versions"]["lmms-eval"] == "0.7.3"
    assert results["synthetic_world"]["eval_images"] == EVAL_IMAGES
    table = (out / "results.md").read_text().splitlines()
    for run in results["runs"]:
        metrics = run["metrics"]["shapes_caption"]
        row = next(line for line in table if line.startswith(f"| {run['label']} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        expected = [metrics[name] for name in ("chair_s", "chair_i", "recall", "mean_shapes_mentioned")]
        assert cells == ["–" if value is None else f"{value:.2f}" for value in expected]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_record_the_machine_of_every_stage_as_read_independently(demo):
    """The machine in results.json and results.md: the CPU of /proc/cpuinfo, torch's dispatch ISA, the one thread
    the demo ran with (OMP_NUM_THREADS=1, as offline_env sets) and no GPU (CUDA_VISIBLE_DEVICES empty)."""
    results, out = demo["results"], demo["out"]
    machine = results["machine"]
    block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    cpuinfo = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}
    assert (machine["cpu"]["model"], machine["cpu"]["vendor"]) == (cpuinfo["model name"], cpuinfo["vendor_id"])
    flags = set(cpuinfo["flags"].split())
    assert {flag: machine["cpu"]["isa_flags"][flag] for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")} == {
        flag: flag in flags for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    }
    assert machine["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["torch"]["version"] == torch.__version__
    assert (machine["torch"]["intra_op_threads"], machine["thread_env"]["OMP_NUM_THREADS"]) == (1, "1")
    assert machine["gpus"] == []
    for run in results["runs"]:
        assert run["training"]["machine"] == machine and run["evaluation"]["machine"] == machine, run["name"]
    assert f"Machine: {summarize_machine(machine)}." in (out / "results.md").read_text()


def table_cells(table: str, label: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


def naive_bootstrap_interval(captions_a, captions_b, truths, metric: str, *, seed: int, resamples: int):
    """The 95% percentile interval of naive_chair(B) - naive_chair(A) over items drawn with replacement, the same
    draw for both, by numpy's default generator as ue_dpo.statistics documents it."""
    n = len(truths)
    deltas = []
    for row in np.random.default_rng(seed).integers(0, n, size=(resamples, n)):
        a = naive_chair([captions_a[i] for i in row], [truths[i] for i in row])[metric]
        b = naive_chair([captions_b[i] for i in row], [truths[i] for i in row])[metric]
        if a is not None and b is not None:
            deltas.append(b - a)
    return tuple(np.quantile(deltas, [0.025, 0.975])) if deltas else (None, None)


def test_the_peers_experiment_adds_ddpo_and_tpo_to_the_demo_folder(demo):
    """`ue-dpo run configs/experiments/embedded_peers.yaml` on the demo's folder: only DDPO and TPO are new, and
    every run gets its difference from DPO with the paired bootstrap interval over the held-out images."""
    peers = ["--set", "runs.ddpo.overrides.max_steps=2", "--set", "runs.tpo.overrides.max_steps=2"]
    command = [
        str(Path(sys.executable).with_name("ue-dpo")),
        "run",
        str(REPO / "configs" / "experiments" / "embedded_peers.yaml"),
        "--out",
        str(demo["out"]),
        *(argument for setting in SMALL for argument in ("--set", setting)),
        *peers,
    ]
    done = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    for name in ("warmup", "dpo", "ue_dpo"):
        assert f"train {name}: done, skipped" in done.stdout
    assert "train ddpo: llamafactory-cli train" in done.stdout and "train tpo: llamafactory-cli train" in done.stdout
    assert "evaluate ddpo, tpo with lmms-eval" in done.stdout
    results = json.loads((demo["out"] / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == ["base (SFT warm-up)", "DPO", "DDPO", "TPO", "UE-DPO"]
    by_label = {run["label"]: run for run in results["runs"]}
    assert by_label["DDPO"]["training"]["config"]["ue_weighting"] == "ddpo"
    assert by_label["TPO"]["training"]["config"]["ue_weighting"] == "tpo"
    for label in RUN_LABELS:  # the demo's runs were not redone
        assert (
            by_label[label]["metrics"]
            == next(run for run in demo["results"]["runs"] if run["label"] == label)["metrics"]
        )
    table = (demo["out"] / "results.md").read_text()
    assert all(f"| {label} |" in table for label in by_label)

    comparison = results["comparison"]
    assert (comparison["baseline"], comparison["bootstrap"]) == ("dpo", {"resamples": 1000, "seed": 0})
    dpo_captions, truths = logged_captions(demo["out"], by_label["DPO"])
    metrics = ("chair_s", "chair_i", "recall", "mean_shapes_mentioned")
    assert table_cells(table, "DPO")[1::2] == ["(baseline)"] * len(metrics)
    for run in results["runs"]:
        if run["name"] == "dpo":
            continue
        assert comparison["runs"][run["name"]]["method"] == "paired bootstrap over items"
        captions = logged_captions(demo["out"], run)[0]
        full = naive_chair(captions, truths), naive_chair(dpo_captions, truths)
        for metric, cell in zip(metrics, table_cells(table, run["label"])[1::2]):
            delta = comparison["runs"][run["name"]]["tasks"]["shapes_caption"][metric]
            if full[0][metric] is None or full[1][metric] is None:
                assert delta["delta"] is None and cell == "–"
                continue
            assert delta["delta"] == pytest.approx(full[0][metric] - full[1][metric])
            low, high = naive_bootstrap_interval(dpo_captions, captions, truths, metric, seed=0, resamples=1000)
            assert (delta["low"], delta["high"]) == pytest.approx((low, high)), (run["name"], metric)
            assert cell == f"{delta['delta']:+.2f} [{low:+.2f}, {high:+.2f}]"


T_975_ONE_DEGREE = 12.7062047  # Student t's 97.5% quantile with 1 degree of freedom (two seeds), from the table


def two_seed_interval(first: float, second: float) -> tuple[float, float, float]:
    """Mean of two values and its 95% t interval: s / sqrt(2) = |first - second| / 2."""
    mean, half = (first + second) / 2, T_975_ONE_DEGREE * abs(first - second) / 2
    return mean, mean - half, mean + half


def readme_seeded_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Seeds and a baseline") :]
    block = section[section.index("```bash") + len("```bash") :]
    return shlex.split(block[: block.index("```")].strip())


def seeded_command(out: Path, *more: str) -> list[str]:
    """The README's seeded command at small sizes with two seeds, into `out`, with `more` settings."""
    command = readme_seeded_command()
    assert command[:3] == ["ue-dpo", "run", "configs/experiments/embedded_default.yaml"]
    settings = [
        *SMALL,
        "seeds=[0, 1]",
        "runs.dpo.overrides.max_steps=2",
        "runs.ue_dpo.overrides.save_steps=1",
        "runs.ue_dpo.overrides.save_total_limit=2",
        *more,
    ]
    return [
        str(Path(sys.executable).with_name("ue-dpo")),
        "run",
        str(REPO / command[2]),
        *command[3:],
        *(argument for setting in settings for argument in ("--set", setting)),
        "--out",
        str(out),
    ]


def test_seeds_give_means_intervals_and_deltas_and_each_seed_resumes_on_its_own(demo, capsys):
    """The README's seeded command with a baseline, on the demo's folder at small sizes with two seeds."""
    command = seeded_command(demo["out"])
    out = demo["out"]
    done = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "train warmup: done, skipped" in done.stdout
    for name in ("dpo@seed0", "dpo@seed1", "ue_dpo@seed0", "ue_dpo@seed1"):
        assert f"train {name}: llamafactory-cli train" in done.stdout
    assert "evaluate dpo@seed0, dpo@seed1, ue_dpo@seed0, ue_dpo@seed1 with lmms-eval" in done.stdout

    results = json.loads((out / "results.json").read_text())
    warmup, dpo, ue_dpo = results["runs"]
    assert "per_seed" not in warmup and warmup["model"] == str(out.resolve() / "runs" / "warmup")
    for run in (dpo, ue_dpo):
        assert run["seeds"] == [model["seed"] for model in run["per_seed"]] == [0, 1]
        for model in run["per_seed"]:
            name = f"{run['name']}@seed{model['seed']}"
            assert model["model"] == str(out.resolve() / "runs" / name)
            assert model["training"]["config"]["seed"] == model["seed"]
            assert model["training"]["config"]["model_name_or_path"] == warmup["model"]
            (entry,) = model["evaluation"]["lmms_eval_entries"]  # one protocol: shapes_caption
            assert entry["output_path"] == str(out.resolve() / "evals" / name / "shapes_caption")
            expected = naive_chair(*logged_captions(out, model))
            assert model["metrics"]["shapes_caption"]["chair_i"] == pytest.approx(expected["chair_i"])
    assert [model["training"]["seeds"] for model in ue_dpo["per_seed"]] == [
        {"seed": 0, "ue_seed": 0},
        {"seed": 1, "ue_seed": 1},
    ]

    table = (out / "results.md").read_text()
    metrics = ("chair_s", "chair_i", "recall", "mean_shapes_mentioned")
    per_seed = {run["name"]: [model["metrics"]["shapes_caption"] for model in run["per_seed"]] for run in (dpo, ue_dpo)}
    for run in (dpo, ue_dpo):
        cells = table_cells(table, run["label"])
        for metric, cell in zip(metrics, cells[0::2]):
            first, second = (values[metric] for values in per_seed[run["name"]])
            if first is None or second is None:
                assert run["metrics"]["shapes_caption"][metric] is None and cell == "–"
                continue
            mean, low, high = two_seed_interval(first, second)
            assert run["metrics"]["shapes_caption"][metric] == pytest.approx(mean)
            assert run["intervals"]["shapes_caption"][metric] == pytest.approx([low, high])
            assert cell == f"{mean:.2f} [{low:.2f}, {high:.2f}]"
    assert table_cells(table, "DPO")[1::2] == ["(baseline)"] * len(metrics)

    comparison = results["comparison"]["runs"]
    assert comparison["ue_dpo"]["seed_pairs"] == [[0, 0], [1, 1]]
    assert comparison["warmup"]["seed_pairs"] == [[None, 0], [None, 1]]  # the one warm-up against each DPO seed
    for run, run_values in (("ue_dpo", per_seed["ue_dpo"]), ("warmup", [warmup["metrics"]["shapes_caption"]] * 2)):
        assert comparison[run]["method"] == "Student t over the per-seed differences"
        label = next(item["label"] for item in results["runs"] if item["name"] == run)
        for metric, cell in zip(metrics, table_cells(table, label)[1::2]):
            pairs = list(zip((values[metric] for values in run_values), (values[metric] for values in per_seed["dpo"])))
            delta = comparison[run]["tasks"]["shapes_caption"][metric]
            if any(value is None for pair in pairs for value in pair):
                assert delta["delta"] is None and cell == "–"
                continue
            mean, low, high = two_seed_interval(*(mine - theirs for mine, theirs in pairs))
            assert (delta["delta"], delta["low"], delta["high"]) == pytest.approx((mean, low, high))
            assert cell == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    main(["compare", "dpo@seed0", "ue_dpo@seed0", "--experiment", str(out), "--json"])  # as the README names seeds
    compared = json.loads(capsys.readouterr().out)["tasks"]["shapes_caption"]["recall"]
    assert (compared["a"], compared["b"]) == pytest.approx(
        (per_seed["dpo"][0]["recall"], per_seed["ue_dpo"][0]["recall"])
    )

    # one seed interrupted after its first checkpoint: only that seed resumes and is evaluated again
    for marker in ("train-ue_dpo@seed1.done.json", "eval-ue_dpo@seed1.done.json"):
        (out / "state" / marker).unlink()
    shutil.rmtree(out / "runs" / "ue_dpo@seed1" / "checkpoint-2")
    again = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    for name in ("warmup", "dpo@seed0", "dpo@seed1", "ue_dpo@seed0"):
        assert f"train {name}: done, skipped" in again.stdout
    assert re.search(r"train ue_dpo@seed1: resuming from \S+/ue_dpo@seed1/checkpoint-1\b", again.stdout)
    assert "evaluate ue_dpo@seed1 with lmms-eval" in again.stdout
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["runs"][2]["per_seed"][1]["training"]["resumed_from"].endswith("ue_dpo@seed1/checkpoint-1")
    assert [run["per_seed"][0] for run in resumed["runs"][1:]] == [dpo["per_seed"][0], ue_dpo["per_seed"][0]]


def test_a_sweep_shares_the_trainings_and_compares_each_cell_with_its_own_baseline(demo):
    """The seeded command with `sweep:` over the evaluation's max_new_tokens, on the folder the seeded test left:
    every training is shared and already done, each cell evaluates the five models and compares UE-DPO with DPO,
    paired by seed; one Δ of the table is recomputed from the logged captions with a t interval by hand."""
    out = demo["out"]
    sweep = 'sweep={"evaluation.gen_kwargs.max_new_tokens": [16, 8]}'
    done = subprocess.run(seeded_command(out, sweep), env=offline_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "sweep cell 1/2] max_new_tokens=16" in done.stdout and "sweep cell 2/2] max_new_tokens=8" in done.stdout
    assert "llamafactory-cli train" not in done.stdout
    for name in ("warmup", "dpo@seed0", "dpo@seed1", "ue_dpo@seed0", "ue_dpo@seed1"):
        assert done.stdout.count(f"train {name}: done, skipped") == 2
    models = "warmup, dpo@seed0, dpo@seed1, ue_dpo@seed0, ue_dpo@seed1"
    assert done.stdout.count(f"evaluate {models} with lmms-eval") == 2

    cell = out / "cells" / "max_new_tokens=8"
    [protocol] = json.loads((cell / "results.json").read_text())["runs"][0]["evaluation"]["protocols"]
    assert protocol["gen_kwargs"] == {"max_new_tokens": 8}
    differences = []
    for seed in (0, 1):
        recall = {}
        for run in ("ue_dpo", "dpo"):
            (samples,) = (cell / "evals" / f"{run}@seed{seed}").glob("shapes_caption/*/*_samples_shapes_caption.jsonl")
            captions = logged_captions(out, {"evaluation": {"samples_files": {"shapes_caption": samples}}})
            recall[run] = naive_chair(*captions)["recall"]
        differences.append(recall["ue_dpo"] - recall["dpo"])
    mean = (differences[0] + differences[1]) / 2
    half = stats.t.ppf(0.975, 1) * abs(differences[0] - differences[1]) / 2  # s / sqrt(2) = |d0 - d1| / 2
    table = (out / "sweep.md").read_text()
    assert "2 cells, 2 finished." in table
    section = table[table.index("## shapes_caption recall") :]
    row = next(line for line in section.splitlines() if line.startswith("| 8 | UE-DPO |"))
    assert row.endswith(f"| {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] |"), row
    assert (out / "sweep_shapes_caption_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def children_of(pid: int) -> list:
    return psutil.Process(pid).children(recursive=True)


def start_run(out: Path, log: Path) -> subprocess.Popen:
    """`ue-dpo run` on the embedded default at small sizes, with a warm-up too long to finish and a checkpoint per
    step."""
    settings = [*SMALL, "runs.warmup.overrides.max_steps=1000", "runs.warmup.overrides.save_steps=1"]
    command = [
        str(Path(sys.executable).with_name("ue-dpo")),
        "run",
        str(REPO / "configs" / "experiments" / "embedded_default.yaml"),
        "--out",
        str(out),
        *(argument for setting in settings for argument in ("--set", setting)),
    ]
    return subprocess.Popen(
        command, env=offline_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_when(
    process: subprocess.Popen, log: Path, ready, signal_number: int, grace: float = 0
) -> tuple[int, str, list]:
    """Send `signal_number` to `ue-dpo run` alone once `ready(log text)` holds: its exit status, its log, and the
    processes it had started that still ran `grace` seconds after it exited (killed then)."""
    deadline = time.monotonic() + 600
    while not ready(log.read_text()):
        assert process.poll() is None, log.read_text()[-6000:]
        assert time.monotonic() < deadline, "not ready within 600 s"
        time.sleep(0.2)
    started = children_of(process.pid)
    assert started, "ue-dpo run had no training process"
    left_running = started
    try:
        os.kill(process.pid, signal_number)
        returncode = process.wait(timeout=120)
        _, left_running = psutil.wait_procs(started, timeout=grace)
    finally:
        for child in left_running:
            child.kill()
    return returncode, log.read_text(), left_running


def test_sigterm_and_ctrl_c_stop_the_training_and_leave_the_run_resumable(tmp_path):
    out = tmp_path / "out"
    logs = [tmp_path / f"run{attempt}.log" for attempt in range(3)]

    def checkpointed(_):
        return any((out / "runs" / "warmup").glob("checkpoint-*/trainer_state.json"))

    returncode, text, left_running = stop_when(start_run(out, logs[0]), logs[0], checkpointed, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, text[-4000:]
    assert not left_running  # the training was stopped and waited for
    # The message alone ends the output (no traceback of ours); a progress bar of the child may precede it on its line.
    assert re.search(
        r"ue-dpo run: interrupted by SIGTERM: `\S+llamafactory-cli train \S+train-warmup.yaml` was stopped "
        r"\(its log: \S+train-warmup.log\); run the same command again to resume: finished stages are "
        r"skipped, an interrupted training resumes from its last checkpoint\n\Z",
        text,
    ), text[-2000:]
    state = {path.name for path in (out / "state").iterdir()}
    assert "train-warmup.started.json" in state and "train-warmup.done.json" not in state

    resumed = re.compile(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)\b")
    returncode, text, left_running = stop_when(start_run(out, logs[1]), logs[1], resumed.search, signal.SIGINT)
    assert returncode == 128 + signal.SIGINT, text[-4000:]
    assert re.search(r"train warmup: resuming from \S+/checkpoint-\d+", text)
    assert int(resumed.search(text).group(1)) >= 1
    assert not left_running
    assert re.search(
        r"ue-dpo run: interrupted by SIGINT: `[^`]+` was stopped \(its log: \S+\); run the same command "
        r"again to resume[^\n]*\n\Z",
        text,
    ), text[-2000:]
    assert "train-warmup.done.json" not in {path.name for path in (out / "state").iterdir()}

    # SIGKILL cannot be passed on: the training dies with `ue-dpo run` all the same, and the run stays resumable.
    returncode, text, left_running = stop_when(
        start_run(out, logs[2]), logs[2], resumed.search, signal.SIGKILL, grace=30
    )
    assert returncode == -signal.SIGKILL and not left_running
    assert re.search(r"train warmup: resuming from \S+/checkpoint-\d+", text)
    assert "train-warmup.done.json" not in {path.name for path in (out / "state").iterdir()}

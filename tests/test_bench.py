"""The README's benchmark command, `python bench/run.py`, at tiny sizes of its LLaVA-1.5 layout: every configuration
trains in its own process over the same epochs, and the table's medians and ratios are those of the raw per-step
and per-run numbers it saved. No timing is asserted."""

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamafactory_runs import offline_env

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"
# two configurations: each costs its process's start-up, about 30 s here
CONFIGS = ("dpo", "ue_dpo")
PAIRS, EPOCHS, WARMUP = 2, 2, 1
IMAGE_SIZE = 56


def test_bench_table_is_computed_from_the_measured_runs_and_keeps_the_notes(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("old table\n<!-- notes: kept when the results above are regenerated -->\nour notes\n")
    command = [
        sys.executable,
        str(BENCH),
        "--workdir",
        str(tmp_path / "work"),
        "--results",
        str(results),
        "--configs",
        *CONFIGS,
        "--rounds",
        "1",
        "--warmup",
        str(WARMUP),
        "--pairs",
        str(PAIRS),
        "--epochs",
        str(EPOCHS),
        "--image-size",
        str(IMAGE_SIZE),
        "--question-tokens",
        "4",
        "--response-tokens",
        "16",
    ]
    done = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    raw = json.loads((tmp_path / "work" / "results.json").read_text())["runs"]
    assert sorted(raw) == sorted(CONFIGS)
    median_step, run_seconds, peak = {}, {}, {}
    for name, (run,) in raw.items():
        assert len(run["step_seconds"]) == EPOCHS * PAIRS  # one pair per step, the same steps in every configuration
        assert 0 < sum(run["step_seconds"]) <= run["run_seconds"]
        assert run["layout"]["image"] == (IMAGE_SIZE // 14) ** 2  # LLaVA-1.5: one token per 14-px patch
        median_step[name] = statistics.median(run["step_seconds"][WARMUP:])
        run_seconds[name], peak[name] = run["run_seconds"], run["peak_rss_mib"]

    report = results.read_text()
    assert "old table" not in report and report.rstrip().endswith("our notes")
    for name in CONFIGS:
        row = re.search(
            rf"^\| `{name}` \| ([\d.]+) \| [\d.]+-[\d.]+ \| ([\d.]+)x \| [\d.]+ \| [\d.]+x "
            r"\| ([\d.]+) \| ([\d.]+)x \| [\d.]+ \| [\d.]+x \| (\d+) \| ([\d.]+)x \|",
            report,
            re.MULTILINE,
        )
        assert row, (name, report)
        assert float(row.group(1)) == pytest.approx(median_step[name], abs=0.005)
        assert float(row.group(2)) == pytest.approx(median_step[name] / median_step["dpo"], abs=0.005)
        assert float(row.group(3)) == pytest.approx(run_seconds[name], abs=0.051)
        assert float(row.group(4)) == pytest.approx(run_seconds[name] / run_seconds["dpo"], abs=0.005)
        assert int(row.group(5)) == round(peak[name])
        assert float(row.group(6)) == pytest.approx(peak[name] / peak["dpo"], abs=0.005)
    assert re.search(r"^- `ue_dpo`: run [\d.]+x of `dpo` \(target <= 0.8x: (met|MISSED)\)", report, re.MULTILINE)
    assert "- `ue_dpo_precompute_ref` run <= 0.72x of `dpo`: not run" in report
    assert "- `ue_dpo` memory <= 1.0x of `ue_dpo_unshared`: not run" in report
    # the machine section names the kernel path torch dispatched to and the one thread offline_env sets
    machine = re.search(r"^- Kernels and threads: (.*)$", report, re.MULTILINE)
    assert machine, report
    assert f"dispatching {torch.backends.cpu.get_cpu_capability()} kernels, 1 intra-op" in machine.group(1)
    assert "(OMP_NUM_THREADS=1)" in machine.group(1)

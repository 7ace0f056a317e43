"""The README's benchmark command, `python bench/run.py`, at tiny sizes: every configuration trains in its own
process, and the table's medians and ratios are those of the raw per-step numbers it saved. No timing is asserted."""

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from llamafactory_runs import offline_env

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"
CONFIGS = ("dpo", "ue_dpo_alpha0", "ue_dpo", "ue_dpo_precompute_ref")
WARMUP, STEPS = 1, 2


def test_bench_table_is_computed_from_the_measured_steps_and_keeps_the_notes(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("old table\n<!-- notes: kept when the results above are regenerated -->\nour notes\n")
    command = [sys.executable, str(BENCH), "--workdir", str(tmp_path / "work"), "--results", str(results),
               "--rounds", "1", "--warmup", str(WARMUP), "--steps", str(STEPS), "--vocab-size", "4096",
               "--image-size", "56", "--response-tokens", "16"]
    done = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    raw = json.loads((tmp_path / "work" / "results.json").read_text())["runs"]
    assert sorted(raw) == sorted(CONFIGS)
    median_step = {}
    for name, (run,) in raw.items():
        assert len(run["step_seconds"]) == WARMUP + STEPS
        median_step[name] = statistics.median(run["step_seconds"][WARMUP:])
    peak = {name: run["peak_rss_mib"] for name, (run,) in raw.items()}

    report = results.read_text()
    assert "old table" not in report and report.rstrip().endswith("our notes")
    for name in CONFIGS:
        row = re.search(rf"^\| `{name}` \| ([\d.]+) \| [\d.]+-[\d.]+ \| ([\d.]+)x \|.*?\| (\d+) \| ([\d.]+)x \|",
                        report, re.MULTILINE)
        assert row, (name, report)
        assert float(row.group(1)) == pytest.approx(median_step[name], abs=0.005)
        assert float(row.group(2)) == pytest.approx(median_step[name] / median_step["dpo"], abs=0.005)
        assert int(row.group(3)) == round(peak[name])
        assert float(row.group(4)) == pytest.approx(peak[name] / peak["dpo"], abs=0.005)
    assert re.search(r"- `ue_dpo`: step [\d.]+x \(target <= 1.25x: (met|MISSED)\)", report)

"""The README's main command, `make demo`, on the embedded default."""

import json
import subprocess
from pathlib import Path

import pytest

from llamafactory_runs import offline_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_make_demo_trains_and_prints_the_ue_statistics(tmp_path):
    result = subprocess.run(["make", "-s", "-C", str(REPO), "demo", f"DEMO_OUT={tmp_path}"], env=offline_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| step | loss | rewards/accuracies | ue/selected_share_chosen")
    state = json.loads((tmp_path / "ue_dpo" / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(table) == 2 + len(steps) == 2 + 8
    assert all(1.0 < entry["ue/lambda_chosen_mean"] <= 1.3 for entry in steps)
    assert (tmp_path / "ue_dpo" / "adapter_model.safetensors").exists()

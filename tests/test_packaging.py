"""The built wheel, installed without an editable link, carries and runs the auto-load hook."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_the_hook_that_registers_the_stage(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("ue_dpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ue_dpo_autoload.pth" in names
    assert "ue_dpo/_autoload.py" in names and "ue_dpo/llamafactory/trainer.py" in names
    assert zipfile.ZipFile(wheel).read("ue_dpo_autoload.pth").decode().strip() == "import ue_dpo._autoload"
    task_yamls = {
        f"ue_dpo/eval_tasks/{name}.yaml"
        for name in ("object_halbench", "mmhal_bench", "amber_generative", "amber_discriminative", "amber")
    }
    assert task_yamls <= set(names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    # -S: start without site-packages, then add the wheel's folder first so its .pth file runs,
    # and the environment's packages (llamafactory) after it.
    probe = (
        "import site, sys;"
        f"site.addsitedir({str(target)!r});"
        "import ue_dpo;"
        f"site.addsitedir({sysconfig.get_paths()['purelib']!r});"
        "import llamafactory.train.tuner as tuner;"
        "from llamafactory.hparams import parser;"
        "print(ue_dpo.__file__);"
        "print(tuner.run_dpo.__module__);"
        "print([cls.__name__ for cls in parser._TRAIN_ARGS]);"
        "from ue_dpo.evaluation import discovery;"
        "print(discovery.task_dir())"
    )
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True)
    module_file, run_dpo_module, argument_classes, task_dir = result.stdout.strip().splitlines()[-4:]
    assert task_dir == str(target / "ue_dpo" / "eval_tasks")  # lmms-eval discovery reads the wheel's YAMLs
    assert module_file.startswith(str(target))
    assert run_dpo_module == "ue_dpo.llamafactory.integration"
    assert "UEDPOFinetuningArguments" in argument_classes


def test_importing_the_package_does_not_import_torch():
    probe = "import sys, ue_dpo, ue_dpo.config, ue_dpo.versions; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

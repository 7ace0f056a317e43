"""The machine record of results.json and results.md (ue_dpo.machine), each field against what this test reads on
its own: /proc/cpuinfo parsed here, torch asked directly, and a child process started with the pins and thread
counts set. That a run's results.json and results.md carry it is checked on a real run in
test_demo.py::test_results_record_configs_seeds_versions_and_the_table_and_chart."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ue_dpo.machine import ISA_FLAGS, describe_machine, read_cpuinfo, summarize_machine

CPUINFO = Path("/proc/cpuinfo")


def first_processor(text: str) -> dict[str, str]:
    """The `key: value` lines of /proc/cpuinfo up to the first blank line."""
    block = text.split("\n\n", 1)[0]
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in block.splitlines() if ":" in line}


def machine_in_child(env: dict[str, str]) -> dict:
    """describe_machine() in a fresh Python with `env` added: torch reads its pins and thread counts at start."""
    code = "import json; from ue_dpo.machine import describe_machine; print(json.dumps(describe_machine()))"
    output = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.splitlines()[-1])


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs Linux's /proc/cpuinfo")
def test_the_cpu_model_vendor_and_instruction_sets_are_those_of_proc_cpuinfo():
    expected = first_processor(CPUINFO.read_text())
    flags = set(expected["flags"].split())
    cpu = describe_machine()["cpu"]
    assert (cpu["model"], cpu["vendor"], cpu["architecture"]) == (
        expected["model name"],
        expected["vendor_id"],
        platform.machine(),
    )
    assert cpu["isa_flags"] == {flag: flag in flags for flag in ISA_FLAGS}
    assert cpu["logical_cores"] == os.cpu_count() and cpu["usable_cores"] == len(os.sched_getaffinity(0))


def test_cpuinfo_is_read_from_the_first_processor_only():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f\n\n"
        "processor\t: 1\nvendor_id\t: other\nmodel name\t: other\nflags\t\t: amx_tile\n"
    )
    assert read_cpuinfo(text) == {
        "model": "AMD EPYC 9B14",
        "vendor": "AuthenticAMD",
        "flags": ["fpu", "avx2", "avx512f"],
    }


def test_the_torch_build_dispatch_isa_and_threads_are_torchs_own():
    recorded = describe_machine()["torch"]
    config = torch.__config__.show()
    assert recorded["version"] == torch.__version__ and recorded["cuda"] == torch.version.cuda
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"CPU capability usage: {recorded['cpu_capability']}" in config
    assert f"BLAS_INFO={recorded['blas']}," in config
    assert recorded["mkl"] is None or f"Math Kernel Library Version {recorded['mkl']} for" in config
    assert recorded["onednn"] is None or f"MKL-DNN {recorded['onednn']} " in config
    assert (recorded["intra_op_threads"], recorded["inter_op_threads"]) == (
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
    )


PINS = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
}


@pytest.fixture(scope="module")
def pinned_child() -> dict:
    """describe_machine() of one child started with the code-path pins, one thread and no visible GPU (one child
    for the two tests below: most of its time is importing torch)."""
    return machine_in_child({**PINS, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def test_the_pinned_code_paths_and_thread_counts_of_the_environment_are_recorded(pinned_child):
    machine = pinned_child
    assert machine["pins"] == PINS
    assert machine["thread_env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert machine["torch"]["intra_op_threads"] == 1
    assert machine["torch"]["cpu_capability"] == "DEFAULT"  # the kernels torch dispatched to follow the pin
    summary = summarize_machine(machine)
    assert "dispatching DEFAULT kernels, 1 intra-op" in summary
    assert "code-path pins: ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=AVX2" in summary


def test_the_gpus_are_the_visible_cuda_devices(pinned_child):
    expected = (
        [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    assert describe_machine()["gpus"] == expected
    assert pinned_child["gpus"] == []

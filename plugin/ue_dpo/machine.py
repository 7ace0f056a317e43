"""The machine a number was measured on: the CPU and the instruction sets that change float results, the torch build
and the kernel path it dispatched to, the thread counts, the environment variables that pin those code paths, and
the GPUs.

Greedy captions of a small model can change with the order of a float reduction, and that order depends on the
kernels torch, oneMKL and oneDNN pick for the CPU they run on (docs/blind_spots.md: the same experiment on an
Intel Xeon with AVX-512 and on an AMD EPYC gave different digits). `results.json` and `results.md` record what
`describe_machine` returns, for every stage and for the report. This module imports only the standard library at
its top (torch when called), so `experiment/` and `bench/` can both use it.
"""

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# the instruction-set extensions whose presence changes which float kernels torch, oneMKL and oneDNN run
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# how many threads the math libraries use
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# the environment variables that pin a CPU code path: torch's own kernels, oneDNN's, oneMKL's
PIN_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE")


def read_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, vendor and flags of the first processor listed in a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block ends
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return {
        "model": fields.get("model name"),
        "vendor": fields.get("vendor_id"),
        "flags": fields.get("flags", "").split(),
    }


def cpu_description() -> dict[str, Any]:
    found = read_cpuinfo(CPUINFO.read_text()) if CPUINFO.exists() else {"model": None, "vendor": None, "flags": []}
    flags = set(found["flags"])
    return {
        "model": found["model"] or platform.processor() or None,
        "vendor": found["vendor"],
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa_flags": {flag: flag in flags for flag in ISA_FLAGS} if found["flags"] else None,
    }


def _build_value(config: str, pattern: str) -> str | None:
    match = re.search(pattern, config)
    return match.group(1).strip() if match else None


def torch_description() -> dict[str, Any]:
    """The torch build (from torch.__config__.show()), the CPU kernel path it dispatches to and its thread counts."""
    import torch

    config = torch.__config__.show()
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "blas": _build_value(config, r"BLAS_INFO=([^,\n]+)"),
        "mkl": _build_value(config, r"Math Kernel Library Version ([^\n]+?) for"),
        "onednn": _build_value(config, r"MKL-DNN (v[\d.]+)"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA of the ATen kernels dispatched to
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
    }


def gpu_names() -> list[str]:
    """The visible CUDA devices' names; empty without one."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def describe_machine() -> dict[str, Any]:
    """CPU, torch build and dispatch, threads, code-path pins and GPUs of this process's machine."""
    return {
        "cpu": cpu_description(),
        "os": f"{platform.system()} {platform.release()}",
        "torch": torch_description(),
        "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
        "pins": {name: os.environ[name] for name in PIN_ENV if name in os.environ},
        "gpus": gpu_names(),
    }


@functools.cache
def this_machine() -> dict[str, Any]:
    """describe_machine() once per process (torch's import and the CPU do not change while it runs)."""
    return describe_machine()


def summarize_machine(machine: dict[str, Any]) -> str:
    """One line for a report: which machine, kernel path and threads produced the numbers."""
    cpu, torch = machine["cpu"], machine["torch"]
    flags = cpu["isa_flags"]
    isa = "flags unknown" if flags is None else " ".join(name for name, present in flags.items() if present) or "none"
    threads = ", ".join(f"{name}={value}" for name, value in machine["thread_env"].items() if value is not None)
    pins = ", ".join(f"{name}={value}" for name, value in machine["pins"].items())
    return (
        f"{cpu['model'] or 'unknown CPU'} ({cpu['vendor'] or 'unknown vendor'}, {cpu['usable_cores']} cores; "
        f"{isa}); torch {torch['version']} ({torch['blas']} BLAS, oneDNN {torch['onednn']}) dispatching "
        f"{torch['cpu_capability']} kernels, {torch['intra_op_threads']} intra-op and {torch['inter_op_threads']} "
        f"inter-op threads{f' ({threads})' if threads else ''}; code-path pins: {pins or 'none'}; "
        f"GPU: {', '.join(machine['gpus']) or 'none'}"
    )

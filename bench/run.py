"""Step time and peak memory of stock LLaMA-Factory DPO next to UE-DPO, on one synthetic workload.

    python bench/run.py            # builds the model and data, runs every configuration, writes bench/RESULTS.md

    python bench/run.py --model-size 7b   # the same at Qwen2-VL-7B's real size (needs a CUDA GPU, ~17 GB on disk)

The model is a Qwen2-VL-architecture checkpoint with random weights, built locally: by default the tiny
models' width with the real 151,936-entry vocabulary of Qwen2-VL-2B; with `--model-size 7b`, Qwen2-VL-7B's
shapes (text and vision tower, 152,064-entry vocabulary), built on the GPU in bf16. Each configuration trains
in its own process; configurations alternate (A B C D A B C D ...) so that machine drift hits all of them alike.
"""

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
NOTES_MARKER = "<!-- notes: kept when the results above are regenerated -->"
CONFIGS = {
    "dpo": {"stage": "dpo"},
    "ue_dpo_alpha0": {"stage": "ue_dpo", "ue_alpha": 0.0},
    "ue_dpo": {"stage": "ue_dpo"},
    "ue_dpo_precompute_ref": {"stage": "ue_dpo", "ue_precompute_ref": True},
}
BASELINE = "dpo"
# The released Qwen2-VL-7B-Instruct's config.json, except the token ids (those of our small tokenizer).
QWEN2_VL_7B_TEXT = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "max_window_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2_VL_7B_VISION = {
    "depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4, "hidden_act": "quick_gelu",
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
}
MODEL_SIZES = {
    "tiny": {"vocab_size": 151936, "shape": "text width 64, 2 layers; vision tower 2 layers x 32"},
    "7b": {
        "vocab_size": QWEN2_VL_7B_TEXT["vocab_size"],
        "shape": ("Qwen2-VL-7B-Instruct's shapes (8.29B parameters): text width 3584, 28 layers, 28 heads / 4 KV "
                  "heads, MLP 18944; vision tower 32 layers x 1280"),
    },
}
# (configuration, step-time ratio bound, peak-memory ratio bound), ratios to stock DPO
TARGETS = (("ue_dpo", 1.25, 0.8), ("ue_dpo_alpha0", 1.0, 0.8), ("ue_dpo_precompute_ref", 1.0, None))
RESPONSE_WORDS = (
    "the", "a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "shape", "image", "shows",
    "left", "right", "top", "bottom", "corner", "large", "small", "bright", "dark", "next", "to", "above", "below",
    "and", "with", "on", "white", "background", "there", "is", "one", "two", "three",
)


def build_model(out_dir: Path, *, model_size: str, vocab_size: int, image_size: int) -> None:
    """A Qwen2-VL of `model_size` with a `vocab_size` output layer and the tiny model's tokenizer, and a
    processor that keeps `image_size`² images whole. Token ids past the tokenizer's are never targets, as in
    the released models, whose output layer is also wider than their tokenizer."""
    import torch
    from transformers import (
        AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLTextConfig,
    )
    from transformers.models.qwen2_vl import Qwen2VLVisionConfig

    from ue_dpo.synthetic.tiny_models import VISION_PATCH_SIZE, build_tiny_qwen2_vl

    build_tiny_qwen2_vl(out_dir, seed=0)
    config = AutoConfig.from_pretrained(out_dir)
    torch.manual_seed(0)
    if model_size == "tiny":
        config.text_config.vocab_size = vocab_size
        Qwen2VLForConditionalGeneration(config).save_pretrained(out_dir)
    else:
        tiny_text = config.text_config
        config.text_config = Qwen2VLTextConfig(
            **{**QWEN2_VL_7B_TEXT, "vocab_size": vocab_size}, bos_token_id=tiny_text.bos_token_id,
            eos_token_id=tiny_text.eos_token_id, pad_token_id=tiny_text.pad_token_id,
        )
        config.vision_config = Qwen2VLVisionConfig(**QWEN2_VL_7B_VISION)
        with torch.device("cuda"):  # random init of 8B parameters on the CPU would take many minutes
            model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out_dir)
        del model
        torch.cuda.empty_cache()
    processor = AutoProcessor.from_pretrained(out_dir)
    pixels = image_size * image_size
    processor.image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=VISION_PATCH_SIZE
    )
    processor.save_pretrained(out_dir)


def write_dataset(out_dir: Path, model_dir: Path, *, pairs: int, image_size: int, response_tokens: int) -> None:
    """`bench_pref`: random rectangles, and chosen/rejected answers of exactly `response_tokens` tokens."""
    from PIL import Image, ImageDraw
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)

    def response() -> str:
        words = []
        while len(tokenizer(" ".join(words))["input_ids"]) < response_tokens:
            words.append(rng.choice(RESPONSE_WORDS))
        ids = tokenizer(" ".join(words))["input_ids"][:response_tokens]
        return tokenizer.decode(ids)

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(pairs):
        image = Image.new("RGB", (image_size, image_size), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.randrange(image_size - 8), rng.randrange(image_size - 8)
            box = (x0, y0, rng.randrange(x0 + 8, image_size + 1), rng.randrange(y0 + 8, image_size + 1))
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(out_dir / "images" / f"{index:04d}.png")
        records.append({
            "messages": [{"role": "user", "content": "<image>Describe this image in detail."}],
            "chosen": {"role": "assistant", "content": response()},
            "rejected": {"role": "assistant", "content": response()},
            "images": [f"images/{index:04d}.png"],
        })
    (out_dir / "bench_pref.json").write_text(json.dumps(records))
    (out_dir / "dataset_info.json").write_text(json.dumps({"bench_pref": {
        "file_name": "bench_pref.json", "formatting": "sharegpt", "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }}))


def training_config(name: str, workdir: Path, settings: dict, use_gpu: bool) -> dict:
    from tiny_training_config import tiny_training_config

    output_dir = workdir / "runs" / name
    method = dict(CONFIGS[name])
    if method.get("ue_precompute_ref"):
        method["ue_ref_cache_dir"] = str(output_dir / "ue_ref_cache")  # fresh each run: the first step pays for it
    return tiny_training_config(
        "qwen2_vl", workdir / "model", workdir / "data", output_dir,
        dataset="bench_pref", cutoff_len=4096, image_max_pixels=settings["image_size"] ** 2,
        per_device_train_batch_size=2, max_steps=settings["warmup"] + settings["steps"],
        use_cpu=not use_gpu, bf16=use_gpu, **method,
    )


def worker(name: str, workdir: Path, settings: dict, result_path: Path) -> None:
    """Trains one configuration in this process and writes its step times and peak memory."""
    import torch
    from transformers import TrainerCallback

    import ue_dpo

    ue_dpo.apply_llamafactory_integration()
    from llamafactory.train.tuner import run_exp

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations, self.cpu_durations, self.rss_at_train_begin, self.gpu_at_train_begin = [], [], 0, 0
            self.started = self.cpu_started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.rss_at_train_begin = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if torch.cuda.is_available():
                self.gpu_at_train_begin = torch.cuda.memory_allocated()

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.durations.append(time.perf_counter() - self.started)
            self.cpu_durations.append(time.process_time() - self.cpu_started)

    use_gpu = torch.cuda.is_available()
    timer = StepTimer()
    run_exp(training_config(name, workdir, settings, use_gpu), callbacks=[timer])
    result = {
        "step_seconds": timer.durations,
        "step_cpu_seconds": timer.cpu_durations,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_at_train_begin_mib": timer.rss_at_train_begin / 1024,
    }
    if use_gpu:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_at_train_begin_mib"] = timer.gpu_at_train_begin / 2**20
    result_path.write_text(json.dumps(result))


def machine_description() -> list[str]:
    import torch

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = ""
    if Path("/proc/meminfo").exists():
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kib / 2**20:.0f} GiB RAM"
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores visible{memory}; {platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}, torch {torch.__version__}"]
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda} "
            "(memory columns: torch.cuda.max_memory_allocated, and memory_allocated when training begins)"
        )
    else:
        lines.append("- No GPU: the memory column is the process's peak RSS (ru_maxrss), model and libraries included")
    return lines


def summarize(results: dict[str, list[dict]], settings: dict, order: list[str], wall_seconds: float) -> str:
    on_gpu = "peak_gpu_mib" in results[BASELINE][0]
    memory_key, at_train_begin_key = (
        ("peak_gpu_mib", "gpu_at_train_begin_mib") if on_gpu else ("peak_rss_mib", "rss_at_train_begin_mib")
    )
    def measured(runs: list[dict], key: str) -> list[float]:
        return [seconds for run in runs for seconds in run[key][settings["warmup"]:]]

    rows = {}
    for name, runs in results.items():
        wall = measured(runs, "step_seconds")
        rows[name] = {
            "median": statistics.median(wall),
            "spread": (min(wall), max(wall)),
            "cpu_median": statistics.median(measured(runs, "step_cpu_seconds")),
            "memory": max(run[memory_key] for run in runs),
            "first_step": statistics.median(run["step_seconds"][0] for run in runs),
            "at_train_begin": max(run[at_train_begin_key] for run in runs),
        }
    base = rows[BASELINE]
    lines = [
        "# Benchmark: stock LLaMA-Factory DPO vs UE-DPO", "",
        f"Generated by `python bench/run.py` ({' '.join(sys.argv[1:]) or 'defaults'}) in {wall_seconds / 60:.0f} min.",
        "", "## Machine", "", *machine_description(), "",
        "## Workload", "",
        (f"- Qwen2-VL architecture, random weights, vocabulary {settings['vocab_size']:,}, "
         f"{MODEL_SIZES[settings['model_size']]['shape']}; LoRA rank 8 on all linear layers of the language model "
         "(LLaMA-Factory `lora_target: all`), fp32 on CPU / bf16 on GPU"),
        (f"- images {settings['image_size']}x{settings['image_size']} px: "
         f"{(settings['image_size'] // 28) ** 2} visual tokens each; responses of {settings['response_tokens']} "
         "tokens; 2 pairs per step (`per_device_train_batch_size: 2`)"),
        (f"- each configuration in its own process, {settings['rounds']} rounds in the order "
         f"{' '.join(order)} ...; {settings['warmup']} warm-up steps dropped per run, medians over the "
         f"{settings['steps']} x {settings['rounds']} remaining steps"),
        ("- step = wall-clock time from LLaMA-Factory's step begin to step end (forward, backward, optimizer); "
         "step CPU = the process's CPU time over the same span, less sensitive to other processes on shared cores"),
        "", "## Results", "",
        ("| configuration | median step (s) | min-max (s) | step ratio | median step CPU (s) | CPU ratio "
         "| peak memory (MiB) | memory ratio | memory at train start (MiB) | first step (s) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        row = rows[name]
        lines.append(
            f"| `{name}` | {row['median']:.2f} | {row['spread'][0]:.2f}-{row['spread'][1]:.2f} "
            f"| {row['median'] / base['median']:.2f}x | {row['cpu_median']:.2f} "
            f"| {row['cpu_median'] / base['cpu_median']:.2f}x | {row['memory']:.0f} "
            f"| {row['memory'] / base['memory']:.2f}x | {row['at_train_begin']:.0f} | {row['first_step']:.2f} |"
        )
    lines += ["", "## Targets (ratios to `dpo`)", ""]
    for name, time_bound, memory_bound in TARGETS:
        verdict = []
        for label, key in (("step", "median"), ("step CPU", "cpu_median")):
            ratio = rows[name][key] / base[key]
            met = "met" if ratio <= time_bound else "MISSED"
            verdict.append(f"{label} {ratio:.2f}x (target <= {time_bound}x: {met})")
        if memory_bound is not None:
            memory_ratio = rows[name]["memory"] / base["memory"]
            verdict.append(
                f"memory {memory_ratio:.2f}x (target <= {memory_bound}x: "
                f"{'met' if memory_ratio <= memory_bound else 'MISSED'})"
            )
        lines.append(f"- `{name}`: " + "; ".join(verdict))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "_work", help="model, data and runs")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per run, after the warm-up")
    parser.add_argument("--model-size", choices=tuple(MODEL_SIZES), default="tiny",
                        help="tiny width (CPU or GPU), or Qwen2-VL-7B's real shapes (CUDA GPU only)")
    parser.add_argument("--vocab-size", type=int,
                        help="output-layer entries; default: 151,936 (Qwen2-VL-2B) for tiny, 152,064 for 7b")
    parser.add_argument("--image-size", type=int, default=448, help="pixels per side; 28 px per visual token")
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--result-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vocab_size is None:
        args.vocab_size = MODEL_SIZES[args.model_size]["vocab_size"]
    settings = {key: getattr(args, key) for key in
                ("rounds", "warmup", "steps", "model_size", "vocab_size", "image_size", "response_tokens")}
    if args.worker:
        worker(args.worker, args.workdir, settings, args.result_path)
        return
    if BASELINE not in args.configs:
        parser.error(f"--configs must include the baseline `{BASELINE}`: ratios are taken to it")
    if args.image_size % 28 or args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--image-size must be a multiple of 28; --steps and --rounds >= 1, --warmup >= 0")
    if args.model_size == "7b":
        import torch

        if not torch.cuda.is_available():
            parser.error("--model-size 7b needs a CUDA GPU (it builds and trains an 8B-parameter model in bf16); "
                         "without one, use --model-size tiny")

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    build_model(args.workdir / "model", model_size=args.model_size, vocab_size=args.vocab_size,
                image_size=args.image_size)
    write_dataset(args.workdir / "data", args.workdir / "model", pairs=2 * (args.warmup + args.steps),
                  image_size=args.image_size, response_tokens=args.response_tokens)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_DISABLED": "true", "DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {name: [] for name in args.configs}
    for round_index in range(args.rounds):
        for name in args.configs:
            result_path = args.workdir / f"result-{name}-{round_index}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result-path",
                       str(result_path), "--workdir", str(args.workdir)]
            command += [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
            print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
            completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                sys.exit(f"`{name}` failed ({completed.returncode}):\n{completed.stderr[-5000:]}")
            results[name].append(json.loads(result_path.read_text()))
    report = summarize(results, settings, args.configs, time.perf_counter() - started)
    if args.results.exists() and NOTES_MARKER in args.results.read_text():
        report += "\n" + NOTES_MARKER + args.results.read_text().split(NOTES_MARKER, 1)[1]
    args.results.write_text(report)
    (args.workdir / "results.json").write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
    print(report)


if __name__ == "__main__":
    main()

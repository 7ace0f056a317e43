"""Step time, whole-run time and peak memory of stock LLaMA-Factory DPO next to UE-DPO, on one synthetic workload.

    python bench/run.py    # LLaVA-1.5's token layout on a small model: builds it and the data, runs every
                           # configuration, writes bench/RESULTS.md

    python bench/run.py --model-size 7b                      # LLaVA-1.5-7B's real shapes (CUDA GPU only)
    python bench/run.py --layout qwen2_vl                    # Qwen2-VL, small width, real 151,936 vocabulary
    python bench/run.py --layout qwen2_vl --model-size 7b    # Qwen2-VL-7B's real shapes (CUDA GPU only)
    python bench/run.py --layout internvl                    # InternVL 3's tiles, the small LLaVA decoder
    python bench/run.py --layout qwen3_vl                    # Qwen3-VL, small width, real 151,936 vocabulary
    python bench/run.py --layout qwen3_vl --model-size 8b    # Qwen3-VL-8B's real shapes (CUDA GPU only)
    python bench/run.py --configs dpo mdpo mfpo vdpo chip    # the peers with losses of their own, as ratios to DPO

Models have the real architecture classes and random weights, built locally with the tiny models' tokenizer and
processor (`ue_dpo.synthetic.tiny_models`); the 7b and 8b ones are built on the GPU in bf16. Every configuration trains
the same data for the same number of epochs, each in its own process; configurations alternate
(A B C D A B C D ...) so that machine drift hits all of them alike.
"""

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
NOTES_MARKER = "<!-- notes: kept when the results above are regenerated -->"
CONFIGS = {
    "dpo": {"stage": "dpo"},
    "ue_dpo": {"stage": "ue_dpo"},
    "ue_dpo_unshared": {"stage": "ue_dpo", "ue_prefix_sharing": False},
    "ue_dpo_precompute_ref": {"stage": "ue_dpo", "ue_precompute_ref": True},
    "ue_dpo_alpha0": {"stage": "ue_dpo", "ue_alpha": 0.0},
    # the peers with losses of their own (docs/peers.md), each at its defaults
    **{name: {"stage": "ue_dpo", "ue_weighting": name} for name in ("mdpo", "mfpo", "vdpo", "chip")},
}
DEFAULT_CONFIGS = ("dpo", "ue_dpo", "ue_dpo_unshared", "ue_dpo_precompute_ref")
BASELINE = "dpo"

# Vicuna-7B-v1.5's config.json (the language model of llava-1.5-7b-hf), less its vocabulary and token ids.
VICUNA_7B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
# CLIP ViT-L/14-336's vision config, the tower of llava-1.5-7b-hf.
CLIP_VIT_L_336_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}
# The CPU model: a decoder whose output layer is a few percent of its FLOPs, as at 7B, and a CLIP tower whose
# share of a row's FLOPs is about LLaVA-1.5-7B's (both shares are printed in RESULTS.md).
SMALL_LLAMA_TEXT = {
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
}
SMALL_CLIP_VISION = {
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "projection_dim": 192,
}
LLAVA_SHAPES = {"small": (SMALL_LLAMA_TEXT, SMALL_CLIP_VISION), "7b": (VICUNA_7B_TEXT, CLIP_VIT_L_336_VISION)}
# The released Qwen2-VL-7B-Instruct's config.json, except the token ids (those of our small tokenizer).
QWEN2_VL_7B_TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2_VL_7B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,
    "num_heads": 16,
    "mlp_ratio": 4,
    "hidden_act": "quick_gelu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
# Qwen3-VL-8B-Instruct's config.json, except the token ids: its text model (as quoted by mlx-vlm's qwen3_vl tests:
# 36 layers, 4096 wide, 8 key-value heads of 128, interleaved M-RoPE sections 24/20/20, theta 5e6) and its vision tower
# (transformers' Qwen3VLVisionConfig defaults, the 8B's: 27 blocks of 1152, deepstack after blocks 8, 16 and 24),
# projected to the text width.
QWEN3_VL_8B_TEXT = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}
QWEN3_VL_8B_VISION = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
    "out_hidden_size": 4096,
}
LAYOUTS = {
    "llava15": {
        "name": "LLaVA-1.5",
        "template": "llava",
        "pixels_per_visual_token": 14,
        "image_size": 336,
        "question_tokens": 28,
        "response_tokens": 150,
        "vocab_size": {"small": 2048, "7b": 32000},
    },
    "qwen2_vl": {
        "name": "Qwen2-VL",
        "template": "qwen2_vl",
        "pixels_per_visual_token": 28,
        "image_size": 448,
        "question_tokens": 0,
        "response_tokens": 128,
        "vocab_size": {"small": 151936, "7b": 152064},
    },
    "qwen3_vl": {
        "name": "Qwen3-VL",
        "template": "qwen3_vl",
        "pixels_per_visual_token": 32,
        "image_size": 448,
        "question_tokens": 0,
        "response_tokens": 128,
        "vocab_size": {"small": 151936, "8b": 151936},
    },
    # InternVL 3's tiles: 448-px tiles of 256 tokens (14-px patches, pixel shuffle 0.5); an 896-px image is cut
    # into 2x2 crops and a thumbnail (LLaMA-Factory's `crop_to_patches`), 1,280 image tokens. The CPU model is the
    # LLaVA layout's decoder and output layer, so that the output layer is a few percent of the FLOPs, as at 8B
    "internvl": {
        "name": "InternVL 3",
        "template": "intern_vl",
        "pixels_per_visual_token": 28,
        "image_size": 896,
        "tile_size": 448,
        "training_keys": {"crop_to_patches": True},
        "question_tokens": 0,
        "response_tokens": 128,
        "vocab_size": {"small": 2048},
    },
}
MODEL_SIZES = ("small", "7b", "8b")  # the real shapes of each layout's size: its `vocab_size` keys
# issue 16's targets: (configuration, measure, ratio bound, configuration the ratio is taken to). The CPU peak
# RSS is mostly libraries, so there the memory target is only no regression against the unshared computation.
TARGETS = {
    ("llava15", "small"): (
        ("ue_dpo", "run", 0.80, BASELINE),
        ("ue_dpo_precompute_ref", "run", 0.72, BASELINE),
        ("ue_dpo", "memory", 1.0, "ue_dpo_unshared"),
    ),
    ("llava15", "7b"): (
        ("ue_dpo", "step", 0.80, BASELINE),
        ("ue_dpo", "memory", 0.80, BASELINE),
        ("ue_dpo_precompute_ref", "run", 0.72, BASELINE),
    ),
    ("qwen2_vl", "7b"): (("ue_dpo", "step", 1.0, BASELINE),),
}
QUESTION = "Describe this image in detail."
WORDS = (
    "the",
    "a",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "star",
    "shape",
    "image",
    "shows",
    "left",
    "right",
    "top",
    "bottom",
    "corner",
    "large",
    "small",
    "bright",
    "dark",
    "next",
    "to",
    "above",
    "below",
    "and",
    "with",
    "on",
    "white",
    "background",
    "there",
    "is",
    "one",
    "two",
    "three",
)
IGNORE_INDEX = -100


def model_shapes(layout: str, model_size: str) -> dict:
    """The keyword arguments of the layout's tiny-model builder (ue_dpo.synthetic.tiny_models) for `model_size`:
    its text and vision shapes, and the GPU and bf16 for the 7b ones (random init of 7-8B parameters on the CPU
    would take many minutes)."""
    shapes = {}
    if layout == "llava15":
        shapes["text"], shapes["vision"] = LLAVA_SHAPES[model_size]
    elif layout == "internvl":  # small only: its tiny vision tower, the LLaVA layout's small decoder
        shapes["text"] = SMALL_LLAMA_TEXT
    elif model_size == "7b":
        shapes["text"], shapes["vision"] = QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION
    elif model_size == "8b":
        shapes["text"], shapes["vision"] = QWEN3_VL_8B_TEXT, QWEN3_VL_8B_VISION
    if model_size != "small":
        import torch

        shapes.update(device="cuda", dtype=torch.bfloat16)
    return shapes


def build_model(out_dir: Path, *, layout: str, model_size: str, vocab_size: int, image_size: int) -> None:
    """LLaVA-1.5 (Llama decoder, CLIP tower cut at its second-to-last layer, 2-layer GELU projector; one visual
    token per 14-px patch), Qwen2-VL, Qwen3-VL or InternVL 3 (its processor cutting images into the layout's tiles)
    of `model_size`, with a `vocab_size` output layer, the tiny model's tokenizer, and a processor for `image_size`²
    images."""
    from ue_dpo.synthetic.tiny_models import (
        build_tiny_internvl,
        build_tiny_llava,
        build_tiny_qwen2_vl,
        build_tiny_qwen3_vl,
    )

    builder = {
        "llava15": build_tiny_llava,
        "qwen2_vl": build_tiny_qwen2_vl,
        "qwen3_vl": build_tiny_qwen3_vl,
        "internvl": build_tiny_internvl,
    }[layout]
    model_image_size = LAYOUTS[layout].get("tile_size", image_size)  # a tiled model's processor takes tiles
    builder(out_dir, seed=0, vocab_size=vocab_size, image_size=model_image_size, **model_shapes(layout, model_size))


def write_dataset(
    out_dir: Path, model_dir: Path, *, pairs: int, image_size: int, question_tokens: int, response_tokens: int
) -> None:
    """`bench_pref`: random rectangles, a question of `QUESTION` plus `question_tokens` tokens, and chosen and
    rejected answers of exactly `response_tokens` tokens. Token ids past the tokenizer's are never targets, as
    in the released models, whose output layer is also wider than their tokenizer."""
    from PIL import Image, ImageDraw
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)

    def words_of(tokens: int) -> str:
        words = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
            words.append(rng.choice(WORDS))
        return tokenizer.decode(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:tokens])

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
        question = f"{QUESTION} {words_of(question_tokens)}" if question_tokens else QUESTION
        records.append(
            {
                "messages": [{"role": "user", "content": f"<image>{question}"}],
                "chosen": {"role": "assistant", "content": words_of(response_tokens)},
                "rejected": {"role": "assistant", "content": words_of(response_tokens)},
                "images": [f"images/{index:04d}.png"],
            }
        )
    (out_dir / "bench_pref.json").write_text(json.dumps(records))
    (out_dir / "dataset_info.json").write_text(
        json.dumps(
            {
                "bench_pref": {
                    "file_name": "bench_pref.json",
                    "formatting": "sharegpt",
                    "ranking": True,
                    "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                }
            }
        )
    )


def training_config(name: str, workdir: Path, settings: dict, run_dir: Path, use_gpu: bool) -> dict:
    method = dict(CONFIGS[name])
    if method.get("ue_precompute_ref"):
        method["ue_ref_cache_dir"] = str(run_dir / "ue_ref_cache")
    return {
        "model_name_or_path": str(workdir / "model"),
        "trust_remote_code": False,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "dataset": "bench_pref",
        "dataset_dir": str(workdir / "data"),
        "template": LAYOUTS[settings["layout"]]["template"],
        "cutoff_len": 4096,
        "image_max_pixels": settings["image_size"] ** 2,
        "preprocessing_num_workers": 1,
        "overwrite_cache": True,
        "dataloader_num_workers": 0,
        "output_dir": str(run_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": settings["pairs_per_step"],
        "gradient_accumulation_steps": 1,
        "num_train_epochs": settings["epochs"],
        "learning_rate": 1e-5,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "bf16": use_gpu,
        "fp16": False,
        "use_cpu": not use_gpu,
        **LAYOUTS[settings["layout"]].get("training_keys", {}),
        **method,
    }


def token_layout(row: dict, image_token_id: int) -> dict:
    """Image, prompt (template, system and question) and response tokens of a chosen row as LLaMA-Factory
    tokenized it."""
    image = sum(token == image_token_id for token in row["chosen_input_ids"])
    response = sum(label != IGNORE_INDEX for label in row["chosen_labels"])
    return {"image": image, "prompt": len(row["chosen_input_ids"]) - response - image, "response": response}


def worker(name: str, workdir: Path, settings: dict, run_index: int, result_path: Path) -> None:
    """Trains one configuration in this process and writes its step and run times and peak memory. On a GPU it
    also profiles the last warm-up step, whose kernel time it records."""
    import torch
    from transformers import TrainerCallback

    import ue_dpo

    ue_dpo.apply_llamafactory_integration()
    from llamafactory.train.tuner import run_exp

    use_gpu = torch.cuda.is_available()

    def synchronize() -> None:
        if use_gpu:
            torch.cuda.synchronize()

    class RunTimer(TrainerCallback):
        def __init__(self):
            self.step_seconds, self.step_cpu_seconds, self.layout, self.parameters = [], [], {}, 0
            self.rss_at_train_begin = self.gpu_at_train_begin = 0
            self.run_started = self.run_cpu_started = self.run_seconds = self.run_cpu_seconds = 0.0
            self.step_started = self.step_cpu_started = 0.0
            self.profiler, self.kernel_ms = None, None

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            self.layout = token_layout(train_dataloader.dataset[0], model.config.image_token_id)
            self.parameters = sum(parameter.numel() for parameter in model.parameters())
            self.rss_at_train_begin = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if use_gpu:
                self.gpu_at_train_begin = torch.cuda.memory_allocated()
            synchronize()
            self.run_started, self.run_cpu_started = time.perf_counter(), time.process_time()

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            if use_gpu and len(self.step_seconds) == settings["warmup"] - 1:
                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                )
                self.profiler.start()
            self.step_started, self.step_cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.step_seconds.append(time.perf_counter() - self.step_started)
            self.step_cpu_seconds.append(time.process_time() - self.step_cpu_started)
            if self.profiler is not None:
                self.profiler.stop()
                self.kernel_ms = (
                    sum(
                        event.device_time_total
                        for event in self.profiler.events()
                        if event.device_type == torch.autograd.DeviceType.CUDA
                    )
                    / 1000
                )
                self.profiler = None

        def on_train_end(self, args, state, control, **kwargs):
            synchronize()
            self.run_seconds = time.perf_counter() - self.run_started
            self.run_cpu_seconds = time.process_time() - self.run_cpu_started

    run_dir = workdir / "runs" / f"{name}-{run_index}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh reference cache: every run pays for its own
    timer = RunTimer()
    run_exp(training_config(name, workdir, settings, run_dir, use_gpu), callbacks=[timer])
    result = {
        "step_seconds": timer.step_seconds,
        "step_cpu_seconds": timer.step_cpu_seconds,
        "run_seconds": timer.run_seconds,
        "run_cpu_seconds": timer.run_cpu_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_at_train_begin_mib": timer.rss_at_train_begin / 1024,
        "layout": timer.layout,
        "parameters": timer.parameters,
    }
    if use_gpu:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_at_train_begin_mib"] = timer.gpu_at_train_begin / 2**20
        result["kernel_ms"] = timer.kernel_ms
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
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores visible{memory}; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda} "
            "(memory columns: torch.cuda.max_memory_allocated, and memory_allocated when training begins)"
        )
    else:
        lines.append("- No GPU: the memory column is the process's peak RSS (ru_maxrss), model and libraries included")
    from ue_dpo.machine import summarize_machine, this_machine

    # the kernel path and threads, as `ue-dpo run` records them (the configurations' processes inherit this
    # environment)
    lines.append(f"- Kernels and threads: {summarize_machine(this_machine())}")
    return lines


def forward_flops_per_token(
    width: int, kv_width: int, mlp_width: int, mlp_matrices: int, layers: int, attended: float
) -> float:
    """Matrix-multiply FLOPs of one token through `layers` transformer layers attending to `attended` keys."""
    linear = width * (2 * width + 2 * kv_width) + mlp_matrices * width * mlp_width
    return layers * 2 * (linear + 2 * attended * width)


def model_description(model_dir: Path, layout: dict) -> list[str]:
    """The model's shapes, and the shares of the output layer and the vision tower in its forward FLOPs."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.text_config
    row_tokens = layout["image"] + layout["prompt"] + layout["response"]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    decoder_flops = forward_flops_per_token(
        text.hidden_size,
        text.num_key_value_heads * head_dim,
        text.intermediate_size,
        3,
        text.num_hidden_layers,
        row_tokens / 2,
    )
    output_share = 2 * text.hidden_size * text.vocab_size / decoder_flops
    shapes = (
        f"text width {text.hidden_size}, {text.num_hidden_layers} layers, {text.num_attention_heads} heads / "
        f"{text.num_key_value_heads} KV heads, MLP {text.intermediate_size}, vocabulary {text.vocab_size:,}"
    )
    vision = config.vision_config
    if config.model_type == "llava":
        tower_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        tower_flops = tower_tokens * forward_flops_per_token(
            vision.hidden_size, vision.hidden_size, vision.intermediate_size, 2, vision.num_hidden_layers, tower_tokens
        )
        tower = (
            f"CLIP vision tower width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
            f"{vision.image_size} px in {vision.patch_size}-px patches, features of its second-to-last layer; "
            f"2-layer GELU projector"
        )
        tower_percent = 100 * tower_flops / (decoder_flops * row_tokens)
        tower_share = f"; the vision tower's forward on one image is {tower_percent:.1f}% of the decoder's on one row"
    elif config.model_type == "internvl":
        tower = (
            f"InternViT width {vision.hidden_size}, {vision.num_hidden_layers} layers, {vision.image_size[0]}-px tiles "
            f"in {vision.patch_size[0]}-px patches, pixel shuffle {config.downsample_ratio}, 2-layer GELU projector"
        )
        tower_share = ""
    else:  # Qwen2-VL's tower width is `embed_dim` (its `hidden_size` is the merger's output); Qwen3-VL's `hidden_size`
        width = vision.embed_dim if config.model_type == "qwen2_vl" else vision.hidden_size
        deepstack = getattr(vision, "deepstack_visual_indexes", None)
        tower = f"vision tower {vision.depth} layers x {width}, 2x2 patch merger" + (
            f", deepstack mergers after layers {', '.join(map(str, deepstack))}" if deepstack else ""
        )
        tower_share = ""
    return [
        f"- {config.model_type} architecture ({config.architectures[0]}), random weights: {shapes}; {tower}",
        (
            f"- matrix-multiply FLOPs (causal attention over {row_tokens}-token rows): the output layer is "
            f"{100 * output_share:.1f}% of the decoder's per token{tower_share}"
        ),
    ]


def summarize(
    results: dict[str, list[dict]], settings: dict, order: list[str], wall_seconds: float, model_dir: Path
) -> str:
    on_gpu = "peak_gpu_mib" in results[BASELINE][0]
    memory_key, at_train_begin_key = (
        ("peak_gpu_mib", "gpu_at_train_begin_mib") if on_gpu else ("peak_rss_mib", "rss_at_train_begin_mib")
    )
    layout_settings = LAYOUTS[settings["layout"]]

    def measured(runs: list[dict], key: str) -> list[float]:
        return [seconds for run in runs for seconds in run[key][settings["warmup"] :]]

    rows = {}
    for name, runs in results.items():
        wall = measured(runs, "step_seconds")
        rows[name] = {
            "step": statistics.median(wall),
            "spread": (min(wall), max(wall)),
            "step CPU": statistics.median(measured(runs, "step_cpu_seconds")),
            "run": statistics.median(run["run_seconds"] for run in runs),
            "run CPU": statistics.median(run["run_cpu_seconds"] for run in runs),
            "memory": max(run[memory_key] for run in runs),
            "first_step": statistics.median(run["step_seconds"][0] for run in runs),
            "at_train_begin": max(run[at_train_begin_key] for run in runs),
        }
        if on_gpu:
            rows[name]["kernel"] = statistics.median(run["kernel_ms"] for run in runs)
    base = rows[BASELINE]
    first = results[BASELINE][0]
    layout = first["layout"]
    steps = len(first["step_seconds"])
    kernel_header, kernel_rule = (" GPU kernel (ms) | kernel ratio |", "---|---|") if on_gpu else ("", "")
    lines = [
        "# Benchmark: stock LLaMA-Factory DPO vs UE-DPO",
        "",
        f"Generated by `python bench/run.py` ({' '.join(sys.argv[1:]) or 'defaults'}) in {wall_seconds / 60:.0f} min.",
        "",
        "## Machine",
        "",
        *machine_description(),
        "",
        "## Workload",
        "",
        *model_description(model_dir, layout),
        (
            f"- {layout_settings['name']} token layout (LLaMA-Factory template `{layout_settings['template']}`): "
            f"{settings['image_size']}x{settings['image_size']} px images, {layout['image']} image tokens, "
            f"{layout['prompt']} prompt tokens (template, system prompt and question) and {layout['response']} "
            f"response tokens per row (as LLaMA-Factory tokenized the first pair)"
        ),
        (
            f"- LoRA rank 8 on all linear layers of the language model (`lora_target: all`), {first['parameters']:,} "
            f"parameters with the adapters; fp32 on CPU / bf16 on GPU; {settings['pairs']} pairs, "
            f"{settings['pairs_per_step']} per step (`per_device_train_batch_size`), {settings['epochs']} epochs: "
            f"{steps} steps per run in every configuration"
        ),
        (
            f"- each configuration in its own process, in the order {' '.join(order)}, repeated "
            f"{settings['rounds']} times; step medians over the last {steps - settings['warmup']} steps of every run "
            f"(the first {settings['warmup']} are warm-up); run = the median over the repetitions"
        ),
        (
            "- step = wall-clock time from LLaMA-Factory's step begin to step end (forward, backward, optimizer); "
            "run = train begin to train end, every step included (with `ue_precompute_ref`, the pass that fills the "
            "reference cache, in the first step); CPU = the process's CPU time over the same span, less sensitive "
            "to other processes on shared cores"
        ),
        *(
            [
                (
                    "- GPU kernel = the summed duration of the GPU kernels of the last warm-up step, "
                    "under torch.profiler (CPU and CUDA activity); that step's time is in the run time, "
                    "not in the step medians"
                )
            ]
            if on_gpu
            else []
        ),
        "",
        "## Results",
        "",
        (
            "| configuration | median step (s) | min-max (s) | step ratio | median step CPU (s) | CPU ratio "
            "| run (s) | run ratio | run CPU (s) | run CPU ratio | peak memory (MiB) | memory ratio "
            f"| memory at train start (MiB) | first step (s) |{kernel_header}"
        ),
        f"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{kernel_rule}",
    ]
    for name in order:
        row = rows[name]
        kernel = f" {row['kernel']:.0f} | {row['kernel'] / base['kernel']:.2f}x |" if on_gpu else ""
        lines.append(
            f"| `{name}` | {row['step']:.2f} | {row['spread'][0]:.2f}-{row['spread'][1]:.2f} "
            f"| {row['step'] / base['step']:.2f}x | {row['step CPU']:.2f} "
            f"| {row['step CPU'] / base['step CPU']:.2f}x | {row['run']:.1f} | {row['run'] / base['run']:.2f}x "
            f"| {row['run CPU']:.1f} | {row['run CPU'] / base['run CPU']:.2f}x | {row['memory']:.0f} "
            f"| {row['memory'] / base['memory']:.2f}x | {row['at_train_begin']:.0f} | {row['first_step']:.2f} |{kernel}"
        )
    lines += ["", "## Targets (issue 16)", ""]
    targets = TARGETS.get((settings["layout"], settings["model_size"]), ())
    if not targets:
        lines.append(f"- none stated for the {layout_settings['name']} layout at model size `{settings['model_size']}`")
    for name, measure, bound, reference in targets:
        if name not in rows or reference not in rows:
            lines.append(f"- `{name}` {measure} <= {bound}x of `{reference}`: not run")
            continue
        verdict = []
        for label in (measure, f"{measure} CPU") if measure != "memory" else ("memory",):
            ratio = round(rows[name][label] / rows[reference][label], 2)
            verdict.append(
                f"{label} {ratio:.2f}x of `{reference}` (target <= {bound}x: {'met' if ratio <= bound else 'MISSED'})"
            )
        lines.append(f"- `{name}`: " + "; ".join(verdict))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "_work", help="model, data and runs")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(DEFAULT_CONFIGS))
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="llava15")
    parser.add_argument(
        "--model-size",
        choices=MODEL_SIZES,
        default="small",
        help="small (CPU or GPU), or the layout's real shapes: 7b (LLaVA-1.5, Qwen2-VL), 8b (Qwen3-VL); CUDA GPU only",
    )
    parser.add_argument("--vocab-size", type=int, help="output-layer entries; default: the layout's, per size")
    parser.add_argument("--image-size", type=int, help="pixels per side; default: the layout's")
    parser.add_argument("--question-tokens", type=int, help="tokens after the fixed question; default: the layout's")
    parser.add_argument("--response-tokens", type=int, help="default: the layout's")
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs in the dataset")
    parser.add_argument("--pairs-per-step", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="steps per run left out of the step medians")
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--run-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    layout = LAYOUTS[args.layout]
    if args.model_size not in layout["vocab_size"]:
        parser.error(f"--layout {args.layout} has the model sizes {', '.join(layout['vocab_size'])}")
    args.vocab_size = args.vocab_size or layout["vocab_size"][args.model_size]
    for key in ("image_size", "question_tokens", "response_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, layout[key])
    settings = {
        key: getattr(args, key)
        for key in (
            "layout",
            "model_size",
            "vocab_size",
            "image_size",
            "question_tokens",
            "response_tokens",
            "pairs",
            "pairs_per_step",
            "epochs",
            "rounds",
            "warmup",
        )
    }
    if args.worker:
        worker(args.worker, args.workdir, settings, args.run_index, args.result_path)
        return
    if BASELINE not in args.configs:
        parser.error(f"--configs must include the baseline `{BASELINE}`: ratios are taken to it")
    steps = args.epochs * math.ceil(args.pairs / args.pairs_per_step)
    if args.image_size % layout["pixels_per_visual_token"] or min(args.pairs_per_step, args.rounds, args.warmup) < 1:
        parser.error(
            f"--image-size must be a multiple of {layout['pixels_per_visual_token']} for this layout; "
            "--pairs-per-step, --rounds and --warmup >= 1"
        )
    if steps <= args.warmup:
        parser.error(f"{steps} steps per run leave none after {args.warmup} warm-up steps: raise --pairs or --epochs")
    if args.model_size != "small":
        import torch

        if not torch.cuda.is_available():
            parser.error(
                f"--model-size {args.model_size} needs a CUDA GPU (it builds and trains a 7-9B-parameter model in "
                "bf16); without one, use --model-size small"
            )

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "model"
    build_model(
        model_dir,
        layout=args.layout,
        model_size=args.model_size,
        vocab_size=args.vocab_size,
        image_size=args.image_size,
    )
    write_dataset(
        args.workdir / "data",
        model_dir,
        pairs=args.pairs,
        image_size=args.image_size,
        question_tokens=args.question_tokens,
        response_tokens=args.response_tokens,
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "DISABLE_VERSION_CHECK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    results = {name: [] for name in args.configs}
    for round_index in range(args.rounds):
        for name in args.configs:
            result_path = args.workdir / f"result-{name}-{round_index}.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                name,
                "--run-index",
                str(round_index),
                "--result-path",
                str(result_path),
                "--workdir",
                str(args.workdir),
            ]
            command += [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
            print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
            completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if completed.returncode != 0:
                sys.exit(f"`{name}` failed ({completed.returncode}):\n{completed.stderr[-5000:]}")
            results[name].append(json.loads(result_path.read_text()))
    report = summarize(results, settings, args.configs, time.perf_counter() - started, model_dir)
    if args.results.exists() and NOTES_MARKER in args.results.read_text():
        report += "\n" + NOTES_MARKER + args.results.read_text().split(NOTES_MARKER, 1)[1]
    args.results.write_text(report)
    (args.workdir / "results.json").write_text(json.dumps({"settings": settings, "runs": results}, indent=1))
    print(report)


if __name__ == "__main__":
    main()

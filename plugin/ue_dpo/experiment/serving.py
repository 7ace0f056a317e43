"""The served backend of `ue-dpo run` (`evaluation.server`): each run's model prepared for a server, the server
started, lmms-eval's `openai` chat model pointed at it.

A run's model is prepared once under `<output>/served/<run>`, a cached stage whose marker holds the digest of
what it was built from:
- a LoRA output dir is merged into its base with `llamafactory-cli export` (the marker holds the adapter's
  digest, so a retrained adapter is merged again; a merge that fails names the run and leaves the adapter as
  it is);
- a full or merged model folder is mirrored: its weight files linked, its other (small) files copied.
Either way the folder then gets the training template as its chat template and stop tokens
(`ue_dpo.evaluation.chat.write_training_chat_template`), so the server prompts as `ue_dpo_hf` does.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ue_dpo.evaluation.chat import template_for_model, write_training_chat_template
from ue_dpo.experiment.config import Server
from ue_dpo.experiment.layout import ExperimentLayout
from ue_dpo.experiment.stages import Markers, StageError, digest, stream, weights_identity

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
REQUEST_FAILED = "[LMMS_EVAL_REQUEST_FAILED"  # what lmms-eval's openai model scores when a request failed
IMAGE_ENCODE_FORMAT_ENV = "LMMS_IMAGE_ENCODE_FORMAT"  # how lmms-eval's chat models send images (PNG by default)


def files_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of every file in `folder` (the adapter a merge is built from)."""
    sha = hashlib.sha256()
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        relative = path.relative_to(folder)
        if relative.parts[0].startswith("checkpoint-"):
            continue  # intermediate checkpoints of the training run are not the adapter
        sha.update(str(relative).encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                sha.update(block)
    return sha.hexdigest()


def mirror_model(source: Path, destination: Path) -> None:
    """`destination` as a copy of the model folder `source`, with its weight files linked rather than copied."""
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES + (".index.json",)):
            (destination / path.name).symlink_to(path.resolve())
        elif path.is_file():
            shutil.copy2(path, destination / path.name)


def prepare_served_model(
    run_name: str,
    model: str,
    *,
    output: Path,
    markers: Markers,
    server: Server,
    env: dict[str, str],
    llamafactory_cli: str,
    prompt_args: Mapping[str, Any] | None = None,
) -> tuple[Path, str, str]:
    """(served folder, training template, stage digest) of one run, merged or mirrored unless its marker is current;
    `prompt_args` are the run's training keys of `TRAINING_PROMPT_KEYS`: its template (else its model family's) and
    `crop_to_patches` make the folder's chat template and processor defaults."""
    # lmms-eval's model module imports torch, transformers and lmms-eval, which only preparing a model needs
    from ue_dpo.evaluation.model import resolve_checkpoint

    layout = ExperimentLayout(output)
    base, adapter_dir, _ = resolve_checkpoint(model)
    prompt_args = dict(prompt_args or {})
    template = template_for_model(base, prompt_args.get("template"))
    crop_to_patches = bool(prompt_args.get("crop_to_patches", False))
    served = layout.served_dir(run_name)
    stage = f"serve-{run_name}"
    if adapter_dir:
        source = {
            "adapter": adapter_dir,
            "adapter_digest": files_digest(Path(adapter_dir)),
            "base": base,
            "base_files": weights_identity(base),
            "merge_dtype": server.merge_dtype,
        }
    else:  # the files' sizes and times: weights replaced in place are mirrored again
        source = {"model": str(Path(model).resolve()), "files": weights_identity(model)}
    # crop_to_patches only when set, so that the digests of folders served before it was read stay what they were
    stage_digest = digest(source, template, *(["crop_to_patches"] if crop_to_patches else []))
    if markers.matches(stage, stage_digest) and served.is_dir():
        print(f"    {run_name}: served model folder {served} is current, reused", flush=True)
        return served, template, stage_digest
    shutil.rmtree(served, ignore_errors=True)
    if adapter_dir is None:
        mirror_model(Path(model), served)
    else:
        export = {
            "model_name_or_path": base,
            "adapter_name_or_path": adapter_dir,
            "finetuning_type": "lora",
            "template": template,
            "export_dir": str(served),
            "infer_dtype": server.merge_dtype,
        }
        config_path = layout.config(stage)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(export, sort_keys=False))
        log_path = layout.log(stage)
        print(
            f"    {run_name}: merging the LoRA adapter {adapter_dir} into {base} (llamafactory-cli export)", flush=True
        )
        returncode = stream([llamafactory_cli, "export", str(config_path)], env=env, log_path=log_path)
        if returncode != 0 or not (served / "config.json").is_file():
            shutil.rmtree(served, ignore_errors=True)
            raise StageError(
                f"merging run {run_name!r} failed (llamafactory-cli export exit status {returncode}); "
                f"its adapter {adapter_dir} is kept as it is. See {log_path}"
            )
    write_training_chat_template(served, template, crop_to_patches=crop_to_patches)
    markers.write(stage, stage_digest, run=run_name, template=template, served=str(served), **source)
    return served, template, stage_digest


def served_model_args(served: Path, base_url: str, server: Server, extra: dict[str, Any]) -> dict[str, Any]:
    """lmms-eval `openai` model args for one served run (no key: a local server needs none)."""
    return {
        "model": str(served),
        "base_url": base_url,
        "api_key": "EMPTY",
        "num_concurrent": server.concurrency,
        "timeout": server.request_timeout_s,
        **extra,
    }


def check_lossless_images(env: Mapping[str, str]) -> None:
    """Refuse a lossy encoding of the images lmms-eval sends a server: it would see other pixels than `ue_dpo_hf`."""
    image_format = env.get(IMAGE_ENCODE_FORMAT_ENV, "PNG").strip().upper()
    if image_format != "PNG":
        raise StageError(
            f"{IMAGE_ENCODE_FORMAT_ENV}={image_format}: lmms-eval would send the server lossy images, so a served run "
            f"would not see the pixels training and ue_dpo_hf see; unset it (PNG, lossless, is lmms-eval's default)"
        )


def check_no_failed_requests(samples_files: dict[str, str], run_name: str, log_path: Path) -> None:
    """lmms-eval's openai model scores a request that failed every retry as a placeholder text; refuse that."""
    for task, samples in samples_files.items():
        failed = sum(REQUEST_FAILED in line for line in Path(samples).read_text().splitlines())
        if failed:
            raise StageError(
                f"run {run_name!r}: {failed} {task} requests to the server failed after lmms-eval's "
                f"retries and would be scored as failure text; see {log_path}"
            )

"""`ue_precompute_ref`: per-token reference log-probs of the training set, computed once and kept on disk.

Valid because the reference model is frozen and sees only the clean image. Each training row (one chosen
or rejected sequence) is identified by a content digest of its token ids, labels and images as loaded (the
collator's `ue_row_digest`); a cache file is named by a digest of the reference model's identity, the
template, the image processing settings and every row digest of the dataset, so any change to them selects another
file.
"""

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import torch
from llamafactory.hparams.model_args import ProcessorArguments

MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".pt")


def _local_files_fingerprint(path: str | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a local checkpoint's weight and config files; empty for hub ids."""
    if not path or not Path(path).is_dir():
        return []
    return [
        (file.name, file.stat().st_size, file.stat().st_mtime_ns)
        for file in sorted(Path(path).iterdir())
        if file.suffix in MODEL_FILE_SUFFIXES
    ]


def reference_identity(model_args, data_args, finetuning_args) -> dict:
    """Everything besides the data that changes what the reference model outputs."""
    reference_path = finetuning_args.ref_model or model_args.model_name_or_path
    adapters = finetuning_args.ref_model_adapters if finetuning_args.ref_model else model_args.adapter_name_or_path
    # LLaMA-Factory splits adapter_name_or_path on commas; ref_model_adapters stays a string
    reference_adapters = [path.strip() for path in adapters.split(",")] if isinstance(adapters, str) else adapters
    return {
        "model": reference_path,
        "model_revision": model_args.model_revision,
        "model_files": _local_files_fingerprint(reference_path),
        "adapters": reference_adapters,
        "adapter_files": [_local_files_fingerprint(path) for path in reference_adapters or []],
        "finetuning_type": finetuning_args.finetuning_type,
        "compute_dtype": str(model_args.compute_dtype),
        "quantization_bit": model_args.quantization_bit,
        "template": data_args.template,
        "cutoff_len": data_args.cutoff_len,
        # the row digests hold the images as loaded; these settings make them `pixel_values`
        "processor_arguments": {field.name: getattr(model_args, field.name) for field in fields(ProcessorArguments)},
    }


def cache_file(cache_dir: Path, identity: dict, row_digests: list[int]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(set(row_digests))).encode())
    return Path(cache_dir) / f"reference_logps-{digest.hexdigest()[:24]}.pt"


def save(path: Path, identity: dict, rows: dict[int, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"identity": identity, "rows": rows}, partial)
    partial.replace(path)  # a run killed while writing leaves no truncated cache behind


def load(path: Path) -> dict[int, torch.Tensor]:
    return torch.load(path, map_location="cpu")["rows"]


def place(rows: dict[int, torch.Tensor], row_digests: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[N, K]` reference log-probs for a batch: row n's cached values at the positions where `mask[n]` is true."""
    placed = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for row, digest in enumerate(row_digests.tolist()):
        if digest not in rows:
            raise RuntimeError(
                "a training row has no precomputed reference log-probs (the dataset changed during training?); "
                "restart the run so that `ue_precompute_ref` recomputes the cache."
            )
        cached = rows[digest]
        if cached.numel() != int(mask[row].sum()):
            raise RuntimeError(
                f"cached reference log-probs cover {cached.numel()} tokens but the row has "
                f"{int(mask[row].sum())} response tokens; delete the cache and restart."
            )
        placed[row, mask[row]] = cached.to(placed.device)
    return placed

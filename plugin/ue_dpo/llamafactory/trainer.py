"""The `stage: ue_dpo` trainer: one step is a `StepForward` over the batch and the preference method's calls on it.

The method (`ue_dpo.methods`, picked by `ue_weighting`) decides the passes, the token weights and the metrics; the
step's forward owns how the passes run (`step_forward.py`); the method's loss (DPO's sigmoid loss unless the method
owns another) runs on the step; this class orchestrates, adds LLaMA-Factory's SFT term, logs, and precomputes the
reference of `ue_precompute_ref`.
"""

from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import gather_object
from llamafactory.extras import logging
from llamafactory.train.dpo.trainer import CustomDPOTrainer

from ue_dpo.llamafactory import reference_cache
from ue_dpo.llamafactory.collator import ROW_DIGEST
from ue_dpo.llamafactory.step_forward import StepForward, StepNotes
from ue_dpo.methods.base import WeightedTokens

# a child of LLaMA-Factory's logger, whose handler and level (LLAMAFACTORY_VERBOSITY) print info lines
logger = logging.get_logger(f"llamafactory.{__name__}")


def token_means(terms: dict[str, tuple[torch.Tensor, torch.Tensor]], reduce_sum) -> dict[str, float]:
    """Each term's mean of `values` over the tokens `where` marks, on all ranks (`reduce_sum` sums a tensor across
    ranks). A term with no token on any rank is left out on every rank, as no mean exists (LLaMA-Factory all-reduces
    logged metrics by position, so ranks must log the same keys)."""
    if not terms:
        return {}
    sums = torch.stack([torch.where(where, values.detach().float(), 0.0).sum() for values, where in terms.values()])
    counts = torch.stack([where.sum().float() for _, where in terms.values()])
    total_sums, total_counts = reduce_sum(torch.stack([sums, counts])).tolist()
    return {key: total / count for key, total, count in zip(terms, total_sums, total_counts) if count > 0}


class UEDPOTrainer(CustomDPOTrainer):
    def __init__(self, *args, reference_identity: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_identity = reference_identity  # keys the `ue_precompute_ref` cache
        self._precomputed_reference: dict[int, torch.Tensor] | None = None
        self.step_notes = StepNotes(logger.info_rank0)

    def step_forward(self, model, batch: dict[str, torch.Tensor], precomputed_reference=None) -> StepForward:
        return StepForward(
            batch,
            model=model,
            ref_model=self.ref_model,
            accelerator=self.accelerator,
            finetuning_args=self.finetuning_args,
            pad_token_id=self.data_collator.tokenizer.pad_token_id,
            notes=self.step_notes,
            precomputed_reference=precomputed_reference,
        )

    def token_weighting(self, model, batch: dict[str, torch.Tensor]) -> WeightedTokens:
        """Per-token log πθ and the method's weights and quantities of one collated batch (what `ue-dpo inspect`
        shows)."""
        with self.step_forward(model, batch) as step:
            return self.finetuning_args.method.weigh(step)

    def get_batch_loss_metrics(self, model, batch, train_eval: Literal["train", "eval"] = "train"):
        method = self.finetuning_args.method
        precomputed = None
        if self.finetuning_args.ue_precompute_ref and train_eval == "train":
            precomputed = self._precomputed_reference_rows(model)
        with self.step_forward(model, batch, precomputed) as step:
            tokens = method.weigh(step)
            result = method.loss(step, tokens, beta=self.beta, label_smoothing=self.label_smoothing)
        response = tokens.response
        pairs, mask = response.pairs, response.mask
        metrics = {"ue/imageless_pairs": float((~response.has_image[:pairs]).sum())}
        metrics.update(token_means(method.metric_terms(tokens), lambda sums: self.accelerator.reduce(sums, "sum")))
        metrics.update({f"{method.name}/{term}": values.mean().item() for term, values in result.terms.items()})
        losses = result.losses
        unweighted_logps = (tokens.policy_logps * mask).sum(-1)
        if self.ftx_gamma > 1e-6:  # LLaMA-Factory's SFT term: mean token NLL of the chosen response
            losses = losses - self.ftx_gamma * unweighted_logps[:pairs] / mask[:pairs].sum(-1).clamp(min=1)

        prefix = "eval_" if train_eval == "eval" else ""
        metrics.update(
            {
                "rewards/chosen": result.chosen_rewards.mean().item(),
                "rewards/rejected": result.rejected_rewards.mean().item(),
                "rewards/accuracies": (result.chosen_rewards > result.rejected_rewards).float().mean().item(),
                "rewards/margins": (result.chosen_rewards - result.rejected_rewards).mean().item(),
                "logps/chosen": unweighted_logps[:pairs].mean().item(),
                "logps/rejected": unweighted_logps[pairs:].mean().item(),
            }
        )
        return losses.mean(), {f"{prefix}{key}": value for key, value in metrics.items()}

    def _precomputed_reference_rows(self, model) -> dict[int, torch.Tensor]:
        if self._precomputed_reference is None:
            self._precomputed_reference = self._load_or_compute_reference_rows(model)
        return self._precomputed_reference

    def _load_or_compute_reference_rows(self, model) -> dict[int, torch.Tensor]:
        """Reference log-probs of every training row, from the cache or computed now (split across ranks)."""
        dataset, batch_size = self.train_dataset, self.args.per_device_train_batch_size
        starts = list(range(0, len(dataset), batch_size))

        def collated(start: int) -> dict[str, torch.Tensor]:
            stop = min(start + batch_size, len(dataset))
            return self.data_collator([dataset[index] for index in range(start, stop)])

        row_digests = [digest for start in starts for digest in collated(start)[ROW_DIGEST].tolist()]
        cache_dir = self.finetuning_args.ue_ref_cache_dir or Path(self.args.output_dir) / "ue_ref_cache"
        path = reference_cache.cache_file(cache_dir, self.reference_identity, row_digests)
        if path.exists():
            logger.info_rank0(f"ue_precompute_ref: reference log-probs loaded from {path}")
            return reference_cache.load(path)

        ranks, rank = self.accelerator.num_processes, self.accelerator.process_index
        my_starts = starts[rank::ranks] or starts[:1]
        rows = {}
        for slot in range(-(-len(starts) // ranks)):  # the same number of forwards on every rank (ZeRO-3)
            step = self.step_forward(model, self._prepare_inputs(collated(my_starts[min(slot, len(my_starts) - 1)])))
            logps, response = step.reference_token_logps().cpu(), step.response
            for row, digest in enumerate(response.row_digests.tolist()):
                rows[digest] = logps[row][response.mask[row].cpu()]
        if ranks > 1:
            rows = {digest: logps for part in gather_object([rows]) for digest, logps in part.items()}
        if self.accelerator.is_main_process:
            reference_cache.save(path, self.reference_identity, rows)
            logger.info_rank0(f"ue_precompute_ref: reference log-probs of {len(rows)} rows saved to {path}")
        self.accelerator.wait_for_everyone()
        return rows

"""The UE-DPO trainer: gathers per-token logits from three passes and calls the pure core."""

from contextlib import nullcontext
from typing import Literal

import torch
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.train.dpo.trainer import CustomDPOTrainer

from ue_dpo.core.loss import dpo_sigmoid_loss, weighted_sequence_logps
from ue_dpo.core.token_stats import TargetLogitSummary, blind_spot_statistics, summarize_logits
from ue_dpo.core.weights import blind_spot_weights
from ue_dpo.llamafactory.collator import HAS_IMAGE, NOISED_PIXEL_VALUES


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions whose logits predict a response token, their target ids and the `[N, K]` mask.

    Logits at position p predict token p + 1; only positions where some row has a label are kept.
    """
    next_labels = labels[:, 1:]
    positions = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    targets = next_labels[:, positions]
    mask = targets != IGNORE_INDEX
    return positions, targets.masked_fill(~mask, 0), mask


class UEDPOTrainer(CustomDPOTrainer):
    def _logits_at(self, model, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        return model(**inputs, return_dict=True, use_cache=False, logits_to_keep=positions).logits

    def _reference_token_logps(self, model, inputs, positions, targets) -> torch.Tensor:
        if self.ref_model is None:
            reference, context = model, self.accelerator.unwrap_model(model).disable_adapter()
        else:
            reference, context = self.ref_model, nullcontext()
        with torch.no_grad(), context:
            return summarize_logits(self._logits_at(reference, inputs, positions), targets).target_logprob

    def _gather_across_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        lengths = self.accelerator.gather(torch.tensor([values.numel()], device=values.device))
        padded = self.accelerator.pad_across_processes(values, dim=0)
        gathered = self.accelerator.gather(padded).reshape(self.accelerator.num_processes, -1)
        return torch.cat([row[:length] for row, length in zip(gathered, lengths.tolist())])

    def _token_weights(self, clean: TargetLogitSummary, noised: TargetLogitSummary, mask, has_image):
        args = self.finetuning_args
        uncertainty, delta = blind_spot_statistics(clean.target_logit, clean.probe_logit, noised.target_logit)
        weighted_mask = mask & has_image.unsqueeze(-1)
        pairs = mask.shape[0] // 2
        per_branch = {}
        for name, rows, preferred in (("chosen", slice(None, pairs), True), ("rejected", slice(pairs, None), False)):
            per_branch[name] = blind_spot_weights(
                uncertainty[rows],
                delta[rows],
                weighted_mask[rows],
                alpha=args.ue_alpha,
                tau=args.ue_tau,
                preferred=preferred,
                scope=args.ue_stat_scope,
                gather=self._gather_across_ranks,
            )
        weights = torch.cat([per_branch["chosen"].weights, per_branch["rejected"].weights])
        if args.ue_branches == "chosen":
            weights[pairs:] = 1.0
        elif args.ue_branches == "rejected":
            weights[:pairs] = 1.0
        selected = torch.cat([per_branch["chosen"].selected, per_branch["rejected"].selected])
        return weights, selected, uncertainty, delta, weighted_mask

    @staticmethod
    def _ue_metrics(weights, selected, uncertainty, delta, weighted_mask, pairs) -> dict[str, float]:
        def mean_over(values: torch.Tensor, where: torch.Tensor) -> float:
            count = where.sum()
            return float((values * where).sum() / count) if count > 0 else 0.0

        chosen, rejected = slice(None, pairs), slice(pairs, None)
        return {
            "ue/selected_share_chosen": mean_over(selected[chosen].float(), weighted_mask[chosen]),
            "ue/selected_share_rejected": mean_over(selected[rejected].float(), weighted_mask[rejected]),
            "ue/lambda_chosen_mean": mean_over(weights[chosen], weighted_mask[chosen]),
            "ue/lambda_rejected_mean": mean_over(weights[rejected], weighted_mask[rejected]),
            "ue/u_mean": mean_over(uncertainty, weighted_mask),
            "ue/delta_mean": mean_over(delta, weighted_mask),
        }

    def get_batch_loss_metrics(self, model, batch, train_eval: Literal["train", "eval"] = "train"):
        args = self.finetuning_args
        inputs = dict(batch)
        noised_pixel_values = inputs.pop(NOISED_PIXEL_VALUES)
        has_image = inputs.pop(HAS_IMAGE)
        positions, targets, mask = response_positions(inputs.pop("labels"))
        pairs = targets.shape[0] // 2
        metrics = {"ue/imageless_pairs": float((~has_image[:pairs]).sum())}

        if args.ue_alpha > 0:
            with torch.no_grad():  # the current policy on v', adapters on
                noised_logits = self._logits_at(model, {**inputs, "pixel_values": noised_pixel_values}, positions)
                noised = summarize_logits(noised_logits, targets)
                del noised_logits
            clean = summarize_logits(self._logits_at(model, inputs, positions), targets, probe_ids=noised.argmax)
            weights, selected, uncertainty, delta, weighted_mask = self._token_weights(clean, noised, mask, has_image)
            metrics.update(self._ue_metrics(weights, selected, uncertainty, delta, weighted_mask, pairs))
        else:  # λ ≡ 1: plain DPO, and v' would change nothing
            clean = summarize_logits(self._logits_at(model, inputs, positions), targets)
            weights = torch.ones_like(clean.target_logprob)
        reference_token_logps = self._reference_token_logps(model, inputs, positions, targets)

        policy, reference = weighted_sequence_logps(
            clean.target_logprob, reference_token_logps, weights, mask, target=args.ue_weight_target
        )
        result = dpo_sigmoid_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        losses = result.losses
        unweighted_logps = (clean.target_logprob * mask).sum(-1)
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

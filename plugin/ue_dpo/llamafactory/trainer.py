"""The UE-DPO trainer: gathers per-token logits from three passes and calls the pure core."""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import gather_object
from llamafactory.extras import logging
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.train.dpo.trainer import CustomDPOTrainer

from ue_dpo.core.chunked import projected_token_statistics
from ue_dpo.core.loss import (
    dpo_sigmoid_loss,
    log_weighted_sequence_logps,
    weighted_sequence_logps,
)
from ue_dpo.core.peer_weights import ddpo_token_weights, tpo_token_weights
from ue_dpo.core.shared_prefix import (
    PrefixNotShared,
    packed_hidden_gather,
    shared_prefix_layout,
)
from ue_dpo.core.token_stats import TargetLogitSummary, blind_spot_statistics
from ue_dpo.core.weights import UNSELECTED, blind_spot_categories, blind_spot_weights
from ue_dpo.llamafactory import reference_cache
from ue_dpo.llamafactory.collator import (
    HAS_IMAGE,
    NOISED_PIXEL_VALUES,
    ROW_DIGEST,
    chosen_row_images,
)

# a child of LLaMA-Factory's logger, whose handler and level (LLAMAFACTORY_VERBOSITY) print info lines
logger = logging.get_logger(f"llamafactory.{__name__}")

# the vision tower and projector of each model type, on the model holding `get_image_features`
VISION_MODULES = {
    "llava": ("vision_tower", "multi_modal_projector"), "qwen2_vl": ("visual",), "qwen2_5_vl": ("visual",),
}
MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that apply a 4-D attention mask as given
PACKED_BATCH_KEYS = {"input_ids", "attention_mask", "position_ids", "rope_deltas", "pixel_values", "image_grid_thw"}


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions whose logits predict a response token, their target ids and the `[N, K]` mask.

    Logits at position p predict token p + 1; only positions where some row has a label are kept.
    """
    next_labels = labels[:, 1:]
    positions = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    targets = next_labels[:, positions]
    mask = targets != IGNORE_INDEX
    return positions, targets.masked_fill(~mask, 0), mask


@dataclass
class BatchTokens:
    """Every per-token quantity of one batch that the loss reads; rows are B chosen, then B rejected, `[2B, K]`."""

    model_inputs: dict  # the forward's inputs with the clean image
    noised_inputs: dict | None  # the same with v' (when the weighting reads v')
    positions: torch.Tensor  # [K] logit positions that predict a response token
    targets: torch.Tensor  # token ids a_t
    mask: torch.Tensor  # response tokens
    has_image: torch.Tensor  # [2B]
    row_digests: torch.Tensor | None  # [2B] (with `ue_precompute_ref`)
    weighted_mask: torch.Tensor  # response tokens of rows with an image (those ue and tpo may weight)
    policy_logps: torch.Tensor  # log πθ(a_t | v), differentiable
    weights: torch.Tensor  # λ (ue), TPO's w, γ or 1 (ddpo), 1 (uniform); 1 outside `weighted_mask` for ue/tpo
    uncertainty: torch.Tensor | None = None  # u (ue)
    delta: torch.Tensor | None = None  # Δ (ue) or TPO's s: both logit(a|v) - logit(a|v')
    selected: torch.Tensor | None = None  # I_w on chosen rows, I_l on rejected rows (ue); differing tokens (ddpo)
    category: torch.Tensor | None = None  # index into ue_dpo.core.weights.CATEGORY_NAMES (ue)

    @property
    def pairs(self) -> int:
        return self.targets.shape[0] // 2


class UEDPOTrainer(CustomDPOTrainer):
    def __init__(self, *args, reference_identity: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_identity = reference_identity  # keys the `ue_precompute_ref` cache
        self._precomputed_reference: dict[int, torch.Tensor] | None = None
        self._packed_batch: dict | None = None  # the current batch's shared-prefix layout and packed inputs
        self._logged_notes: set[str] = set()

    def _log_once(self, message: str) -> None:
        if message not in self._logged_notes:
            self._logged_notes.add(message)
            logger.info_rank0(message)

    def _base_model(self, model):
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped

    @staticmethod
    def _placeholder_ids(base) -> tuple[int, ...]:
        ids = (getattr(base.config, "image_token_id", None), getattr(base.config, "video_token_id", None))
        return tuple(token_id for token_id in ids if token_id is not None)

    def _shared_prefix_forward(self, model, inputs, positions, mask):
        """(packed forward inputs, packed columns to keep, index of each `[2B, K]` statistic's hidden state among
        them) when this batch's pairs can share their prompts; else None, and the reason is logged once."""
        if not self.finetuning_args.ue_prefix_sharing:
            return None
        base = self._base_model(model)
        model_type, attention = base.config.model_type, base.config.get_text_config()._attn_implementation
        if model_type not in VISION_MODULES:
            reason = f"model type `{model_type}` is not one of {', '.join(VISION_MODULES)}"
        elif attention not in MASKED_ATTENTION:
            reason = (f"`attn_implementation: {attention}` does not apply a 4-D attention mask; use sdpa or eager "
                      "to share prompts")
        elif unknown := sorted(set(inputs) - PACKED_BATCH_KEYS):
            reason = f"the batch holds {', '.join(unknown)}, which packing does not lay out"
        elif inputs["attention_mask"].dim() != 2:
            reason = "the batch already has a 4-D attention mask"
        else:
            try:
                return self._packed_batch_forward(base, inputs, positions, mask)
            except PrefixNotShared as error:
                reason = str(error)
        self._log_once(f"ue_prefix_sharing: computing unshared rows, since {reason}.")
        return None

    def _packed_batch_forward(self, base, inputs, positions, mask):
        """Layout and packed inputs, built once per batch and per image tensor (v, v') and reused by every pass."""
        input_ids = inputs["input_ids"]
        batch = self._packed_batch
        if batch is None or batch["input_ids"] is not input_ids:
            labelled = torch.zeros_like(input_ids, dtype=torch.bool)
            labelled[:, positions + 1] = mask
            layout = shared_prefix_layout(input_ids, inputs["attention_mask"], labelled, self._placeholder_ids(base))
            kept, hidden_index = packed_hidden_gather(layout, positions, mask)
            position_ids = inputs.get("position_ids")
            if position_ids is None:  # the model's own default: the column
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            text = {
                "input_ids": layout.pack(input_ids, self.data_collator.tokenizer.pad_token_id),
                "attention_mask": self._packed_attention_mask(base, layout.attends()),
                "position_ids": layout.pack(position_ids, 0),
            }
            batch = self._packed_batch = {"input_ids": input_ids, "text": text, "kept": kept,
                                          "hidden_index": hidden_index, "images": {}}
        self._log_once("ue_prefix_sharing: each pair's prompt and image are computed once per pass.")
        if "pixel_values" not in inputs:
            return batch["text"], batch["kept"], batch["hidden_index"]
        pixel_values = inputs["pixel_values"]
        images = batch["images"].get(id(pixel_values))
        if images is None:  # the tensor is held, so its id stays its own
            images = batch["images"][id(pixel_values)] = (
                pixel_values, chosen_row_images(inputs, self._placeholder_ids(base))
            )
        return {**batch["text"], **images[1]}, batch["kept"], batch["hidden_index"]

    @staticmethod
    def _packed_attention_mask(base, attends: torch.Tensor) -> torch.Tensor:
        if base.config.get_text_config()._attn_implementation == "sdpa":
            return attends
        dtype = base.get_input_embeddings().weight.dtype  # eager adds the mask to its scores
        blocked = torch.finfo(dtype).min
        return torch.zeros(attends.shape, dtype=dtype, device=attends.device).masked_fill(~attends, blocked)

    def _token_statistics(self, model, inputs, positions, targets, mask, probe_ids=None) -> TargetLogitSummary:
        """One forward whose output layer returns per-token statistics instead of `[N, K, V]` logits.

        The model's own forward still selects the hidden states at `positions` and calls its output layer, so
        peft, DDP and DeepSpeed work unchanged (ZeRO-3 gathers that layer's weight around the call and again
        before its backward); only the layer's computation is replaced by the chunked projection.
        """
        output_layer = self.accelerator.unwrap_model(model).get_output_embeddings()
        if type(output_layer) is not torch.nn.Linear:
            raise ValueError(
                f"`stage: ue_dpo` projects hidden states onto the vocabulary itself and needs the output layer "
                f"(lm_head) to be a plain torch.nn.Linear, but it is "
                f"{type(output_layer).__module__}.{type(output_layer).__qualname__}. Do not adapt, wrap, resize or "
                "quantize lm_head (leave it out of `lora_target` and `additional_target`, no `resize_vocab`)."
            )
        argmaxes = []
        shared = self._shared_prefix_forward(model, inputs, positions, mask)
        forward_inputs, kept, hidden_index = (inputs, positions, None) if shared is None else shared

        def statistics_instead_of_logits(hidden: torch.Tensor) -> torch.Tensor:
            if hidden_index is not None:  # packed [B, K', H] -> the unshared rows' [2B, K, H]
                hidden = hidden.flatten(0, 1)[hidden_index]
            summary = projected_token_statistics(
                hidden, output_layer.weight, output_layer.bias, targets, mask, probe_ids,
                token_chunk_size=self.finetuning_args.ue_token_chunk_size,
                vocab_chunk_size=self.finetuning_args.ue_vocab_chunk_size,
            )
            argmaxes.append(summary.argmax)
            fields = [summary.target_logit, summary.target_logprob]
            if probe_ids is not None:
                fields.append(summary.probe_logit)
            return torch.stack(fields, dim=-1)  # one tensor, so that module hooks (ZeRO-3, upcasting) see a tensor

        output_layer.forward = statistics_instead_of_logits
        try:
            stacked = model(**forward_inputs, return_dict=True, use_cache=False, logits_to_keep=kept).logits
        finally:
            del output_layer.forward
        return TargetLogitSummary(
            target_logit=stacked[..., 0],
            target_logprob=stacked[..., 1],
            argmax=argmaxes[0],
            probe_logit=None if probe_ids is None else stacked[..., 2],
        )

    def _reference_statistics(self, model, inputs, positions, targets, mask) -> TargetLogitSummary:
        if self.ref_model is None:
            reference, context = model, self.accelerator.unwrap_model(model).disable_adapter()
        else:
            reference, context = self.ref_model, nullcontext()
        with torch.no_grad(), context:
            return self._token_statistics(reference, inputs, positions, targets, mask)

    def _reference_token_logps(self, model, inputs, positions, targets, mask) -> torch.Tensor:
        return self._reference_statistics(model, inputs, positions, targets, mask).target_logprob

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
            inputs = dict(self._prepare_inputs(collated(my_starts[min(slot, len(my_starts) - 1)])))
            digests = inputs.pop(ROW_DIGEST)
            for unused_by_the_reference in (NOISED_PIXEL_VALUES, HAS_IMAGE):
                inputs.pop(unused_by_the_reference, None)
            positions, targets, mask = response_positions(inputs.pop("labels"))
            logps = self._reference_token_logps(model, inputs, positions, targets, mask).cpu()
            for row, digest in enumerate(digests.tolist()):
                rows[digest] = logps[row][mask[row].cpu()]
        if ranks > 1:
            rows = {digest: logps for part in gather_object([rows]) for digest, logps in part.items()}
        if self.accelerator.is_main_process:
            reference_cache.save(path, self.reference_identity, rows)
            logger.info_rank0(f"ue_precompute_ref: reference log-probs of {len(rows)} rows saved to {path}")
        self.accelerator.wait_for_everyone()
        return rows

    def _gather_across_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        lengths = self.accelerator.gather(torch.tensor([values.numel()], device=values.device))
        padded = self.accelerator.pad_across_processes(values, dim=0)
        gathered = self.accelerator.gather(padded).reshape(self.accelerator.num_processes, -1)
        return torch.cat([row[:length] for row, length in zip(gathered, lengths.tolist())])

    def _blind_spot_weights(self, clean: TargetLogitSummary, noised: TargetLogitSummary, weighted_mask):
        """UE-DPO's λ, selection, u, Δ and categories; the branch `ue_branches` leaves out keeps λ = 1, unselected."""
        args = self.finetuning_args
        uncertainty, delta = blind_spot_statistics(clean.target_logit, clean.probe_logit, noised.target_logit)
        pairs = weighted_mask.shape[0] // 2
        weights, selected, categories = [], [], []
        for rows, preferred, branch in ((slice(None, pairs), True, "chosen"), (slice(pairs, None), False, "rejected")):
            branch_weights = blind_spot_weights(
                uncertainty[rows],
                delta[rows],
                weighted_mask[rows],
                alpha=args.ue_alpha,
                tau=args.ue_tau,
                preferred=preferred,
                scope=args.ue_stat_scope,
                gather=self._gather_across_ranks,
            )
            category = blind_spot_categories(uncertainty[rows], branch_weights.selected, preferred=preferred)
            if args.ue_branches not in ("both", branch):  # still computed: `batch` scope gathers on every rank
                branch_weights.weights.fill_(1.0)
                branch_weights.selected.fill_(False)
                category.fill_(UNSELECTED)
            weights.append(branch_weights.weights)
            selected.append(branch_weights.selected)
            categories.append(category)
        return torch.cat(weights), torch.cat(selected), uncertainty, delta, torch.cat(categories)

    @staticmethod
    def _tpo_weights(clean_target_logit, noised_target_logit, weighted_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """TPO's w (1 outside `weighted_mask`) and s (0 outside) for chosen rows, then rejected rows."""
        pairs = weighted_mask.shape[0] // 2
        weights, scores = [], []
        for rows, preferred in ((slice(None, pairs), True), (slice(pairs, None), False)):
            branch_weights, score = tpo_token_weights(
                clean_target_logit[rows], noised_target_logit[rows], preferred=preferred
            )
            weights.append(torch.where(weighted_mask[rows], branch_weights, 1.0))
            scores.append(torch.where(weighted_mask[rows], score, 0.0))
        return torch.cat(weights), torch.cat(scores)

    def token_weighting(self, model, batch: dict[str, torch.Tensor]) -> BatchTokens:
        """Per-token log πθ, weights and (for `ue`) u, Δ and categories of one collated batch.

        The loss (`get_batch_loss_metrics`) and `ue-dpo inspect` both read this; `ue_weighting` picks the passes:
        ue runs the policy on v' without gradient, then on v; tpo runs both with gradient (TPO's weights are
        differentiable); ddpo, uniform and ue with α = 0 run only the clean pass.
        """
        args = self.finetuning_args
        inputs = dict(batch)
        noised_pixel_values = inputs.pop(NOISED_PIXEL_VALUES, None)
        has_image = inputs.pop(HAS_IMAGE)
        row_digests = inputs.pop(ROW_DIGEST, None)
        positions, targets, mask = response_positions(inputs.pop("labels"))
        weighted_mask = mask & has_image.unsqueeze(-1)
        noised_inputs = None if noised_pixel_values is None else {**inputs, "pixel_values": noised_pixel_values}
        found = {
            "model_inputs": inputs, "noised_inputs": noised_inputs, "positions": positions, "targets": targets,
            "mask": mask, "has_image": has_image, "row_digests": row_digests, "weighted_mask": weighted_mask,
        }
        if args.ue_weighting == "ue" and args.ue_alpha > 0:
            with torch.no_grad():  # the current policy on v', adapters on
                noised = self._token_statistics(model, noised_inputs, positions, targets, mask)
            clean = self._token_statistics(model, inputs, positions, targets, mask, probe_ids=noised.argmax)
            weights, selected, uncertainty, delta, category = self._blind_spot_weights(clean, noised, weighted_mask)
            return BatchTokens(policy_logps=clean.target_logprob, weights=weights, uncertainty=uncertainty,
                               delta=delta, selected=selected, category=category, **found)
        if args.ue_weighting == "tpo":
            clean = self._token_statistics(model, inputs, positions, targets, mask)
            noised = self._token_statistics(model, noised_inputs, positions, targets, mask)
            weights, score = self._tpo_weights(clean.target_logit, noised.target_logit, weighted_mask)
            return BatchTokens(policy_logps=clean.target_logprob, weights=weights, delta=score, **found)
        clean = self._token_statistics(model, inputs, positions, targets, mask)
        if args.ue_weighting == "ddpo":
            weights, differing = ddpo_token_weights(
                inputs["input_ids"], inputs["attention_mask"], positions, mask, gamma=args.ddpo_gamma
            )
            return BatchTokens(policy_logps=clean.target_logprob, weights=weights, selected=differing, **found)
        # uniform, or ue with α = 0: λ ≡ 1, and v' would change nothing
        return BatchTokens(policy_logps=clean.target_logprob, weights=torch.ones_like(clean.target_logprob), **found)

    def _sequence_logps(self, model, tokens: BatchTokens, train_eval: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row weighted (policy, reference) sums, each weighting's way."""
        args = self.finetuning_args
        where = (tokens.positions, tokens.targets, tokens.mask)
        if args.ue_weighting == "tpo":  # the reference is weighted by its own clean/noised logits
            reference_clean = self._reference_statistics(model, tokens.model_inputs, *where)
            reference_noised = self._reference_statistics(model, tokens.noised_inputs, *where)
            reference_weights, _ = self._tpo_weights(
                reference_clean.target_logit, reference_noised.target_logit, tokens.weighted_mask
            )
            return (
                log_weighted_sequence_logps(tokens.policy_logps, tokens.weights, tokens.mask),
                log_weighted_sequence_logps(reference_clean.target_logprob, reference_weights, tokens.mask),
            )
        if args.ue_precompute_ref and train_eval == "train":
            reference_token_logps = reference_cache.place(
                self._precomputed_reference_rows(model), tokens.row_digests, tokens.mask
            )
        else:
            reference_token_logps = self._reference_token_logps(model, tokens.model_inputs, *where)
        target = "logratio" if args.ue_weighting == "ddpo" else args.ue_weight_target
        return weighted_sequence_logps(tokens.policy_logps, reference_token_logps, tokens.weights, tokens.mask, target)

    @staticmethod
    def _weighting_metric_terms(tokens: BatchTokens, weighting: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """`{key: (values, tokens to average them over)}` of the weighting's logged means."""
        chosen, rejected = slice(None, tokens.pairs), slice(tokens.pairs, None)
        mask, weighted_mask = tokens.mask, tokens.weighted_mask
        if tokens.category is not None:
            return {
                "ue/selected_share_chosen": (tokens.selected[chosen], weighted_mask[chosen]),
                "ue/selected_share_rejected": (tokens.selected[rejected], weighted_mask[rejected]),
                "ue/lambda_chosen_mean": (tokens.weights[chosen], weighted_mask[chosen]),
                "ue/lambda_rejected_mean": (tokens.weights[rejected], weighted_mask[rejected]),
                "ue/u_mean": (tokens.uncertainty, weighted_mask),
                "ue/delta_mean": (tokens.delta, weighted_mask),
            }
        if weighting == "tpo":
            return {
                "tpo/weight_chosen_mean": (tokens.weights[chosen], weighted_mask[chosen]),
                "tpo/weight_rejected_mean": (tokens.weights[rejected], weighted_mask[rejected]),
                "tpo/score_mean": (tokens.delta, weighted_mask),
            }
        if weighting == "ddpo":
            return {
                "ddpo/differing_share_chosen": (tokens.selected[chosen], mask[chosen]),
                "ddpo/differing_share_rejected": (tokens.selected[rejected], mask[rejected]),
            }
        return {}

    def _means_across_ranks(self, terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Each term's mean over its tokens on all ranks; a term with no token on any rank is left out on every
        rank, as no mean exists (LLaMA-Factory all-reduces logged metrics by position, so ranks log the same keys)."""
        if not terms:
            return {}
        sums = torch.stack([torch.where(where, values.detach().float(), 0.0).sum() for values, where in terms.values()])
        counts = torch.stack([where.sum().float() for _, where in terms.values()])
        total_sums, total_counts = self.accelerator.reduce(torch.stack([sums, counts]), "sum").tolist()
        return {key: total / count for key, total, count in zip(terms, total_sums, total_counts) if count > 0}

    @staticmethod
    def _unfrozen_vision_modules(base) -> list[str]:
        """The vision tower and projector modules that train or carry an adapter (disabled for the reference)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        def unfrozen(module: torch.nn.Module) -> bool:
            return (any(parameter.requires_grad for parameter in module.parameters())
                    or any(isinstance(inner, BaseTunerLayer) for inner in module.modules()))

        return [name for name in VISION_MODULES[base.config.model_type] if unfrozen(getattr(base.model, name))]

    @contextmanager
    def _clean_image_encoded_once(self, model):
        """Within one step, the policy and reference passes reuse the image features of each pixel tensor."""
        base = self._base_model(model)
        reason = None
        if self.ref_model is not None:
            reason = "the reference is a separate model, with its own vision tower"
        elif base.config.model_type not in VISION_MODULES:
            reason = f"model type `{base.config.model_type}` is not one of {', '.join(VISION_MODULES)}"
        elif unfrozen := self._unfrozen_vision_modules(base):
            reason = (f"these vision modules train or carry an adapter: {', '.join(unfrozen)} (see "
                      "freeze_vision_tower, freeze_multi_modal_projector)")
        if reason is not None:
            self._log_once(f"image features are computed in every pass: {reason}.")
            yield
            return
        self._log_once("image features: each image is encoded once per step for the policy and reference passes "
                       "(vision tower and projector frozen); v' in its own pass.")
        multimodal = base.model
        own_encoder, encoded = multimodal.get_image_features, {}

        def encoded_once(*args, **kwargs):
            pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
            if id(pixel_values) not in encoded:  # the tensor is held, so its id stays its own
                encoded[id(pixel_values)] = (pixel_values, own_encoder(*args, **kwargs))
            return encoded[id(pixel_values)][1]

        multimodal.get_image_features = encoded_once
        try:
            yield
        finally:
            del multimodal.get_image_features

    def get_batch_loss_metrics(self, model, batch, train_eval: Literal["train", "eval"] = "train"):
        with self._clean_image_encoded_once(model):
            tokens = self.token_weighting(model, batch)
            policy, reference = self._sequence_logps(model, tokens, train_eval)
        pairs, mask = tokens.pairs, tokens.mask
        metrics = {"ue/imageless_pairs": float((~tokens.has_image[:pairs]).sum())}
        metrics.update(self._means_across_ranks(self._weighting_metric_terms(tokens, self.finetuning_args.ue_weighting)))
        result = dpo_sigmoid_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
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

"""The forwards of one training step: what a preference method asks for, computed the way the model family allows.

A `StepForward` lives for one collated batch. It owns the three pieces of machinery the methods never see:
- the output layer's swap: each forward's output layer returns per-token statistics (`core.chunked`) instead of
  `[N, K, V]` logits, through the model's own forward, so peft, DDP and DeepSpeed work unchanged;
- the shared-prefix packing (`core.shared_prefix`): one packed row per pair, built once per step and reused by every
  pass, or the unshared rows where the family, the attention or the batch rules it out (logged once, with why);
- the image-feature cache: inside `with step:`, the policy and reference passes reuse the clean image's features when
  the vision modules are frozen and the reference is the policy with its adapters off.

Every pass reads all rows, on one of the images: `clean`, `noised` (v') or a second image of the method's
(`PreferenceMethod.second_images`); a second image's rejected rows hold the chosen rows' image, so they pack alike.
"""

from collections.abc import Callable
from contextlib import nullcontext

import torch
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.model.model_utils.visual import COMPOSITE_MODELS
from peft.tuners.tuners_utils import BaseTunerLayer

from ue_dpo.core.chunked import chunked_reference_kl, projected_token_statistics
from ue_dpo.core.shared_prefix import PrefixNotShared, packed_hidden_gather, shared_prefix_layout
from ue_dpo.core.token_stats import TargetLogitSummary
from ue_dpo.llamafactory import reference_cache
from ue_dpo.llamafactory.collator import (
    HAS_IMAGE,
    NOISED_PIXEL_VALUES,
    ROW_DIGEST,
    SECOND_PIXEL_VALUES,
    chosen_row_images,
)
from ue_dpo.methods.base import ResponseTokens
from ue_dpo.model_families import FAMILY_BY_MODEL_TYPE, ModelFamily, family_of, image_encoder_owner

MASKED_ATTENTION = ("sdpa", "eager")  # attention implementations that apply a 4-D attention mask as given
TEXT_KEYS = ("input_ids", "attention_mask")
Image = str  # "clean", "noised" (v') or the name of one of the method's second images


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions whose logits predict a response token, their target ids and the `[N, K]` mask.

    Logits at position p predict token p + 1; only positions where some row has a label are kept.
    """
    next_labels = labels[:, 1:]
    positions = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    targets = next_labels[:, positions]
    mask = targets != IGNORE_INDEX
    return positions, targets.masked_fill(~mask, 0), mask


def response_tokens(batch: dict[str, torch.Tensor]) -> ResponseTokens:
    """A collated batch's response tokens, and the forward's inputs without the collator's own keys."""
    inputs = dict(batch)
    noised_pixel_values = inputs.pop(NOISED_PIXEL_VALUES, None)
    has_image = inputs.pop(HAS_IMAGE)
    row_digests = inputs.pop(ROW_DIGEST, None)
    second_pixel_values = {
        key.removeprefix(SECOND_PIXEL_VALUES): inputs.pop(key)
        for key in list(inputs)
        if key.startswith(SECOND_PIXEL_VALUES)
    }
    positions, targets, mask = response_positions(inputs.pop("labels"))
    noised_inputs = None if noised_pixel_values is None else {**inputs, "pixel_values": noised_pixel_values}
    return ResponseTokens(
        inputs=inputs,
        noised_inputs=noised_inputs,
        positions=positions,
        targets=targets,
        mask=mask,
        has_image=has_image,
        row_digests=row_digests,
        second_inputs={name: {**inputs, "pixel_values": values} for name, values in second_pixel_values.items()},
    )


def unwrapped_base(accelerator, model) -> torch.nn.Module:
    unwrapped = accelerator.unwrap_model(model)
    return unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped


class StepNotes:
    """Info lines that say once per run how the steps compute (sharing, image features)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.logged: set[str] = set()

    def once(self, message: str) -> None:
        if message not in self.logged:
            self.logged.add(message)
            self.log(message)


class StepForward:
    """The passes of one batch; `with step:` for the passes of one training step (the image-feature cache)."""

    def __init__(
        self,
        batch: dict[str, torch.Tensor],
        *,
        model,
        ref_model,
        accelerator,
        finetuning_args,
        pad_token_id: int,
        notes: StepNotes,
        precomputed_reference: dict[int, torch.Tensor] | None = None,
    ):
        self.response = response_tokens(batch)
        self.model, self.ref_model, self.accelerator = model, ref_model, accelerator
        self.args, self.pad_token_id, self.notes = finetuning_args, pad_token_id, notes
        self.precomputed_reference = precomputed_reference
        self.base = unwrapped_base(accelerator, model)
        self.family: ModelFamily | None = family_of(self.base.config.model_type)
        self._packing: dict | None = None  # the packed inputs and where to read them, once tried
        self._restore_encoder: Callable[[], None] | None = None
        # per image: the reference's hidden states at the response tokens and its output layer (`keep_distribution`)
        self._reference_distributions: dict[str, tuple] = {}

    # What the methods ask for

    def statistics(
        self, image: Image, probe_ids: torch.Tensor | None = None, *, kl_from_reference: Image | None = None
    ) -> TargetLogitSummary:
        """The policy's response-token statistics on an image (gradient as the caller's context); with
        `kl_from_reference`, also the per-token KL(π_ref ‖ πθ) against the reference's distribution on that image,
        which `reference_statistics(..., keep_distribution=True)` kept."""
        reference = None
        if kl_from_reference is not None:
            if kl_from_reference not in self._reference_distributions:
                raise ValueError(
                    f"no reference distribution on `{kl_from_reference}` was kept; call reference_statistics("
                    f"{kl_from_reference!r}, keep_distribution=True) first"
                )
            reference = self._reference_distributions[kl_from_reference]
        return self._token_statistics(self.model, image, probe_ids, kl_reference=reference)

    def reference_statistics(self, image: Image, *, keep_distribution: bool = False) -> TargetLogitSummary:
        """The reference's, without gradient: the policy with its adapters off, or the separate reference model.
        `keep_distribution` keeps its hidden states at the response tokens and a copy of its output layer (not
        `[N, K, V]` logits), for the policy's KL against it."""
        if self.ref_model is None:
            reference, context = self.model, self.accelerator.unwrap_model(self.model).disable_adapter()
        else:
            reference, context = self.ref_model, nullcontext()
        with torch.no_grad(), context:
            kept = [] if keep_distribution else None
            summary = self._token_statistics(reference, image, kept_distribution=kept)
        if keep_distribution:
            self._reference_distributions[image] = kept[0]
        return summary

    def reference_token_logps(self) -> torch.Tensor:
        """log π_ref(a_t | v): from `ue_precompute_ref`'s rows where given, else a reference pass."""
        if self.precomputed_reference is not None:
            return reference_cache.place(self.precomputed_reference, self.response.row_digests, self.response.mask)
        return self.reference_statistics("clean").target_logprob

    def gather_across_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """A 1-D tensor of every rank, concatenated in rank order."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return values
        lengths = accelerator.gather(torch.tensor([values.numel()], device=values.device))
        padded = accelerator.pad_across_processes(values, dim=0)
        gathered = accelerator.gather(padded).reshape(accelerator.num_processes, -1)
        return torch.cat([row[:length] for row, length in zip(gathered, lengths.tolist())])

    # The output layer's swap

    def _token_statistics(
        self,
        model,
        image: Image,
        probe_ids: torch.Tensor | None = None,
        *,
        kl_reference: tuple | None = None,
        kept_distribution: list | None = None,
    ) -> TargetLogitSummary:
        """One forward whose output layer returns per-token statistics instead of `[N, K, V]` logits.

        The model's own forward still selects the hidden states at the kept positions and calls its output layer
        (ZeRO-3 gathers that layer's weight around the call and again before its backward); only the layer's
        computation is replaced by the chunked projection.
        """
        output_layer = self.accelerator.unwrap_model(model).get_output_embeddings()
        if type(output_layer) is not torch.nn.Linear:
            raise ValueError(
                f"`stage: ue_dpo` projects hidden states onto the vocabulary itself and needs the output layer "
                f"(lm_head) to be a plain torch.nn.Linear, but it is "
                f"{type(output_layer).__module__}.{type(output_layer).__qualname__}. Do not adapt, wrap, resize or "
                "quantize lm_head (leave it out of `lora_target` and `additional_target`, no `resize_vocab`)."
            )
        response = self.response
        forward_inputs, kept, hidden_index = self._forward_inputs(image)
        argmaxes = []

        def statistics_instead_of_logits(hidden: torch.Tensor) -> torch.Tensor:
            if hidden_index is not None:  # packed [B, K', H] -> the unshared rows' [2B, K, H]
                hidden = hidden.flatten(0, 1)[hidden_index]
            summary = projected_token_statistics(
                hidden,
                output_layer.weight,
                output_layer.bias,
                response.targets,
                response.mask,
                probe_ids,
                token_chunk_size=self.args.ue_token_chunk_size,
                vocab_chunk_size=self.args.ue_vocab_chunk_size,
            )
            argmaxes.append(summary.argmax)
            fields = [summary.target_logit, summary.target_logprob]
            if probe_ids is not None:
                fields.append(summary.probe_logit)
            if kept_distribution is not None or kl_reference is not None:
                selected = response.mask.flatten().nonzero().squeeze(-1)
                selected_hidden = hidden.flatten(0, -2).index_select(0, selected)
            if kept_distribution is not None:  # a copy: ZeRO-3 frees the gathered weight after the call
                bias = None if output_layer.bias is None else output_layer.bias.detach().clone()
                kept_distribution.append((selected_hidden.detach(), output_layer.weight.detach().clone(), bias))
            if kl_reference is not None:
                divergence = chunked_reference_kl(
                    selected_hidden,
                    output_layer.weight,
                    output_layer.bias,
                    *kl_reference,
                    token_chunk_size=self.args.ue_token_chunk_size,
                    vocab_chunk_size=self.args.ue_vocab_chunk_size,
                )
                placed = divergence.new_zeros(response.mask.numel()).index_copy(0, selected, divergence)
                fields.append(placed.view(response.mask.shape))
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
            reference_kl=None if kl_reference is None else stacked[..., -1],
        )

    # The shared-prefix packing

    def _forward_inputs(self, image: Image) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        """(forward inputs, logit positions to keep, index of each `[2B, K]` statistic's hidden state among the kept
        ones, or None for the unshared rows)."""
        response = self.response
        packing = self._packed_inputs()
        if packing is None:
            return self._image_inputs(image), response.positions, None
        return packing[image], packing["kept"], packing["hidden_index"]

    def _image_inputs(self, image: Image) -> dict:
        response = self.response
        inputs = {"clean": response.inputs, "noised": response.noised_inputs, **response.second_inputs}.get(image)
        if inputs is None:
            raise ValueError(
                f"the batch holds no `{image}` image: the collator builds v' for methods whose reads_noised_image is "
                "true and second images for those named in second_images"
            )
        return inputs

    def _packed_inputs(self) -> dict | None:
        """The packed forward inputs per image and where to read the statistics, or None (the reason logged once)
        when the pairs cannot share their prompts. Tried once per step: every pass reads the same rows."""
        if self._packing is None:
            self._packing = {}
            if self.args.ue_prefix_sharing:
                reason = self._sharing_off_reason()
                if reason is None:
                    try:
                        self._packing = self._packed()
                    except PrefixNotShared as error:
                        reason = str(error)
                if reason is None:
                    self.notes.once("ue_prefix_sharing: each pair's prompt and image are computed once per pass.")
                else:
                    self.notes.once(f"ue_prefix_sharing: computing unshared rows, since {reason}.")
        return self._packing or None

    def _sharing_off_reason(self) -> str | None:
        config, inputs = self.base.config, self.response.inputs
        attention = config.get_text_config()._attn_implementation
        if self.family is None:
            return f"model type `{config.model_type}` is not one of {', '.join(FAMILY_BY_MODEL_TYPE)}"
        if self.family.unshared_reason is not None:
            return self.family.unshared_reason
        if attention not in MASKED_ATTENTION:
            return (
                f"`attn_implementation: {attention}` does not apply a 4-D attention mask; use sdpa or eager to "
                "share prompts"
            )
        if unknown := sorted(set(inputs) - {*TEXT_KEYS, *self.family.position_keys, *self.family.image_keys}):
            return f"the batch holds {', '.join(unknown)}, which packing does not lay out"
        if inputs["attention_mask"].dim() != 2:
            return "the batch already has a 4-D attention mask"
        window = getattr(config.get_text_config(), "sliding_window", None)
        if window is not None and window < inputs["input_ids"].shape[1]:
            return (
                f"the language model attends within a sliding window of {window} tokens, shorter than the batch's "
                f"{inputs['input_ids'].shape[1]}-token rows, which a packed row does not keep"
            )
        return None

    def _packed(self) -> dict:
        response, inputs = self.response, self.response.inputs
        input_ids = inputs["input_ids"]
        labelled = torch.zeros_like(input_ids, dtype=torch.bool)
        labelled[:, response.positions + 1] = response.mask
        layout = shared_prefix_layout(input_ids, inputs["attention_mask"], labelled, self._placeholder_ids())
        kept, hidden_index = packed_hidden_gather(layout, response.positions, response.mask)
        position_ids = inputs.get("position_ids")
        if position_ids is None:  # the model's own default: the column
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        text = {
            "input_ids": layout.pack(input_ids, self.pad_token_id),
            "attention_mask": self._packed_attention_mask(layout.attends()),
            "position_ids": layout.pack(position_ids, 0),
        }
        packed = {"kept": kept, "hidden_index": hidden_index}
        images = {"clean": inputs, "noised": response.noised_inputs, **response.second_inputs}
        for image, image_inputs in images.items():
            if image_inputs is None:
                continue
            images = (
                {}
                if "pixel_values" not in image_inputs
                else chosen_row_images(image_inputs, self._placeholder_ids(), self.family)
            )
            packed[image] = {**text, **images}
        return packed

    def _packed_attention_mask(self, attends: torch.Tensor) -> torch.Tensor:
        if self.base.config.get_text_config()._attn_implementation == "sdpa":
            return attends
        dtype = self.base.get_input_embeddings().weight.dtype  # eager adds the mask to its scores
        blocked = torch.finfo(dtype).min
        return torch.zeros(attends.shape, dtype=dtype, device=attends.device).masked_fill(~attends, blocked)

    def _placeholder_ids(self) -> tuple[int, ...]:
        config = self.base.config
        ids = (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
        return tuple(token_id for token_id in ids if token_id is not None)

    # The image-feature cache

    def __enter__(self) -> "StepForward":
        reason = self._encode_every_pass_reason()
        if reason is not None:
            self.notes.once(f"image features are computed in every pass: {reason}.")
            return self
        self.notes.once(
            "image features: each image is encoded once per step for the policy and reference passes "
            "(vision tower and projector frozen); v' in its own pass."
        )
        owner = image_encoder_owner(self.base)
        own_encoder, encoded = owner.get_image_features, {}

        def encoded_once(*args, **kwargs):
            pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
            if id(pixel_values) not in encoded:  # the tensor is held, so its id stays its own
                encoded[id(pixel_values)] = (pixel_values, own_encoder(*args, **kwargs))
            return encoded[id(pixel_values)][1]

        owner.get_image_features = encoded_once

        def restore() -> None:
            del owner.get_image_features

        self._restore_encoder = restore
        return self

    def __exit__(self, *exc_info) -> None:
        if self._restore_encoder is not None:
            self._restore_encoder()
            self._restore_encoder = None

    def _encode_every_pass_reason(self) -> str | None:
        if self.ref_model is not None:
            return "the reference is a separate model, with its own vision tower"
        if self.family is None:
            return f"model type `{self.base.config.model_type}` is not one of {', '.join(FAMILY_BY_MODEL_TYPE)}"
        if unfrozen := self._unfrozen_vision_modules():
            return (
                f"these vision modules train or carry an adapter: {', '.join(unfrozen)} (see freeze_vision_tower, "
                "freeze_multi_modal_projector)"
            )
        return None

    def _unfrozen_vision_modules(self) -> list[str]:
        """The vision modules that train or carry an adapter (disabled for the reference)."""

        def unfrozen(module: torch.nn.Module | torch.nn.Parameter) -> bool:
            if isinstance(module, torch.nn.Parameter):  # e.g. LLaVA-NeXT's image_newline
                return module.requires_grad
            return any(parameter.requires_grad for parameter in module.parameters()) or any(
                isinstance(inner, BaseTunerLayer) for inner in module.modules()
            )

        owner = image_encoder_owner(self.base)
        names = [*vision_modules(self.base.config.model_type), *self.family.vision_parameters]
        return [name for name in names if unfrozen(getattr(owner, name))]


def vision_modules(model_type: str) -> list[str]:
    """The image encoder owner's vision tower and projector: the modules that LLaMA-Factory's freeze logic keys
    (`COMPOSITE_MODELS`) name, whole. The keys alone miss parts of some towers (GLM-4.1V's position embedding,
    post-convolution norm and downsampling)."""
    composite = COMPOSITE_MODELS[model_type]
    keys = (*composite.vision_model_keys, *composite.projector_keys)
    return sorted({key.removeprefix("model.").split(".")[0] for key in keys})

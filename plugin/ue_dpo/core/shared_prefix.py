"""One packed row per preference pair, `[prompt | chosen response | rejected response]`, for a forward that computes
the shared prompt (image tokens included) once.

The collated batch holds 2B unshared rows, B chosen then B rejected, each `[prompt | response]`. A pair's packed row
holds the chosen row's prompt and response, then the rejected row's response, then padding. Its attention mask lets
the rejected response see the prompt and itself (causally) but not the chosen response; every padding token sees
only itself, so that no query row is fully masked. Each packed token keeps the position id it has in its unshared
row, so the rejected response continues from the prompt.

An unshared row's token maps to one packed token: the chosen row's tokens to themselves, the rejected row's prompt
tokens to the chosen row's (its last prompt token, which predicts the first rejected token, is read twice), its
response tokens to the rejected response.
"""

from dataclasses import dataclass

import torch

PROMPT, CHOSEN, REJECTED, ALONE = 0, 1, 2, 3  # segments of a packed row; ALONE tokens attend only to themselves


class PrefixNotShared(ValueError):
    """The batch's pairs cannot be packed: the message says why."""


@dataclass(frozen=True)
class SharedPrefixLayout:
    source_index: torch.Tensor  # [B, Lp] flat index (row * L + column) of the unshared token each packed token copies
    filler: torch.Tensor  # [B, Lp] packed tokens that copy nothing (padding after the pair's tokens)
    segment: torch.Tensor  # [B, Lp] PROMPT, CHOSEN, REJECTED or ALONE
    packed_index: torch.Tensor  # [2B, L] flat index (pair * Lp + column) of each unshared token's packed token, or -1

    @property
    def packed_length(self) -> int:
        return self.segment.shape[1]

    def attends(self) -> torch.Tensor:
        """`[B, 1, Lp, Lp]` bool, True where the query (dim 2) may attend to the key (dim 3)."""
        query, key = self.segment.unsqueeze(2), self.segment.unsqueeze(1)
        length = self.packed_length
        causal = torch.ones(length, length, dtype=torch.bool, device=self.segment.device).tril()
        allowed = causal & (query != ALONE) & ((key == PROMPT) | (key == query))
        return (allowed | torch.eye(length, dtype=torch.bool, device=self.segment.device)).unsqueeze(1)

    def pack(self, values: torch.Tensor, filler_value: int) -> torch.Tensor:
        """`[..., 2B, L]` per-token values (input ids, position ids) as `[..., B, Lp]`, `filler_value` at fillers."""
        packed = values.flatten(-2)[..., self.source_index.flatten()].view(*values.shape[:-2], *self.source_index.shape)
        return packed.masked_fill(self.filler, filler_value)


def shared_prefix_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labelled: torch.Tensor,
    placeholder_ids: tuple[int, ...] = (),
) -> SharedPrefixLayout:
    """The packed layout of 2B unshared rows (`[2B, L]` each; `labelled` marks tokens that carry a label).

    A pair's prompt is the chosen row's attended tokens before its first labelled one; the rejected row's must be the
    same tokens. Padding of a chosen row that holds a `placeholder_ids` token (LLaMA-Factory puts the blank stand-in
    image of a text-only batch there) stays in the packed row as ALONE tokens, so the model finds every placeholder of
    the images it is given; the packed rows hold the chosen rows' placeholders only.
    """
    rows, length = input_ids.shape
    if rows % 2 or attention_mask.shape != input_ids.shape or labelled.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"labelled {tuple(labelled.shape)} must be the same [2B, L] shape"
        )
    pairs = rows // 2
    ids, attended, labels = input_ids.cpu(), attention_mask.cpu().bool(), labelled.cpu().bool()
    is_placeholder = torch.isin(ids, torch.tensor(placeholder_ids, dtype=ids.dtype))
    packed_rows = []
    for pair in range(pairs):
        chosen, rejected = pair, pair + pairs
        parts = {}
        for row, side in ((chosen, "chosen"), (rejected, "rejected")):
            columns = attended[row].nonzero().squeeze(-1)
            first_label = labels[row, columns].nonzero()
            if first_label.numel() == 0:
                raise PrefixNotShared(f"a {side} row has no labelled token")
            prompt_length = int(first_label[0])
            parts[side] = (columns[:prompt_length], columns[prompt_length:])
        (chosen_prompt, chosen_response), (rejected_prompt, rejected_response) = parts["chosen"], parts["rejected"]
        if not torch.equal(ids[chosen, chosen_prompt], ids[rejected, rejected_prompt]):
            raise PrefixNotShared("the chosen and rejected prompts of a pair differ")
        if is_placeholder[rejected, rejected_response].any() or is_placeholder[rejected, ~attended[rejected]].any():
            raise PrefixNotShared("a rejected row has an image placeholder outside its prompt")
        kept_padding = (~attended[chosen] & is_placeholder[chosen]).nonzero().squeeze(-1)
        packed_rows.append(
            (
                torch.cat(
                    [
                        chosen * length + chosen_prompt,
                        chosen * length + chosen_response,
                        rejected * length + rejected_response,
                        chosen * length + kept_padding,
                    ]
                ),
                torch.tensor(
                    [PROMPT] * len(chosen_prompt)
                    + [CHOSEN] * len(chosen_response)
                    + [REJECTED] * len(rejected_response)
                    + [ALONE] * len(kept_padding)
                ),
                rejected * length + rejected_prompt,
                chosen * length + chosen_prompt,
            )
        )
    packed_length = max(len(sources) for sources, *_ in packed_rows)
    source_index = torch.zeros(pairs, packed_length, dtype=torch.long)
    segment = torch.full((pairs, packed_length), ALONE, dtype=torch.long)
    filler = torch.ones(pairs, packed_length, dtype=torch.bool)
    packed_index = torch.full((rows * length,), -1, dtype=torch.long)
    for pair, (sources, segments, rejected_prompt, chosen_prompt) in enumerate(packed_rows):
        used = len(sources)
        source_index[pair, :used], segment[pair, :used], filler[pair, :used] = sources, segments, False
        packed_index[sources] = pair * packed_length + torch.arange(used)
        packed_index[rejected_prompt] = packed_index[chosen_prompt]
    device = input_ids.device
    return SharedPrefixLayout(
        source_index=source_index.to(device),
        filler=filler.to(device),
        segment=segment.to(device),
        packed_index=packed_index.view(rows, length).to(device),
    )


def packed_hidden_gather(
    layout: SharedPrefixLayout, positions: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the packed forward's hidden states at the unshared logit `positions` `[K]` (rows' `mask` `[2B, K]`) are.

    Returns the packed columns to keep `[K']` (the forward's `logits_to_keep`) and, for each `[2B, K]` entry, the
    flat index into the kept `[B, K', H]` hidden states (0 where `mask` is false).
    """
    packed = layout.packed_index[:, positions]
    if (packed[mask] < 0).any():
        raise ValueError("a masked-in logit position is not a packed token: the layout does not match the batch")
    packed = packed.masked_fill(~mask, 0)
    pair, column = packed // layout.packed_length, packed % layout.packed_length
    kept = column[mask].unique()
    slot = torch.searchsorted(kept, column).clamp(max=kept.numel() - 1)
    return kept, (pair * kept.numel() + slot).masked_fill(~mask, 0)

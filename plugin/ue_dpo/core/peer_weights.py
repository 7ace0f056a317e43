"""The peers' token weightings, for comparison with UE-DPO under one loss, one data pipeline and one harness.

TPO (alibaba/TPO, "self-calibrated visual-anchored rewards"). With s_t = logit(a_t | v) - logit(a_t | v') from
the raw logits of the model being scored (the policy for the policy's sum, the reference for the reference's):
    chosen:   w_t = σ(s_t) + 0.5        rejected: w_t = 1 - σ(s_t) + 0.5
Both lie in (0.5, 1.5). TPO adds log w_t to each token's log-probability, so a response scores
Σ_t [log π(a_t) + log w_t]; w_t is not detached, the gradient flows through s_t into both forwards.

DDPO (RLHF-V's dense DPO, `dpo_token_weighted` in RLHF-V/RLAIF-V). Response tokens that differ between the
chosen and the rejected answer get weight γ, the others 1; both the policy's and the reference's log-probs
are weighted, and the weighted log-probs are summed (`dpo_use_average: False`, RLAIF-V's setting).
"Differ" is RLHF-V's `get_diff_ids` (RLAIF-V `utils/diff_lib.py`), applied as its trainer applies it: to each
row's whole token sequence, prompt and image tokens included, shifted by one (the targets of the logits), rejected
as difflib's first sequence and chosen as its second, with difflib's defaults (so `autojunk` is on: in a second
sequence of 200 tokens or more, a token that occurs more than 1 + n // 100 times cannot start a match, only
extend one; that is how image tokens and, in long rows, common words are treated). Matching blocks of at least
3 tokens anchor the alignment; between consecutive anchors (and before the first and after the last) lies one
unmatched stretch on each side, and only stretches that are non-empty on BOTH sides (replacements) are marked;
a pure insertion or deletion is not. Only response tokens carry the weight. RLHF-V's rows also carry their
batch's padding (chosen and rejected rows padded separately), which moves the popularity threshold with the
batch; we diff each row without padding.
"""

import difflib

import torch

DDPO_MIN_MATCH = 3  # RLHF-V's `min_match_size`


def tpo_token_weights(clean_target_logit: torch.Tensor, noised_target_logit: torch.Tensor, *, preferred: bool):
    """(w, s): TPO's weight and visual-anchored score per token, differentiable in both logits."""
    score = clean_target_logit.float() - noised_target_logit.float()
    anchored = torch.sigmoid(score)
    weights = anchored + 0.5 if preferred else 1.5 - anchored
    return weights, score


def differing_token_spans(chosen: list[int], rejected: list[int], min_match: int = DDPO_MIN_MATCH):
    """(chosen indices, rejected indices) of the tokens replaced between two sequences: RLHF-V's
    `get_diff_ids(rejected, chosen)` (see module doc)."""
    matcher = difflib.SequenceMatcher(None, rejected, chosen)
    anchors = [block for block in matcher.get_matching_blocks() if block.size >= min_match]
    chosen_ids, rejected_ids = [], []
    rejected_start = chosen_start = 0
    for block in anchors + [difflib.Match(len(rejected), len(chosen), 0)]:
        if block.a > rejected_start and block.b > chosen_start:
            rejected_ids.extend(range(rejected_start, block.a))
            chosen_ids.extend(range(chosen_start, block.b))
        rejected_start, chosen_start = block.a + block.size, block.b + block.size
    return chosen_ids, rejected_ids


def ddpo_token_weights(input_ids, attention_mask, positions, mask, *, gamma: float):
    """(weights, differing) for `[2B, K]` response tokens (B chosen rows, then B rejected): γ on the tokens of
    each pair that differ, 1 elsewhere. The `[2B, L]` rows are diffed whole; `positions` `[K]` are the logit
    positions of the K columns (position p predicts token p + 1)."""
    pairs = input_ids.shape[0] // 2
    column_of_position = torch.full((input_ids.shape[1],), -1, dtype=torch.long)
    column_of_position[positions.cpu()] = torch.arange(positions.numel())
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu().bool()
    differing = torch.zeros(mask.shape, dtype=torch.bool)
    for pair in range(pairs):
        rows = (pair, pairs + pair)
        token_positions = [attention_mask[row].nonzero().squeeze(-1)[1:] for row in rows]
        sequences = [input_ids[row, kept].tolist() for row, kept in zip(rows, token_positions)]
        for row, kept, ids in zip(rows, token_positions, differing_token_spans(*sequences)):
            columns = column_of_position[kept[ids] - 1]
            differing[row, columns[columns >= 0]] = True
    differing = differing.to(mask.device) & mask
    weights = torch.where(differing, gamma, 1.0).to(torch.float32)
    return weights, differing

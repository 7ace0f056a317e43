"""The peers' token weightings, for comparison with UE-DPO under one loss, one data pipeline and one harness.

TPO (alibaba/TPO, "self-calibrated visual-anchored rewards"). With s_t = logit(a_t | v) - logit(a_t | v') from
the raw logits of the model being scored (the policy for the policy's sum, the reference for the reference's):
    chosen:   w_t = σ(s_t) + 0.5        rejected: w_t = 1 - σ(s_t) + 0.5
Both lie in (0.5, 1.5). TPO adds log w_t to each token's log-probability, so a response scores
Σ_t [log π(a_t) + log w_t]; w_t is not detached, the gradient flows through s_t into both forwards.

DDPO (RLHF-V's dense DPO, `dpo_token_weighted` in RLHF-V/RLAIF-V). Response tokens that differ between the
chosen and the rejected answer get weight γ, the others 1; both the policy's and the reference's log-probs
are weighted, and the weighted log-probs are summed (`dpo_use_average: False`, RLAIF-V's setting).
"Differ" is RLHF-V's `get_diff_ids`: difflib matching blocks of at least 3 tokens anchor the alignment;
between consecutive anchors (and before the first and after the last) lies one unmatched stretch on each side,
and only stretches that are non-empty on BOTH sides (replacements) are marked; a pure insertion or deletion
is not. RLHF-V aligns whole sequences, whose identical prompts always match and so anchor the start of the
responses (a common opening of the responses, however short, joins the prompt's block). We align the response
tokens behind a 3-token sentinel that stands for that prompt, and turn off difflib's popularity heuristic
(`autojunk`), which in RLHF-V depends on the prompt and image length.
"""

import difflib

import torch

DDPO_MIN_MATCH = 3  # RLHF-V's `min_match_size`
PROMPT_SENTINEL = -1  # no token id


def tpo_token_weights(clean_target_logit: torch.Tensor, noised_target_logit: torch.Tensor, *, preferred: bool):
    """(w, s): TPO's weight and visual-anchored score per token, differentiable in both logits."""
    score = clean_target_logit.float() - noised_target_logit.float()
    anchored = torch.sigmoid(score)
    weights = anchored + 0.5 if preferred else 1.5 - anchored
    return weights, score


def differing_token_spans(chosen: list[int], rejected: list[int], min_match: int = DDPO_MIN_MATCH):
    """(chosen indices, rejected indices) of the tokens replaced between the two responses (see module doc)."""
    prompt = [PROMPT_SENTINEL] * min_match
    matcher = difflib.SequenceMatcher(None, prompt + rejected, prompt + chosen, autojunk=False)
    anchors = [block for block in matcher.get_matching_blocks() if block.size >= min_match]
    chosen_ids, rejected_ids = [], []
    rejected_start = chosen_start = 0
    for block in anchors + [difflib.Match(len(prompt) + len(rejected), len(prompt) + len(chosen), 0)]:
        if block.a > rejected_start and block.b > chosen_start:
            rejected_ids.extend(range(rejected_start - min_match, block.a - min_match))
            chosen_ids.extend(range(chosen_start - min_match, block.b - min_match))
        rejected_start, chosen_start = block.a + block.size, block.b + block.size
    return chosen_ids, rejected_ids


def ddpo_token_weights(targets: torch.Tensor, mask: torch.Tensor, *, gamma: float):
    """(weights, differing) for `[2B, K]` rows (B chosen, then B rejected): γ on the differing response tokens
    of each pair, 1 elsewhere."""
    pairs = targets.shape[0] // 2
    differing = torch.zeros_like(mask, dtype=torch.bool)
    for pair in range(pairs):
        chosen_row, rejected_row = pair, pairs + pair
        chosen_positions = mask[chosen_row].nonzero().squeeze(-1)
        rejected_positions = mask[rejected_row].nonzero().squeeze(-1)
        chosen_ids, rejected_ids = differing_token_spans(
            targets[chosen_row][chosen_positions].tolist(), targets[rejected_row][rejected_positions].tolist()
        )
        differing[chosen_row, chosen_positions[chosen_ids]] = True
        differing[rejected_row, rejected_positions[rejected_ids]] = True
    weights = torch.where(differing, gamma, 1.0).to(torch.float32)
    return weights, differing

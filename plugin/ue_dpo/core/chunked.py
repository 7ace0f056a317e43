"""Per-token statistics of the output projection, without materialising `[tokens, V]` logits.

For hidden states h_t at response positions and an output layer (W, b), logits_t = W h_t + b. UE-DPO needs,
per token, logit(a_t), log softmax(a_t), argmax_y logit(y) and logit(probe_t). They are computed
`token_chunk_size` tokens x `vocab_chunk_size` vocabulary entries at a time with a running max, sum of
exponentials and argmax. Backward recomputes each chunk's logits from h, W and the saved log-sum-exp
(per-chunk activation checkpointing, done by hand), so forward and backward hold at most one
`[token_chunk_size, vocab_chunk_size]` block of float32 logits and its exponentials.

Logits are computed as the model's own `lm_head` does (matmul in the input dtype), then taken to float32,
so results match `lm_head(h).float()` followed by a float32 log-softmax.
"""

import torch

from ue_dpo.core.token_stats import TargetLogitSummary


def _block_logits(hidden, weight, bias, start: int, stop: int) -> torch.Tensor:
    logits = hidden @ weight[start:stop].T
    if bias is not None:
        logits = logits + bias[start:stop]
    return logits.float()


def _ids_in_block(ids: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(local index clamped into the block, whether the id falls in [start, stop)) as `[n, 1]` tensors."""
    inside = (ids >= start) & (ids < stop)
    return (ids - start).clamp(0, stop - start - 1).unsqueeze(-1), inside.unsqueeze(-1)


class _ChunkedProjectionStatistics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, probe_ids, token_chunk_size, vocab_chunk_size):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        float_options = {"dtype": torch.float32, "device": hidden.device}
        target_logit = torch.zeros(tokens, **float_options)
        probe_logit = torch.zeros(tokens, **float_options)
        log_normalizer = torch.zeros(tokens, **float_options)
        argmax = torch.zeros(tokens, dtype=torch.long, device=hidden.device)
        for first in range(0, tokens, token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            block_hidden = hidden[rows]
            running_max = torch.full((block_hidden.shape[0],), float("-inf"), **float_options)
            running_sum = torch.zeros_like(running_max)
            best = torch.zeros(block_hidden.shape[0], dtype=torch.long, device=hidden.device)
            block_target = torch.zeros_like(running_max)
            block_probe = torch.zeros_like(running_max)
            for start in range(0, vocab, vocab_chunk_size):
                stop = min(start + vocab_chunk_size, vocab)
                logits = _block_logits(block_hidden, weight, bias, start, stop)
                block_max, block_argmax = logits.max(dim=-1)
                # strictly greater: on ties the earliest id wins, as torch.argmax does over the full row
                best = torch.where(block_max > running_max, block_argmax + start, best)
                new_max = torch.maximum(running_max, block_max)
                running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                    logits - new_max.unsqueeze(-1)
                ).sum(dim=-1)
                running_max = new_max
                for ids, values in ((targets[rows], block_target), (probe_ids[rows], block_probe)):
                    local, inside = _ids_in_block(ids, start, stop)
                    values.copy_(torch.where(inside, logits.gather(-1, local), values.unsqueeze(-1)).squeeze(-1))
                del logits
            target_logit[rows] = block_target
            probe_logit[rows] = block_probe
            log_normalizer[rows] = running_max + torch.log(running_sum)
            argmax[rows] = best
        ctx.save_for_backward(hidden, weight, bias, targets, probe_ids, log_normalizer)
        ctx.chunk_sizes = (token_chunk_size, vocab_chunk_size)
        ctx.mark_non_differentiable(argmax)
        return target_logit, target_logit - log_normalizer, probe_logit, argmax

    @staticmethod
    def backward(ctx, grad_target_logit, grad_target_logprob, grad_probe_logit, _grad_argmax):
        hidden, weight, bias, targets, probe_ids, log_normalizer = ctx.saved_tensors
        token_chunk_size, vocab_chunk_size = ctx.chunk_sizes
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        # d/dlogit_y of [logit(a), logit(a) - lse, logit(p)] = [1{y=a}, 1{y=a} - softmax_y, 1{y=p}]
        grad_on_target = (grad_target_logit + grad_target_logprob).float()
        grad_on_softmax = grad_target_logprob.float()
        grad_on_probe = grad_probe_logit.float()
        vocab = weight.shape[0]
        for first in range(0, hidden.shape[0], token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            block_hidden = hidden[rows]
            for start in range(0, vocab, vocab_chunk_size):
                stop = min(start + vocab_chunk_size, vocab)
                logits = _block_logits(block_hidden, weight, bias, start, stop)
                grad_logits = torch.exp(logits - log_normalizer[rows].unsqueeze(-1)).mul_(
                    -grad_on_softmax[rows].unsqueeze(-1)
                )
                del logits
                for ids, grad in ((targets[rows], grad_on_target[rows]), (probe_ids[rows], grad_on_probe[rows])):
                    local, inside = _ids_in_block(ids, start, stop)
                    grad_logits.scatter_add_(-1, local, grad.unsqueeze(-1) * inside)
                if need_bias:
                    grad_bias[start:stop] += grad_logits.sum(dim=0)
                grad_logits = grad_logits.to(hidden.dtype)
                if need_hidden:
                    grad_hidden[rows] += (grad_logits @ weight[start:stop]).float()
                if need_weight:
                    grad_weight[start:stop] += (grad_logits.T @ block_hidden).float()
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None, None, None, None,
        )


def projected_token_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    probe_ids: torch.Tensor | None = None,
    *,
    token_chunk_size: int,
    vocab_chunk_size: int,
) -> TargetLogitSummary:
    """Summary of logits = hidden @ weight.T + bias at the `[N, K]` positions where `mask` is true.

    `hidden` is `[N, K, H]`, `weight` `[V, H]`, `bias` `[V]` or None, `targets`/`probe_ids` `[N, K]` ids.
    Positions where `mask` is false are not computed: every field is 0 there. Gradients flow to
    `hidden`, `weight` and `bias` through `target_logit`, `target_logprob` and `probe_logit`.
    """
    if token_chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError(f"chunk sizes must be positive, got {token_chunk_size} tokens x {vocab_chunk_size} entries")
    if hidden.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{tuple(mask.shape)} must agree on the leading [N, K] dimensions")
    selected_targets = targets[mask]
    selected_probes = selected_targets if probe_ids is None else probe_ids[mask]
    target_logit, target_logprob, probe_logit, argmax = _ChunkedProjectionStatistics.apply(
        hidden[mask], weight, bias, selected_targets, selected_probes, token_chunk_size, vocab_chunk_size
    )

    def placed(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    return TargetLogitSummary(
        target_logit=placed(target_logit),
        target_logprob=placed(target_logprob),
        argmax=placed(argmax),
        probe_logit=None if probe_ids is None else placed(probe_logit),
    )

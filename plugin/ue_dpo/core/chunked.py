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
    """(`ids - start` clamped into the block, whether clamping left it unchanged: the id falls in [start, stop))."""
    local = ids - start
    clamped = local.clamp(0, stop - start - 1)
    return clamped, clamped == local


class _ProjectionGradients:
    """The gradients of `hidden @ weight.T + bias` with respect to the inputs that need one, summed in float32 from
    the gradient of one block of logits at a time."""

    def __init__(self, needs_grad: tuple[bool, bool, bool], hidden, weight, bias):
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        self.hidden, self.weight, self.bias = (
            torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device) if needed else None
            for needed, tensor in zip(needs_grad, (hidden, weight, bias))
        )

    def add(self, grad_logits: torch.Tensor, rows: slice, start: int, stop: int, block_hidden, weight) -> None:
        """The gradient of the logits `[rows, start:stop]`, whose hidden states are `block_hidden`."""
        if self.bias is not None:
            self.bias[start:stop] += grad_logits.sum(dim=0)
        grad_logits = grad_logits.to(block_hidden.dtype)
        if self.hidden is not None:
            self.hidden[rows] += (grad_logits @ weight[start:stop]).float()
        if self.weight is not None:
            self.weight[start:stop] += (grad_logits.T @ block_hidden).float()

    def results(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        grads = (self.hidden, self.weight, self.bias)
        return tuple(None if grad is None else grad.to(dtype) for grad, dtype in zip(grads, self.dtypes))


class _ChunkedProjectionStatistics(torch.autograd.Function):
    """`picked_ids` is `[n, P]`: column 0 the targets, column 1 (when P = 2) the probes. Returns the logits at
    `picked_ids` `[n, P]`, log softmax at the targets `[n]` and the argmax `[n]`.

    The ids of a block are handled as one `[n, P]` tensor, so a block costs the same few kernel launches with or
    without probes: at 7B scale and a few pairs per step, a step's time is set by kernel launches on the host.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, picked_ids, token_chunk_size, vocab_chunk_size):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        float_options = {"dtype": torch.float32, "device": hidden.device}
        picked = torch.zeros(picked_ids.shape, **float_options)
        log_normalizer = torch.zeros(tokens, **float_options)
        argmax = torch.zeros(tokens, dtype=torch.long, device=hidden.device)
        for first in range(0, tokens, token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            block_hidden, block_ids = hidden[rows], picked_ids[rows]
            running_max = torch.full((block_hidden.shape[0],), float("-inf"), **float_options)
            running_sum = torch.zeros_like(running_max)
            best = torch.zeros(block_hidden.shape[0], dtype=torch.long, device=hidden.device)
            block_picked = torch.zeros(block_ids.shape, **float_options)
            for start in range(0, vocab, vocab_chunk_size):
                stop = min(start + vocab_chunk_size, vocab)
                logits = _block_logits(block_hidden, weight, bias, start, stop)
                local, inside = _ids_in_block(block_ids, start, stop)
                block_picked = torch.where(inside, logits.gather(-1, local), block_picked)
                block_max, block_argmax = logits.max(dim=-1)
                # strictly greater: on ties the earliest id wins, as torch.argmax does over the full row
                best = torch.where(block_max > running_max, block_argmax + start, best)
                new_max = torch.maximum(running_max, block_max)
                running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                    logits - new_max.unsqueeze(-1)
                ).sum(dim=-1)
                running_max = new_max
                del logits
            picked[rows] = block_picked
            log_normalizer[rows] = running_max + torch.log(running_sum)
            argmax[rows] = best
        ctx.save_for_backward(hidden, weight, bias, picked_ids, log_normalizer)
        ctx.chunk_sizes = (token_chunk_size, vocab_chunk_size)
        ctx.mark_non_differentiable(argmax)
        return picked, picked[:, 0] - log_normalizer, argmax

    @staticmethod
    def backward(ctx, grad_picked, grad_target_logprob, _grad_argmax):
        hidden, weight, bias, picked_ids, log_normalizer = ctx.saved_tensors
        token_chunk_size, vocab_chunk_size = ctx.chunk_sizes
        grads = _ProjectionGradients(ctx.needs_input_grad[:3], hidden, weight, bias)
        # d/dlogit_y of [logit(a), logit(a) - lse, logit(p)] = [1{y=a}, 1{y=a} - softmax_y, 1{y=p}]
        grad_on_picked = grad_picked.float().clone()
        grad_on_picked[:, 0] += grad_target_logprob.float()
        negative_grad_on_softmax = -grad_target_logprob.float().unsqueeze(-1)
        vocab = weight.shape[0]
        for first in range(0, hidden.shape[0], token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            block_hidden, block_ids, block_grad_on_picked = hidden[rows], picked_ids[rows], grad_on_picked[rows]
            block_log_normalizer = log_normalizer[rows].unsqueeze(-1)
            block_softmax_factor = negative_grad_on_softmax[rows]
            for start in range(0, vocab, vocab_chunk_size):
                stop = min(start + vocab_chunk_size, vocab)
                logits = _block_logits(block_hidden, weight, bias, start, stop)
                grad_logits = torch.exp(logits - block_log_normalizer).mul_(block_softmax_factor)
                del logits
                local, inside = _ids_in_block(block_ids, start, stop)
                grad_in_block = block_grad_on_picked * inside
                # column by column: where a target equals its probe, its two additions keep a fixed order on a GPU
                for column in range(local.shape[1]):
                    grad_logits.scatter_add_(-1, local[:, column : column + 1], grad_in_block[:, column : column + 1])
                grads.add(grad_logits, rows, start, stop, block_hidden, weight)
        return (*grads.results(), None, None, None)


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
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)} and mask "
            f"{tuple(mask.shape)} must agree on the leading [N, K] dimensions"
        )
    # flat indices of the selected positions, found once: boolean indexing would wait on the GPU at every use
    selected = mask.flatten().nonzero().squeeze(-1)
    ids = targets if probe_ids is None else torch.stack((targets, probe_ids), dim=-1)
    picked, target_logprob, argmax = _ChunkedProjectionStatistics.apply(
        hidden.flatten(0, -2).index_select(0, selected),
        weight,
        bias,
        ids.flatten(0, 1).index_select(0, selected).view(-1, 1 if probe_ids is None else 2),
        token_chunk_size,
        vocab_chunk_size,
    )

    def placed(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(mask.numel()).index_copy(0, selected, values).view(mask.shape)

    return TargetLogitSummary(
        target_logit=placed(picked[:, 0]),
        target_logprob=placed(target_logprob),
        argmax=placed(argmax),
        probe_logit=None if probe_ids is None else placed(picked[:, 1]),
    )


class _ChunkedReferenceKL(torch.autograd.Function):
    """KL(π_ref ‖ πθ) per token from the hidden states of both models, `[n]`, with gradient to the policy's hidden
    states and output layer. Two sweeps over the vocabulary: the log-normalisers, then Σ_y p_ref(y)·(log p_ref(y) -
    log pθ(y)). d KL / d logitθ(y) = pθ(y) - p_ref(y), recomputed block by block in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, reference_hidden, reference_weight, reference_bias, chunk_sizes):
        token_chunk_size, vocab_chunk_size = chunk_sizes
        tokens, vocab = hidden.shape[0], weight.shape[0]
        log_normalizer = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)
        reference_log_normalizer = torch.zeros_like(log_normalizer)
        divergence = torch.zeros_like(log_normalizer)
        for first in range(0, tokens, token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            sides = ((hidden[rows], weight, bias), (reference_hidden[rows], reference_weight, reference_bias))
            normalizers = []
            for side_hidden, side_weight, side_bias in sides:
                blocks = [
                    torch.logsumexp(_block_logits(side_hidden, side_weight, side_bias, start, stop), dim=-1)
                    for start, stop in _vocab_blocks(vocab, vocab_chunk_size)
                ]
                normalizers.append(torch.logsumexp(torch.stack(blocks), dim=0))
            log_normalizer[rows], reference_log_normalizer[rows] = normalizers
            for start, stop in _vocab_blocks(vocab, vocab_chunk_size):
                log_p = _block_logits(*sides[0], start, stop) - normalizers[0].unsqueeze(-1)
                reference_log_p = _block_logits(*sides[1], start, stop) - normalizers[1].unsqueeze(-1)
                divergence[rows] += (reference_log_p.exp() * (reference_log_p - log_p)).sum(-1)
        ctx.save_for_backward(
            hidden, weight, bias, reference_hidden, reference_weight, reference_bias, log_normalizer,
            reference_log_normalizer,
        )  # fmt: skip
        ctx.chunk_sizes = chunk_sizes
        return divergence

    @staticmethod
    def backward(ctx, grad_divergence):
        hidden, weight, bias, reference_hidden, reference_weight, reference_bias, lse, reference_lse = ctx.saved_tensors
        token_chunk_size, vocab_chunk_size = ctx.chunk_sizes
        grads = _ProjectionGradients(ctx.needs_input_grad[:3], hidden, weight, bias)
        for first in range(0, hidden.shape[0], token_chunk_size):
            rows = slice(first, first + token_chunk_size)
            scale = grad_divergence[rows].float().unsqueeze(-1)
            for start, stop in _vocab_blocks(weight.shape[0], vocab_chunk_size):
                p = torch.exp(_block_logits(hidden[rows], weight, bias, start, stop) - lse[rows].unsqueeze(-1))
                reference_p = torch.exp(
                    _block_logits(reference_hidden[rows], reference_weight, reference_bias, start, stop)
                    - reference_lse[rows].unsqueeze(-1)
                )
                grad_logits = (p - reference_p) * scale
                grads.add(grad_logits, rows, start, stop, hidden[rows], weight)
        return (*grads.results(), None, None, None, None)


def _vocab_blocks(vocab: int, vocab_chunk_size: int):
    return [(start, min(start + vocab_chunk_size, vocab)) for start in range(0, vocab, vocab_chunk_size)]


def chunked_reference_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    reference_hidden: torch.Tensor,
    reference_weight: torch.Tensor,
    reference_bias: torch.Tensor | None,
    *,
    token_chunk_size: int,
    vocab_chunk_size: int,
) -> torch.Tensor:
    """Per-token KL(π_ref ‖ πθ) = Σ_y p_ref(y) (log p_ref(y) - log pθ(y)) of `[n, H]` hidden states projected by
    each model's output layer, holding at most one `[token_chunk_size, vocab_chunk_size]` block of logits per model
    (never `[n, V]`). The reference side takes no gradient."""
    if hidden.shape != reference_hidden.shape:
        raise ValueError(f"policy hidden {tuple(hidden.shape)} and reference {tuple(reference_hidden.shape)} differ")
    return _ChunkedReferenceKL.apply(
        hidden,
        weight,
        bias,
        reference_hidden.detach(),
        reference_weight.detach(),
        None if reference_bias is None else reference_bias.detach(),
        (token_chunk_size, vocab_chunk_size),
    )

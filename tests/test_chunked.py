"""The chunked projection equals `lm_head(h).float()` + log-softmax, values and gradients."""

import pytest
import torch

from ue_dpo.core import chunked
from ue_dpo.core.chunked import projected_token_statistics


def naive_statistics(hidden, weight, bias, targets, probe_ids):
    """The straightforward path: full logits as the model's lm_head computes them, then float32."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    target_logprob = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probe_logit = logits.gather(-1, probe_ids.unsqueeze(-1)).squeeze(-1)
    return target_logit, target_logprob, logits.argmax(-1), probe_logit


def make_inputs(seed, *, rows=3, positions=7, width=16, vocab=50, dtype=torch.float32, with_bias=True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, positions, width, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(vocab, width, generator=generator).to(dtype).requires_grad_()
    bias = torch.randn(vocab, generator=generator).to(dtype).requires_grad_() if with_bias else None
    targets = torch.randint(0, vocab, (rows, positions), generator=generator)
    probes = torch.randint(0, vocab, (rows, positions), generator=generator)
    mask = torch.rand(rows, positions, generator=generator) > 0.3
    upstream = torch.randn(3, rows, positions, generator=generator)  # d loss / d (target, logprob, probe)
    return hidden, weight, bias, targets, probes, mask, upstream


def gradients(outputs, upstream, mask, leaves):
    loss = sum((grad * value * mask).sum() for grad, value in zip(upstream, outputs))
    return torch.autograd.grad(loss, [leaf for leaf in leaves if leaf is not None])


@pytest.mark.parametrize("token_chunk_size, vocab_chunk_size", [(1, 1), (4, 7), (5, 50), (1000, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_equal_the_naive_computation(token_chunk_size, vocab_chunk_size, with_bias):
    hidden, weight, bias, targets, probes, mask, upstream = make_inputs(0, with_bias=with_bias)
    summary = projected_token_statistics(
        hidden,
        weight,
        bias,
        targets,
        mask,
        probes,
        token_chunk_size=token_chunk_size,
        vocab_chunk_size=vocab_chunk_size,
    )
    naive_target, naive_logprob, naive_argmax, naive_probe = naive_statistics(hidden, weight, bias, targets, probes)

    torch.testing.assert_close(summary.target_logit[mask], naive_target[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summary.target_logprob[mask], naive_logprob[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summary.probe_logit[mask], naive_probe[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(summary.argmax[mask], naive_argmax[mask])

    leaves = (hidden, weight, bias)
    chunked_grads = gradients(
        (summary.target_logit, summary.target_logprob, summary.probe_logit), upstream, mask, leaves
    )
    naive_grads = gradients((naive_target, naive_logprob, naive_probe), upstream, mask, leaves)
    assert len(chunked_grads) == (3 if with_bias else 2)
    for mine, reference in zip(chunked_grads, naive_grads):
        assert mine.abs().sum() > 0
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def test_masked_positions_are_zero_and_get_no_gradient():
    hidden, weight, bias, targets, probes, mask, _ = make_inputs(1)
    summary = projected_token_statistics(
        hidden, weight, bias, targets, mask, probes, token_chunk_size=3, vocab_chunk_size=16
    )
    for values in (summary.target_logit, summary.target_logprob, summary.probe_logit, summary.argmax):
        assert torch.count_nonzero(values[~mask]) == 0
    (grad_hidden,) = torch.autograd.grad(summary.target_logprob.sum() + summary.probe_logit.sum(), [hidden])
    assert torch.count_nonzero(grad_hidden[~mask]) == 0
    assert torch.count_nonzero(grad_hidden[mask].abs().sum(-1)) == mask.sum()


@pytest.mark.parametrize("vocab_chunk_size", [4, 64])
def test_argmax_ties_resolve_to_the_lowest_id_like_torch_argmax(vocab_chunk_size):
    width, vocab = 8, 40
    weight = torch.randn(vocab, width, generator=torch.Generator().manual_seed(2)) * 0.01
    # rows 9, 13 and 30 are identical and dominant: ties inside one block (9, 13 with blocks of 64) and
    # across blocks (every pair with blocks of 4)
    dominant = torch.ones(width)
    weight[9] = weight[13] = weight[30] = dominant
    hidden = torch.ones(2, 3, width)
    targets = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.bool)
    summary = projected_token_statistics(
        hidden, weight, None, targets, mask, token_chunk_size=2, vocab_chunk_size=vocab_chunk_size
    )
    assert (hidden @ weight.T).argmax(-1).unique().tolist() == [9]
    assert summary.argmax.unique().tolist() == [9]
    assert summary.probe_logit is None


def test_bfloat16_inputs_match_a_bfloat16_lm_head_followed_by_float32():
    hidden, weight, bias, targets, probes, mask, upstream = make_inputs(3, width=32, vocab=300, dtype=torch.bfloat16)
    summary = projected_token_statistics(
        hidden, weight, bias, targets, mask, probes, token_chunk_size=4, vocab_chunk_size=64
    )
    assert summary.target_logprob.dtype == torch.float32
    naive_target, naive_logprob, naive_argmax, naive_probe = naive_statistics(hidden, weight, bias, targets, probes)
    # logits are bf16 matmul outputs in both paths, so the values agree to float32 rounding of the reductions
    torch.testing.assert_close(summary.target_logit[mask], naive_target[mask], rtol=0, atol=0)
    torch.testing.assert_close(summary.target_logprob[mask], naive_logprob[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(summary.argmax[mask], naive_argmax[mask])

    leaves = (hidden, weight, bias)
    chunked_grads = gradients(
        (summary.target_logit, summary.target_logprob, summary.probe_logit), upstream, mask, leaves
    )
    naive_grads = gradients((naive_target, naive_logprob, naive_probe), upstream, mask, leaves)
    for mine, reference in zip(chunked_grads, naive_grads):
        assert mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), reference.float(), rtol=2e-2, atol=2e-2)


def test_no_block_of_logits_exceeds_the_chunk_sizes(monkeypatch):
    hidden, weight, bias, targets, probes, mask, _ = make_inputs(4, rows=4, positions=9, vocab=70)
    block_shapes = []
    block_logits = chunked._block_logits

    def recording_block_logits(*args):
        logits = block_logits(*args)
        block_shapes.append(tuple(logits.shape))
        return logits

    monkeypatch.setattr(chunked, "_block_logits", recording_block_logits)
    summary = projected_token_statistics(
        hidden, weight, bias, targets, mask, probes, token_chunk_size=5, vocab_chunk_size=16
    )
    forward_blocks = len(block_shapes)
    summary.target_logprob.sum().backward()
    tokens = int(mask.sum())
    blocks_per_pass = -(-tokens // 5) * -(-70 // 16)
    assert forward_blocks == blocks_per_pass and len(block_shapes) == 2 * blocks_per_pass
    assert max(rows for rows, _ in block_shapes) <= 5 and max(cols for _, cols in block_shapes) <= 16


def test_no_grad_pass_builds_no_graph_and_bad_shapes_are_refused():
    hidden, weight, bias, targets, probes, mask, _ = make_inputs(5)
    with torch.no_grad():
        summary = projected_token_statistics(
            hidden, weight, bias, targets, mask, probes, token_chunk_size=8, vocab_chunk_size=8
        )
    assert summary.target_logprob.grad_fn is None
    with pytest.raises(ValueError, match="leading"):
        projected_token_statistics(
            hidden, weight, bias, targets[:, :-1], mask[:, :-1], token_chunk_size=8, vocab_chunk_size=8
        )
    with pytest.raises(ValueError, match="chunk sizes must be positive"):
        projected_token_statistics(hidden, weight, bias, targets, mask, token_chunk_size=0, vocab_chunk_size=8)

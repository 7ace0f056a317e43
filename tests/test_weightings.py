"""The peers' token weightings in `stage: ue_dpo` (`ue_weighting: tpo | ddpo | uniform`) and UE-DPO's categories."""

import math
import types

import pytest
import torch

from llamafactory_runs import train_in_one_process
from tiny_training_config import tiny_training_config
from ue_dpo.config import UEDPOArguments
from ue_dpo.core.loss import log_weighted_sequence_logps
from ue_dpo.core.peer_weights import ddpo_token_weights, differing_token_spans, tpo_token_weights
from ue_dpo.core.weights import (
    CATEGORY_NAMES,
    SENSITIVE_REJECTED,
    TYPE_I_BLIND_SPOT,
    TYPE_II_LANGUAGE_PRIOR,
    UNSELECTED,
    blind_spot_categories,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


CLEAN = torch.tensor([[2.0, 0.0, -1.0, 5.0]])
NOISED = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # s = clean - noised = [1, 0, -2, 5]
MASK = torch.tensor([[True, True, True, False]])


def test_tpo_weights_are_sigmoid_of_the_clean_minus_noised_logit_plus_a_half():
    chosen, score = tpo_token_weights(CLEAN, NOISED, preferred=True)
    rejected, rejected_score = tpo_token_weights(CLEAN, NOISED, preferred=False)
    assert score.tolist() == rejected_score.tolist() == [[1.0, 0.0, -2.0, 5.0]]
    assert chosen[0].tolist() == pytest.approx([1.2310585786, 1.0, 0.6192029220, 1.4933071491], abs=1e-7)
    assert rejected[0].tolist() == pytest.approx([0.7689414214, 1.0, 1.3807970780, 0.5066928509], abs=1e-7)


def test_tpo_score_adds_log_w_to_each_response_token():
    token_logps = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    weights, _ = tpo_token_weights(CLEAN, NOISED, preferred=True)
    expected = (-1.0 + math.log(sigmoid(1.0) + 0.5)) + (-2.0 + math.log(1.0)) + (-0.5 + math.log(sigmoid(-2.0) + 0.5))
    assert log_weighted_sequence_logps(token_logps, weights, MASK).tolist() == pytest.approx([expected], abs=1e-6)


@pytest.mark.parametrize("preferred", [True, False])
def test_tpo_gradient_flows_through_the_score_into_both_forwards(preferred):
    clean, noised = CLEAN.clone().requires_grad_(), NOISED.clone().requires_grad_()
    token_logps = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    weights, _ = tpo_token_weights(clean, noised, preferred=preferred)
    log_weighted_sequence_logps(token_logps, weights, MASK).sum().backward()

    # d log w / d s: σ'(s) / w for chosen (w = σ(s) + 1/2), -σ'(s) / w for rejected (w = 3/2 - σ(s))
    expected = []
    for s, in_response in zip([1.0, 0.0, -2.0, 5.0], MASK[0].tolist()):
        slope = sigmoid(s) * (1.0 - sigmoid(s))
        weight = sigmoid(s) + 0.5 if preferred else 1.5 - sigmoid(s)
        expected.append((slope / weight if preferred else -slope / weight) if in_response else 0.0)
    assert clean.grad[0].tolist() == pytest.approx(expected, abs=1e-7)
    assert noised.grad[0].tolist() == pytest.approx([-value for value in expected], abs=1e-7)
    assert token_logps.grad[0].tolist() == [1.0, 1.0, 1.0, 0.0]  # unscaled, unlike UE-DPO's λ


PROMPT = [90, 91, 92]  # stands for the identical prompt (and image tokens) both rows of a pair start with


@pytest.mark.parametrize(
    "chosen, rejected, expected",
    [
        pytest.param([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 9, 5, 6, 7], ([3], [3]), id="one-token replacement"),
        pytest.param([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 8, 9, 5, 6, 7], ([3], [3, 4]), id="uneven replacement"),
        pytest.param([1, 2, 3, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], ([], []), id="pure insertion"),
        pytest.param([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 5, 6, 7], ([], []), id="pure deletion"),
        # the common `2` (and the tail `9`) are matches shorter than 3: no anchors, part of the replaced stretch
        pytest.param(
            [10, 11, 12, 1, 2, 20, 30, 31, 32],
            [10, 11, 12, 3, 2, 4, 30, 31, 32],
            ([3, 4, 5], [3, 4, 5]),
            id="short match inside",
        ),
        pytest.param([1, 2, 3, 4, 9], [1, 2, 3, 5, 9], ([3, 4], [3, 4]), id="short match at the end"),
        # a common opening of any length joins the identical prompt's block
        pytest.param([1, 4, 5, 6, 7], [1, 9, 5, 6, 7], ([1], [1]), id="short common opening"),
        pytest.param([1, 2, 3], [1, 2, 3], ([], []), id="identical"),
        pytest.param([1, 2], [3, 4, 5], ([0, 1], [0, 1, 2]), id="nothing in common"),
        pytest.param([], [1, 2], ([], []), id="empty chosen"),
    ],
)
def test_differing_token_spans_mark_replaced_stretches_between_anchors_of_three(chosen, rejected, expected):
    shift = len(PROMPT)
    chosen_ids, rejected_ids = differing_token_spans(PROMPT + chosen, PROMPT + rejected)
    assert ([i - shift for i in chosen_ids], [i - shift for i in rejected_ids]) == expected


def test_differing_token_spans_keep_difflibs_autojunk_as_rlhf_v_does():
    # Chosen: 192 distinct prompt tokens, then 1 7 7 7 7 2 50 51 52 (201 tokens). In a second sequence of 200 or
    # more, a token occurring more than 201 // 100 + 1 = 3 times is "popular": the four 7s cannot start a match, so
    # they anchor nothing and the whole stretch 1 7 7 7 7 2 <-> 3 7 7 7 7 4 (indices 192-197) is one replacement.
    prompt = list(range(1000, 1192))
    chosen, rejected = [1, 7, 7, 7, 7, 2, 50, 51, 52], [3, 7, 7, 7, 7, 4, 50, 51, 52]
    assert differing_token_spans(prompt + chosen, prompt + rejected) == (list(range(192, 198)), list(range(192, 198)))
    # With a 10-token prompt the rows are shorter than 200: nothing is popular, the 7s anchor, and only the two
    # replaced tokens on either side of them are marked.
    assert differing_token_spans(prompt[:10] + chosen, prompt[:10] + rejected) == ([10, 15], [10, 15])


def test_ddpo_weights_diff_whole_unpadded_rows_and_weight_response_tokens():
    # rows: chosen of pair 0, chosen of pair 1, rejected of pair 0, rejected of pair 1, each the prompt and a
    # response, right-padded with 0; the response tokens sit at token positions 3..9, predicted by logits 2..8.
    responses = [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5], [1, 2, 3, 9, 5, 6, 7], [1, 2, 8, 8, 4, 5]]
    rows = [PROMPT + response for response in responses]
    input_ids = torch.tensor([row + [0] * (10 - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (10 - len(row)) for row in rows])
    positions = torch.arange(2, 9)
    mask = torch.tensor([[column < len(response) for column in range(7)] for response in responses])
    weights, differing = ddpo_token_weights(input_ids, attention_mask, positions, mask, gamma=2.5)
    # pair 0: 4 <-> 9 at response index 3. Pair 1: [1, 2] joins the prompt's block, then [3, 4, 5] <-> [8, 8, 4, 5]
    # (the common [4, 5] is shorter than 3), at response indices 2-4 and 2-5.
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0],
        ]
    ).bool()
    assert differing.tolist() == expected.tolist()
    assert weights.tolist() == torch.where(expected, 2.5, 1.0).tolist()
    ones, same_differing = ddpo_token_weights(input_ids, attention_mask, positions, mask, gamma=1.0)
    assert ones.tolist() == torch.ones(4, 7).tolist() and same_differing.tolist() == expected.tolist()


def test_blind_spot_categories_split_chosen_selections_by_the_sign_of_u():
    uncertainty = torch.tensor([[0.5, -0.2, 0.0, 1.0]])
    chosen = blind_spot_categories(uncertainty, torch.tensor([[True, True, True, False]]), preferred=True)
    rejected = blind_spot_categories(uncertainty, torch.tensor([[True, False, True, False]]), preferred=False)
    assert chosen.tolist() == [[TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR, TYPE_II_LANGUAGE_PRIOR, UNSELECTED]]
    assert rejected.tolist() == [[SENSITIVE_REJECTED, UNSELECTED, SENSITIVE_REJECTED, UNSELECTED]]
    assert [
        CATEGORY_NAMES[code] for code in (UNSELECTED, TYPE_I_BLIND_SPOT, TYPE_II_LANGUAGE_PRIOR, SENSITIVE_REJECTED)
    ] == ["unselected", "Type-I blind spot", "Type-II language prior", "sensitive rejected token"]


@pytest.mark.parametrize(
    "branches, expected",
    [
        (
            "both",
            {
                "ue/selected_share_chosen": 0.4,
                "ue/selected_share_rejected": 0.4,
                "ue/lambda_chosen_mean": 1.06,
                "ue/lambda_rejected_mean": 0.94,
            },
        ),
        (
            "chosen",
            {
                "ue/selected_share_chosen": 0.4,
                "ue/selected_share_rejected": 0.0,
                "ue/lambda_chosen_mean": 1.06,
                "ue/lambda_rejected_mean": 1.0,
            },
        ),
        (
            "rejected",
            {
                "ue/selected_share_chosen": 0.0,
                "ue/selected_share_rejected": 0.4,
                "ue/lambda_chosen_mean": 1.0,
                "ue/lambda_rejected_mean": 0.94,
            },
        ),
    ],
)
def test_a_branch_switched_off_by_ue_branches_reports_no_selection_and_unit_lambda(branches, expected):
    from ue_dpo.core.token_stats import TargetLogitSummary
    from ue_dpo.llamafactory.trainer import token_means
    from ue_dpo.methods.base import ResponseTokens, WeightedTokens
    from ue_dpo.methods.ue import UEDPO

    # One pair, 5 response tokens each. logit(a|v) = 0, so Δ = -logit(a|v') = [0, 1, 2, 3, 4] and u = logit(â|v).
    # Chosen: q_0.4(Δ) = 1.6 selects tokens 0, 1; rejected: q_0.6(Δ) = 2.4 selects tokens 3, 4 (share 2/5 each).
    # u on either selection is [1, 3]: σ(±1/√2) sum to 1, so mean λ = (5 ± α) / 5 with α = 0.3.
    zeros = torch.zeros(2, 5)
    clean = TargetLogitSummary(
        target_logit=zeros,
        target_logprob=zeros,
        argmax=zeros.long(),
        probe_logit=torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 3.0]]),
    )
    noised = TargetLogitSummary(
        target_logit=-torch.arange(5.0).repeat(2, 1), target_logprob=zeros, argmax=zeros.long(), probe_logit=None
    )
    mask = torch.ones(2, 5, dtype=torch.bool)
    method = UEDPO(types.SimpleNamespace(ue_alpha=0.3, ue_tau=0.4, ue_stat_scope="sequence", ue_branches=branches))
    weights, details = method.blind_spot_weights(clean, noised, mask, gather=lambda values: values)
    selected, category = details["selected"], details["category"]
    response = ResponseTokens(
        inputs={},
        noised_inputs=None,
        positions=torch.arange(5),
        targets=zeros.long(),
        mask=mask,
        has_image=torch.ones(2, dtype=torch.bool),
        row_digests=None,
    )
    metrics = token_means(
        method.metric_terms(WeightedTokens(response, zeros, weights, details)), lambda sums: sums
    )  # one rank
    assert metrics == {
        **{key: pytest.approx(value, abs=1e-6) for key, value in expected.items()},
        "ue/u_mean": pytest.approx(0.8),
        "ue/delta_mean": pytest.approx(2.0),
    }
    off = {"chosen": slice(1, 2), "rejected": slice(0, 1), "both": slice(0, 0)}[branches]
    assert not selected[off].any() and (category[off] == UNSELECTED).all() and (weights[off] == 1.0).all()


@pytest.mark.parametrize(
    "keys, message",
    [
        (
            {"ue_weighting": "dpo"},
            "`ue_weighting: dpo` is not supported; use one of: ue, tpo, ddpo, uniform, mdpo, mfpo, vdpo, chip, "
            "mdpo_ue.",
        ),
        ({"ue_weighting": "ddpo", "ddpo_gamma": 0.0}, "`ddpo_gamma: 0.0` must be positive"),
        ({"ue_weighting": "tpo", "ddpo_gamma": 5.0}, "`ddpo_gamma` applies to `ue_weighting: ddpo` only"),
        (
            {"ue_weighting": "tpo", "ue_branches": "chosen"},
            "`ue_branches: chosen` applies to `ue_weighting: ue` or `mdpo_ue` only",
        ),
        (
            {"ue_weighting": "ddpo", "ue_weight_target": "logratio"},
            "`ue_weight_target: logratio` applies to `ue_weighting: ue` or `mdpo_ue` only",
        ),
        (
            {"ue_weighting": "tpo", "ue_precompute_ref": True},
            "`ue_precompute_ref` cannot be used with `ue_weighting: tpo`",
        ),
    ],
)
def test_bad_weighting_keys_are_refused_naming_the_key(keys, message):
    with pytest.raises(ValueError) as error:
        UEDPOArguments(**keys).validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None)
    assert message in str(error.value)


@pytest.fixture(scope="module")
def weighting_runs(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path_factory):
    """One epoch (4 steps of 2 pairs) of `stage: dpo` and of each weighting, from the same data and seed."""
    root = tmp_path_factory.mktemp("weightings")
    methods = {
        "dpo": {"stage": "dpo"},
        "uniform": {"ue_weighting": "uniform"},
        "ddpo_gamma1": {"ue_weighting": "ddpo", "ddpo_gamma": 1.0},
        "ddpo": {"ue_weighting": "ddpo"},
        "tpo": {"ue_weighting": "tpo", "ue_noise_space": "image"},
    }
    runs = {
        name: (
            tiny_training_config("qwen2_vl", tiny_qwen2_vl_dir, shapes_dataset_dir, root / name, max_steps=4, **keys),
            root / f"{name}-work",
        )
        for name, keys in methods.items()
    }
    return train_in_one_process(runs)


def losses(log: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log]


@pytest.mark.e2e
def test_uniform_and_ddpo_with_gamma_one_log_the_same_losses_as_stage_dpo(weighting_runs):
    stock = losses(weighting_runs["dpo"])
    assert len(stock) == 4
    assert losses(weighting_runs["uniform"]) == pytest.approx(stock, rel=1e-5, abs=1e-6)
    assert losses(weighting_runs["ddpo_gamma1"]) == pytest.approx(stock, rel=1e-5, abs=1e-6)


@pytest.mark.e2e
def test_ddpo_logs_the_differing_share_and_its_gamma_changes_the_loss(weighting_runs):
    keys = ("ddpo/differing_share_chosen", "ddpo/differing_share_rejected")
    log, log_gamma1 = weighting_runs["ddpo"], weighting_runs["ddpo_gamma1"]
    shares = [[entry[key] for key in keys] for entry in log]
    assert shares == [[entry[key] for key in keys] for entry in log_gamma1]  # γ does not change what differs
    assert all(0.0 <= share <= 1.0 for step in shares for share in step)
    # Most shapes pairs insert a hallucinated shape (DDPO marks nothing); some also swap "and" for ",". Until the
    # first batch with a differing token the run is DPO's to the digit, from there on γ changes the loss.
    first = next((step for step, step_shares in enumerate(shares) if max(step_shares) > 0.0), None)
    assert first is not None, f"no batch held a differing token: {shares}"
    stock = losses(weighting_runs["dpo"])
    assert losses(log)[:first] == pytest.approx(stock[:first], rel=1e-5, abs=1e-6)
    assert log[first]["loss"] != pytest.approx(stock[first], rel=0, abs=1e-5)


@pytest.mark.e2e
def test_tpo_logs_its_weights_and_weights_the_reference_by_its_own_logits(weighting_runs):
    log = weighting_runs["tpo"]
    for entry in log:
        assert 0.5 < entry["tpo/weight_chosen_mean"] < 1.5 and 0.5 < entry["tpo/weight_rejected_mean"] < 1.5
        assert entry["tpo/score_mean"] != 0.0 and entry["ue/imageless_pairs"] == 0.0
    # step 1 (LoRA: policy = reference): the reference carries the same log w, so the rewards cancel exactly
    assert log[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    stock = losses(weighting_runs["dpo"])
    assert losses(log)[1:] != pytest.approx(stock[1:], rel=0, abs=1e-5)

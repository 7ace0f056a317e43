"""The method registry: the smallest method, added as a new method is (a module and a registry line), trains the
same batch as `uniform` to the digit; and each method's keys come from its own module."""

import dataclasses

import pytest
import torch

from tiny_training_config import tiny_training_config
from ue_dpo.config import UEDPOArguments
from ue_dpo.methods import METHODS, key_groups, readers
from ue_dpo.methods.base import PreferenceMethod, WeightedTokens
from ue_dpo_trainers import built_trainer


class EveryTokenOne(PreferenceMethod):
    """What a new method's module holds, at its smallest: a name, a summary and its weights."""

    name = "every_token_one"
    summary = "every token weighs 1"

    def weigh(self, step) -> WeightedTokens:
        clean = step.statistics("clean")
        return WeightedTokens(step.response, clean.target_logprob, torch.ones_like(clean.target_logprob))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, EveryTokenOne.name, EveryTokenOne)  # the registry line


def test_every_method_key_is_a_stage_argument_with_help_and_is_read_by_some_method():
    arguments = {item.name: item for item in dataclasses.fields(UEDPOArguments)}
    for group in key_groups():
        assert readers(group), group
        for key in group.keys:
            assert arguments[key.name].default is None and arguments[key.name].metadata["help"] == key.help


def test_a_registered_method_is_accepted_and_refuses_the_keys_it_does_not_read(registered):
    args = UEDPOArguments(ue_weighting="every_token_one")
    args.validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None)
    assert type(args.method) is EveryTokenOne and not args.method.reads_noised_image
    with pytest.raises(
        ValueError,
        match="`ue_alpha: 0.2` applies to `ue_weighting: ue` or `mdpo_ue` only, but `ue_weighting: every_token_one` "
        "ignores it",
    ):
        UEDPOArguments(ue_weighting="every_token_one", ue_alpha=0.2).validate_ue_dpo(pref_loss="sigmoid", ld_alpha=None)


@pytest.fixture(scope="module")
def trainer(tiny_qwen2_vl_dir, shapes_dataset_dir, tmp_path_factory):
    config = tiny_training_config(
        "qwen2_vl",
        tiny_qwen2_vl_dir,
        shapes_dataset_dir,
        tmp_path_factory.mktemp("methods") / "out",
        max_samples=4,
        ue_weighting="uniform",
    )
    return built_trainer(config)


def loss_metrics_and_grads(trainer, batch) -> tuple[torch.Tensor, dict, dict]:
    trainer.model.zero_grad()
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    loss.backward()
    grads = {
        name: parameter.grad.clone()
        for name, parameter in trainer.model.named_parameters()
        if parameter.grad is not None
    }
    return loss.detach(), metrics, grads


def test_the_smallest_method_trains_a_batch_exactly_as_uniform(trainer, registered, monkeypatch):
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[row] for row in range(2)]))
    uniform = loss_metrics_and_grads(trainer, batch)
    monkeypatch.setattr(trainer.finetuning_args, "ue_weighting", EveryTokenOne.name)
    assert type(trainer.finetuning_args.method) is EveryTokenOne
    added = loss_metrics_and_grads(trainer, batch)
    assert uniform[0].item() != pytest.approx(0.6931, abs=1e-3)  # the adapter moved the policy from the reference
    assert torch.equal(added[0], uniform[0]) and added[1] == uniform[1]
    assert added[2].keys() == uniform[2].keys() and uniform[2]
    for name, grad in uniform[2].items():
        assert torch.equal(added[2][name], grad), name

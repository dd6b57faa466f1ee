"""reestimate_bn_stats (fxquant/bn_reestimation.py): BN statistics re-estimated with the
quantizers active, against statistics computed by hand from the BN inputs; the undo handle; the
errors; the BN statistics kept while a sim is built."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fxquant.bn_reestimation import keep_bn_statistics, reestimate_bn_stats
from fxquant.errors import FxQuantError
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.models import ConvBnNet, randomize_batch_norms


def _qat_sim(seed: int = 0) -> tuple[QuantizationSimModel, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = randomize_batch_norms(ConvBnNet(), seed=seed).train()
    batches = [torch.randn(8, 3, 10, 10) * 2 + 0.5 for _ in range(4)]
    sim = QuantizationSimModel(model, batches[0], quant_scheme="tf", default_param_bw=4,
                               default_output_bw=4)
    sim.model.eval()
    sim.compute_encodings(lambda m: [m(b) for b in batches])
    return sim, batches


def _hand_statistics(model: nn.Module, batches: list[torch.Tensor]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BN: mean over batches of each batch's channel mean and unbiased variance of the BN's
    input, the BNs normalizing with batch statistics (a copy: its own buffers may move)."""
    work = copy.deepcopy(model).eval()
    bns = {name: m for name, m in work.named_modules() if isinstance(m, nn.BatchNorm2d)}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in bns}
    hooks = []
    for name, bn in bns.items():
        bn.train()
        hooks.append(bn.register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(args[0].detach().double())))
    with torch.no_grad():
        for b in batches:
            work(b)
    for h in hooks:
        h.remove()
    return {name: (torch.stack([t.mean((0, 2, 3)) for t in xs]).mean(0),
                   torch.stack([t.var((0, 2, 3), unbiased=True) for t in xs]).mean(0))
            for name, xs in seen.items()}


def test_statistics_are_the_quantized_models_batch_statistics_averaged() -> None:
    sim, batches = _qat_sim()
    bn1, bn2 = sim.model.bn1, sim.model.bn2
    old = {n: (bn.running_mean.clone(), bn.running_var.clone()) for n, bn in
           (("bn1", bn1), ("bn2", bn2))}
    expected = _hand_statistics(sim.model, batches)
    handle = reestimate_bn_stats(sim.model, batches, num_batches=3)
    assert handle.num_batches == 3
    reference = _hand_statistics(sim.model, batches[:3])
    for name, bn in (("bn1", bn1), ("bn2", bn2)):
        mean, var = reference[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
        # and they moved from the stale statistics toward the quantized model's
        old_mean, _ = old[name]
        assert (bn.running_mean.double() - mean).abs().max() < (old_mean.double() - mean).abs().max()
    # the estimate used the quantized model: the float model's statistics differ
    float_model = copy.deepcopy(sim.model)
    for m in float_model.modules():
        if hasattr(m, "enabled"):
            m.enabled = False
    float_mean, _ = _hand_statistics(float_model, batches[:3])["bn2"]
    assert not torch.allclose(float_mean, reference["bn2"][0], rtol=1e-3, atol=1e-4)
    assert set(expected) == {"bn1", "bn2"}


def test_modes_are_restored_and_the_handle_undoes_the_estimate() -> None:
    sim, batches = _qat_sim(seed=1)
    sim.model.train()
    sim.model.conv1.eval()
    modes = {n: m.training for n, m in sim.model.named_modules()}
    bn = sim.model.bn1
    bn.momentum = 0.3
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    handle = reestimate_bn_stats(sim.model, iter(batches), num_batches=100)
    assert handle.num_batches == len(batches)  # a shorter loader: all its batches
    assert not torch.equal(bn.running_mean, before["running_mean"])
    assert {n: m.training for n, m in sim.model.named_modules()} == modes
    assert bn.momentum == 0.3
    handle.remove()
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    handle.remove()  # a second remove does nothing
    assert "removed" in repr(handle)


def test_forward_fn_gets_the_model_and_each_batch() -> None:
    sim, batches = _qat_sim(seed=2)
    labelled = [(b, torch.zeros(len(b))) for b in batches]
    seen = []

    def forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        seen.append(model.training)
        model(batch[0])

    reestimate_bn_stats(sim.model, labelled, num_batches=2, forward_fn=forward)
    assert seen == [False, False]  # the model in eval mode, only its BNs in training mode
    mean, var = _hand_statistics(sim.model, batches[:2])["bn1"]
    torch.testing.assert_close(sim.model.bn1.running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_errors_name_the_problem() -> None:
    sim, batches = _qat_sim()
    with pytest.raises(FxQuantError, match=r"num_batches must be a positive int, got 0"):
        reestimate_bn_stats(sim.model, batches, num_batches=0)
    with pytest.raises(FxQuantError, match=r"Linear has no BatchNorm with running statistics.*"
                                           r"model.train\(\)"):
        reestimate_bn_stats(nn.Linear(2, 2), batches)
    before = sim.model.bn1.running_mean.clone()
    with pytest.raises(FxQuantError, match="the data loader yielded no batch"):
        reestimate_bn_stats(sim.model, [], num_batches=5)
    assert torch.equal(sim.model.bn1.running_mean, before)  # restored after the failure

    def broken(model: nn.Module, batch: torch.Tensor) -> None:
        model(batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        reestimate_bn_stats(sim.model, batches, forward_fn=broken)
    assert torch.equal(sim.model.bn1.running_mean, before)
    assert sim.model.bn1.momentum == 0.1


def test_keep_bn_statistics_and_a_sim_build_leave_training_bns_alone() -> None:
    model = randomize_batch_norms(ConvBnNet()).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with keep_bn_statistics(model):
        model(torch.randn(4, 3, 10, 10))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    sim = QuantizationSimModel(model, torch.randn(4, 3, 10, 10))
    kept = {k: v for k, v in sim.model.state_dict().items() if "running" in k}
    assert kept.keys() == stats.keys()
    assert all(torch.equal(kept[k], v) for k, v in stats.items())

"""fold_all_batch_norms_to_scale (fxquant/batch_norm_fold.py) and the sim of a training-mode model
that keeps its batch norms: AIMET's QAT-with-BN flow. (fold_all_batch_norms itself is tested in
tests/passes/test_fold_batchnorm.py with the pass.)"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fxquant
from fxquant.batch_norm_fold import FoldedPair, fold_all_batch_norms_to_scale
from fxquant.bn_reestimation import reestimate_bn_stats
from fxquant.core.layers import layer_nodes, output_quantizer_node, param_quantizers
from fxquant.quantsim.quantsim import QuantizationSimModel
from tests.models import ConvBnNet, randomize_batch_norms


class Net(ConvBnNet):
    """conv → bn → relu → conv(no bias) → bn → flatten → linear → bn1d (the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.fc(self.flatten(self.bn2(self.conv2(self.relu(self.bn1(
            self.conv1(x))))))))


CFG = {"defaults": {"ops": {"is_output_quantized": "True"},
                    "params": {"is_quantized": "True", "is_symmetric": "True"},
                    "per_channel_quantization": "True"},
       "params": {"bias": {"is_quantized": "False"}}, "op_type": {},
       "supergroups": [{"op_list": ["Conv", "BatchNormalization", "Relu"]}],
       "model_input": {"is_input_quantized": "True"}, "model_output": {}}


def _sim(config: dict = CFG, negative_gamma: bool = False, **kwargs) -> tuple[
        QuantizationSimModel, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_batch_norms(Net(), seed=3)
    if negative_gamma:
        with torch.no_grad():
            for bn in (model.bn1, model.bn2, model.bn3):
                bn.weight[::2] *= -1
    x = torch.randn(16, 3, 10, 10)
    sim = QuantizationSimModel(model.train(), x, quant_scheme="tf", config_file=config, **kwargs)
    sim.model.eval()
    sim.compute_encodings(lambda m: m(x))
    return sim, x


def test_sim_of_a_training_mode_model_keeps_its_bns_and_says_so(caplog) -> None:
    model = Net().train()
    with caplog.at_level(logging.INFO, logger="fxquant.quantsim.quantsim"):
        sim = QuantizationSimModel(model, torch.randn(2, 3, 10, 10), config_file=CFG)
    assert "keeping 3 batch norm(s) unfolded (bn1, bn2, bn3)" in caplog.text
    assert "fold_all_batch_norms_to_scale" in caplog.text
    assert sim.fold_batch_norms is False
    layers = layer_nodes(sim.model)
    assert {"bn1", "bn2", "bn3"} <= set(layers)
    # each layer → BN pair is one op on target: no quantizer between them, BN params float
    for layer, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn3")):
        assert output_quantizer_node(layers[layer]) is None
        assert layers[bn].args[0] is layers[layer]
        assert param_quantizers(sim.model.get_submodule(bn)) == {}
    names = [(q.name, q.kind) for q in sim.quantizers()]
    assert ("bn2", "output") in names and ("bn3", "output") in names
    assert model.training  # the caller's model is not touched


@pytest.mark.parametrize("negative_gamma", [False, True], ids=["gamma>0", "some gamma<0"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_fold_to_scale_keeps_the_outputs_within_one_step(negative_gamma: bool,
                                                         per_channel: bool) -> None:
    cfg = {**CFG, "defaults": {**CFG["defaults"],
                               "per_channel_quantization": str(per_channel)}}
    if negative_gamma:  # asymmetric weights: the zero point is mirrored where gamma < 0
        cfg["defaults"] = {**cfg["defaults"], "params": {"is_quantized": "True",
                                                         "is_symmetric": "False"}}
    sim, x = _sim(cfg, negative_gamma=negative_gamma)
    reestimate_bn_stats(sim.model, [x[:8], x[8:]], num_batches=2)
    bn2 = sim.model.bn2
    k = (bn2.weight / torch.sqrt(bn2.running_var + bn2.eps)).detach()
    w_scale = sim.quantizer("conv2.weight").encoding.scale.clone()
    with torch.no_grad():
        before = sim.model(x)
    pairs = fold_all_batch_norms_to_scale(sim)
    assert [p.names for p in pairs] == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn3")]
    assert all(isinstance(p, FoldedPair) for p in pairs)
    assert pairs[1][0] is sim.model.conv2 and pairs[1][1] is bn2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sim.model.modules())
    # the weight quantizer's grid stretched by |gamma / sigma| per output channel
    enc = sim.quantizer("conv2.weight").encoding
    assert enc.axis == 0
    torch.testing.assert_close(enc.scale, (w_scale * k.abs()).float(), rtol=1e-6, atol=0)
    # the BN's output quantizer is the layer's now
    out_q = sim.quantizer("fc")
    assert [q.name for q in sim.quantizers() if q.kind == "output"][-1] == "fc"
    with torch.no_grad():
        after = sim.model(x)
    step = float(out_q.encoding.scale)
    assert (after - before).abs().max() <= step * 1.001
    assert (after != before).float().mean() < 0.01  # rounding-boundary flips only


def test_fold_to_scale_folds_the_weight_and_creates_a_bias() -> None:
    sim, x = _sim()
    w = sim.model.conv2.parametrizations.weight.original.detach().clone()
    bn = sim.model.bn2
    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    shift = (bn.bias - bn.running_mean * k).detach()
    assert sim.model.conv2.bias is None
    fold_all_batch_norms_to_scale(sim)
    folded_w = sim.model.conv2.parametrizations.weight.original
    torch.testing.assert_close(folded_w, w * k.view(-1, 1, 1, 1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sim.model.conv2.bias, shift, rtol=1e-6, atol=1e-7)
    assert fold_all_batch_norms_to_scale(sim) == []  # nothing left to fold


def test_pairs_that_cannot_fold_to_scale_are_left_with_a_warning(caplog) -> None:
    class ReluBn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.relu(self.conv(x)))

    model = randomize_batch_norms(ReluBn()).train()
    sim = QuantizationSimModel(model, torch.randn(2, 3, 8, 8), config_file=CFG)
    with caplog.at_level(logging.WARNING, logger="fxquant.batch_norm_fold"):
        assert fold_all_batch_norms_to_scale(sim) == []
    assert "not folding bn: its input is quantized (relu.output_quantizer)" in caplog.text
    assert "supergroup" in caplog.text
    # a bias with its own quantizer (the config quantizes biases): its encoding would break
    biased = {**CFG, "params": {}}
    sim, _ = _sim(biased)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fxquant.batch_norm_fold"):
        pairs = fold_all_batch_norms_to_scale(sim)
    assert [p.names for p in pairs] == [("conv2", "bn2")]  # conv2 has no bias
    assert "conv1.bias has a quantizer of its own" in caplog.text


def test_fold_to_scale_rejects_what_is_not_a_sim() -> None:
    with pytest.raises(TypeError, match="fold_all_batch_norms_to_scale expects a "
                                        "QuantizationSimModel.*got Linear"):
        fold_all_batch_norms_to_scale(nn.Linear(2, 2))


def test_aimet_qat_with_bn_flow_then_export_names(tmp_path) -> None:
    """sim on the unfolded model → train → reestimate → fold to scale → encodings."""
    sim, x = _sim()
    sim.model.train()
    opt = torch.optim.SGD(sim.model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        sim.model(x).square().mean().backward()
        opt.step()
    handle = reestimate_bn_stats(sim.model, [x], num_batches=1)
    assert handle.num_batches == 1
    fold_all_batch_norms_to_scale(sim)
    sim.model.eval()
    path = tmp_path / "net.encodings"
    sim.save_encodings(path)
    names = {q.name for q in sim.quantizers()}
    assert {"conv1.weight", "conv2.weight", "fc.weight", "fc", "x"} <= names
    assert not any(n.startswith("bn") for n in names)
    assert fxquant.fold_all_batch_norms(sim.model) == []  # no BN left for the float fold


# -- fold_given_batch_norms (AIMET's manual fold) -------------------------------------------------
def test_fold_given_batch_norms_folds_the_pairs_given_in_either_order() -> None:
    from fxquant.batch_norm_fold import fold_given_batch_norms

    model = randomize_batch_norms(Net()).eval()
    reference = randomize_batch_norms(Net()).eval()
    reference.load_state_dict(model.state_dict())
    pairs = fold_given_batch_norms(model, [(model.bn1, model.conv1)])   # (bn, layer) accepted
    assert [p.names for p in pairs] == [("conv1", "bn1")]
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_fold_given_batch_norms_refuses_bad_pairs_and_changes_nothing() -> None:
    from fxquant.batch_norm_fold import fold_given_batch_norms

    model = randomize_batch_norms(Net()).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(fxquant.BatchNormFoldError,
                       match=r"cannot fold 1 pair\(s\): \[\('conv1', 'bn2'\)\].*Nothing was changed"):
        fold_given_batch_norms(model, [(model.conv2, model.bn2), (model.conv1, model.bn2)])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert isinstance(model.bn2, nn.BatchNorm2d)
    with pytest.raises(fxquant.BatchNormFoldError, match=r"is not a submodule of Net"):
        fold_given_batch_norms(model, [(nn.Conv2d(1, 1, 1), model.bn1)])
    with pytest.raises(fxquant.BatchNormFoldError, match=r"must hold one BatchNorm and one Conv"):
        fold_given_batch_norms(model, [(model.conv1, model.conv2)])
    with pytest.raises(fxquant.BatchNormFoldError, match=r"must be a \(layer, bn\) pair"):
        fold_given_batch_norms(model, [model.conv1])
    with pytest.raises(fxquant.BatchNormFoldError, match=r"training mode.*fold_given_batch_norms"):
        fold_given_batch_norms(model.train(), [(model.conv1, model.bn1)])


def test_fold_to_scale_accepts_aimet_1x_input_shapes() -> None:
    sim, x = _sim()
    pairs = fold_all_batch_norms_to_scale(sim, input_shapes=(1, 3, 224, 224))
    assert pairs and not any(isinstance(m, nn.BatchNorm2d) for m in sim.model.modules())

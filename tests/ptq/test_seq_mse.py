"""Sequential MSE (fxquant.ptq.seq_mse) on a trained MobileNet-style digits CNN: better logits than
min-max and TF-enhanced weight ranges at 4 bits, per-layer errors no worse than min-max, frozen
encodings, exclusions, both AIMET call shapes, the vectorized losses against a plain loop, and
every error path."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxquant
from fxquant.core.encoding import QuantEncoding
from fxquant.core.kernels import quantize_dequantize
from fxquant.errors import ConfigError
from fxquant.ptq import seq_mse as seq_mse_module
from fxquant.ptq._data import capture_layer_io
from fxquant.ptq.seq_mse import SeqMseParams, _candidate_losses, apply_seq_mse
from tests.ptq.digits_dw import (calibration_batches, sqnr, test_images, top1_agreement,
                                 trained_dw_net)

LAYERS = ["features.0", "features.3", "features.6", "features.9", "features.12",
          "features.15.conv.0", "features.15.conv.3", "features.15.conv.6", "classifier"]
DEPTHWISE = "features.3"


def _calibrate(model, batches):
    for b in batches:
        model(b)


def _sim(net, batches, scheme="tf", param_bw=4, **kwargs):
    return fxquant.QuantizationSimModel(net, batches[0][:1], quant_scheme=scheme,
                                        default_param_bw=param_bw, default_output_bw=8, **kwargs)


def _weight_encodings(sim):
    return {layer: sim.quantizer(f"{layer}.weight").encoding for layer in LAYERS}


def _old_shape(*args, **kwargs):
    with pytest.warns(DeprecationWarning, match="deprecated call shape"):
        apply_seq_mse(*args, **kwargs)


@torch.no_grad()
def _logits_sqnr(sim, ref, images):
    out = sim.model(images)
    return sqnr(ref, out), top1_agreement(ref, out)


@pytest.fixture(scope="module")
def digits():
    net = trained_dw_net()
    batches = calibration_batches(4, 64)
    images = test_images()
    with torch.no_grad():
        ref = net(images)
    sims = {}
    for scheme in ("tf", "tf_enhanced"):
        sims[scheme] = _sim(net, batches, scheme)
        sims[scheme].compute_encodings(_calibrate, batches)
    seq = _sim(net, batches, "tf")
    apply_seq_mse(seq, batches, num_candidates=20)
    applied = copy.deepcopy(seq)           # the state right after apply_seq_mse
    seq.compute_encodings(_calibrate, batches)
    sims["seq"], sims["applied"] = seq, applied
    return dict(net=net, batches=batches, images=images, ref=ref, sims=sims)


# -- parameters -------------------------------------------------------------------------------

def test_params_defaults_as_aimet_and_frozen():
    params = SeqMseParams(num_batches=4)
    assert (params.num_candidates, params.inp_symmetry, params.loss_fn, params.forward_fn) == (
        20, "symqt", "mse", None)
    assert SeqMseParams(None).num_batches is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.num_candidates = 3
    assert params.get_loss_fn() is F.mse_loss
    assert SeqMseParams(1, loss_fn="l1").get_loss_fn() is F.l1_loss
    neg_sqnr = SeqMseParams(1, loss_fn="sqnr").get_loss_fn()
    target = torch.tensor([[1.0], [1.0]])
    assert neg_sqnr(target * 0.9, target).item() == pytest.approx(-20.0, abs=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_batches=0), r"SeqMseParams.num_batches must be a positive int or None"),
    (dict(num_batches="4"), r"num_batches must be a positive int.*'4'"),
    (dict(num_batches=True), r"num_batches must be a positive int"),
    (dict(num_batches=2, num_candidates=0), r"SeqMseParams.num_candidates must be a positive int"),
    (dict(num_batches=2, inp_symmetry="sym"),
     r"inp_symmetry='sym' is not valid; valid values: 'asym', 'symfp', 'symqt'"),
    (dict(num_batches=2, loss_fn="mae"),
     r"loss_fn='mae' is not valid; valid values: 'mse', 'l1', 'sqnr'"),
    (dict(num_batches=2, forward_fn=3), r"SeqMseParams.forward_fn must be callable"),
])
def test_params_invalid(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SeqMseParams(**kwargs)


# -- accuracy ---------------------------------------------------------------------------------

def test_seq_mse_beats_min_max_and_tf_enhanced_weight_ranges(digits, capsys):
    ref, images, sims = digits["ref"], digits["images"], digits["sims"]
    tf_db, tf_top1 = _logits_sqnr(sims["tf"], ref, images)
    tfe_db, tfe_top1 = _logits_sqnr(sims["tf_enhanced"], ref, images)
    seq_db, seq_top1 = _logits_sqnr(sims["seq"], ref, images)
    with capsys.disabled():
        print(f"\nW4A8 logits SQNR on the digits test split: min-max (tf) {tf_db:.2f} dB "
              f"(top-1 agreement {tf_top1:.4f}), tf_enhanced {tfe_db:.2f} dB ({tfe_top1:.4f}), "
              f"sequential MSE {seq_db:.2f} dB ({seq_top1:.4f})")
    # measured: 11.6, 12.0 and 14.5 dB
    assert seq_db > tf_db + 1.5
    assert seq_db > tfe_db + 1.0
    assert seq_top1 >= tf_top1


def test_per_layer_output_error_is_at_most_min_maxs(digits):
    """Recomputed here from the layer's input in the sim (weights before it quantized with their
    chosen ranges, activation quantizers off: AIMET's 'symqt'). The min-max encoding is the
    last candidate, so no channel can be worse; most layers are strictly better."""
    sim = copy.deepcopy(digits["sims"]["seq"])
    minmax = _weight_encodings(digits["sims"]["tf"])
    for ref in sim.quantizers():
        if ref.kind != "param":
            ref.quantizer.enabled = False
    improved = 0
    for layer in LAYERS:
        module = sim.model.get_submodule(layer)
        w = module.parametrizations.weight.original.detach()
        xs, _ = capture_layer_io(sim.model, layer, digits["batches"], outputs=False)

        def op(x, weight, module=module):
            if isinstance(module, nn.Linear):
                return F.linear(x, weight)
            return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation,
                            module.groups)

        def sse(enc, w=w, xs=xs, op=op):
            wq = quantize_dequantize(w, enc.scale, enc.zero_point, enc.qmin, enc.qmax, axis=0)
            total = torch.zeros(w.shape[0], dtype=torch.float64)
            for x in xs:
                err = (op(x, wq) - op(x, w)).transpose(0, 1).reshape(w.shape[0], -1)
                total += err.double().square().sum(1)
            return total

        chosen = sse(sim.quantizer(f"{layer}.weight").encoding)
        baseline = sse(minmax[layer])
        assert bool((chosen <= baseline * (1 + 1e-4) + 1e-9).all()), layer
        improved += bool(chosen.sum() < 0.95 * baseline.sum())
    assert improved >= len(LAYERS) - 2


def test_chosen_ranges_are_fractions_of_min_max(digits):
    chosen = _weight_encodings(digits["sims"]["seq"])
    minmax = _weight_encodings(digits["sims"]["tf"])
    fractions = []
    for layer in LAYERS:
        ratio = (chosen[layer].scale.double() / minmax[layer].scale.double()) * 20
        assert torch.allclose(ratio, ratio.round(), atol=1e-4), layer
        assert bool(((ratio.round() >= 1) & (ratio.round() <= 20)).all())
        fractions.append(ratio.round())
    fractions = torch.cat(fractions)
    assert bool((fractions < 20).any()) and bool((fractions > 1).any())
    assert chosen[DEPTHWISE].scale.shape == (16,)            # depthwise: one range per channel


@pytest.mark.parametrize("kwargs", [dict(inp_symmetry="symfp"), dict(inp_symmetry="asym"),
                                    dict(loss_fn="l1"), dict(loss_fn="sqnr")])
def test_other_inputs_and_losses_beat_min_max(digits, kwargs):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)
    _old_shape(net, sim, batches, SeqMseParams(num_batches=4, **kwargs))
    assert all(sim.quantizer(f"{layer}.weight").is_frozen for layer in LAYERS)
    sim.compute_encodings(_calibrate, batches)
    tf_db, _ = _logits_sqnr(digits["sims"]["tf"], digits["ref"], digits["images"])
    db, _ = _logits_sqnr(sim, digits["ref"], digits["images"])
    assert db > tf_db + 1.5, (kwargs, db, tf_db)        # measured: 14.5-16.5 vs 11.6 dB


def test_per_tensor_weights_get_one_range(digits):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches, config_file="per_tensor")
    apply_seq_mse(sim, batches)
    for layer in LAYERS:
        enc = sim.quantizer(f"{layer}.weight").encoding
        assert enc.axis is None and enc.scale.shape == ()
        assert sim.quantizer(f"{layer}.weight").is_frozen


# -- state of the sim -------------------------------------------------------------------------

def test_encodings_frozen_and_rest_of_sim_as_before(digits):
    applied, seq = digits["sims"]["applied"], digits["sims"]["seq"]
    for ref in applied.quantizers():
        assert ref.quantizer.enabled
        if ref.kind == "param":
            assert ref.quantizer.is_frozen and ref.quantizer.encoding is not None
        else:   # activation quantizers: disabled during the search, back as they were
            assert not ref.quantizer.is_frozen and ref.quantizer.encoding is None
    assert _weight_encodings(seq) == _weight_encodings(applied)     # compute_encodings kept them
    assert all(ref.quantizer.encoding is not None for ref in seq.quantizers())


def test_excluded_modules_untouched(digits):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)
    before = sim.quantizer(f"{DEPTHWISE}.weight").state_dict()
    _old_shape(net, sim, batches, SeqMseParams(4),
               modules_to_exclude=[net.features[3], sim.model.classifier, "features.15.conv.3"])
    excluded = {DEPTHWISE, "classifier", "features.15.conv.3"}
    for layer in LAYERS:
        q = sim.quantizer(f"{layer}.weight")
        assert q.is_frozen == (layer not in excluded), layer
        assert q.enabled
    assert sim.quantizer(f"{DEPTHWISE}.weight").state_dict().keys() == before.keys()
    assert sim.quantizer(f"{DEPTHWISE}.weight").encoding is None
    sim.compute_encodings(_calibrate, batches)
    minmax = _weight_encodings(digits["sims"]["tf"])
    for layer in excluded:
        assert sim.quantizer(f"{layer}.weight").encoding == minmax[layer]


def test_float_model_unchanged_and_deterministic(digits):
    net, batches = digits["net"], digits["batches"]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    sim = _sim(net, batches)
    apply_seq_mse(sim, batches)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])


def test_old_and_new_call_shapes_agree(digits):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)
    _old_shape(model=net, sim=sim, data_loader=batches, params=SeqMseParams(num_batches=4))
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])
    fewer = _sim(net, batches)
    _old_shape(net, fewer, batches + batches, SeqMseParams(num_batches=2))
    assert _weight_encodings(fewer) != _weight_encodings(sim)    # two batches, other data


def test_torch_data_loader_of_images_and_labels(digits):
    from tests.quantsim.digits import digits as digits_data

    x, y = digits_data()[:2]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:256], y[:256]),
                                         batch_size=64)
    sim = _sim(digits["net"], digits["batches"])
    apply_seq_mse(sim, loader)                    # [images, labels] batches: images are run
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])


def test_wide_weights_are_left_to_calibration_as_in_aimet(digits, caplog):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches, param_bw=8)
    with caplog.at_level(logging.WARNING, logger="fxquant.ptq.seq_mse"):
        apply_seq_mse(sim, batches)
    assert "have weights of more than 4 bits" in caplog.text
    assert not any(ref.quantizer.is_frozen for ref in sim.quantizers())


@pytest.mark.parametrize("walks", [True, False])
def test_failure_rolls_the_sim_back(digits, monkeypatch, walks):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)
    if not walks:     # each layer's inputs captured by a forward pass
        monkeypatch.setattr(seq_mse_module, "_walks", lambda *args, **kwargs: (None, None))
    searched = []
    search = seq_mse_module._search

    def failing_search(*args, **kwargs):
        searched.append(1)
        if len(searched) > 2:           # after two layers are frozen
            raise RuntimeError("data went away")
        return search(*args, **kwargs)

    monkeypatch.setattr(seq_mse_module, "_search", failing_search)
    with pytest.raises(RuntimeError, match="data went away"):
        apply_seq_mse(sim, batches)
    for ref in sim.quantizers():
        assert ref.quantizer.enabled and not ref.quantizer.is_frozen
        assert ref.quantizer.encoding is None


def test_a_failing_forward_fn_rolls_the_sim_back(digits):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)

    def forward_fn(model, batch):
        raise RuntimeError("data went away")

    with pytest.raises(RuntimeError, match="data went away"):
        apply_seq_mse(sim, batches, forward_fn=forward_fn)
    for ref in sim.quantizers():
        assert ref.quantizer.enabled and not ref.quantizer.is_frozen
        assert ref.quantizer.encoding is None


def test_cache_dir_saves_and_resumes(digits, tmp_path, monkeypatch):
    net, batches = digits["net"], digits["batches"]
    cache = tmp_path / "cache"
    apply_seq_mse(_sim(net, batches), batches, cache_dir=str(cache))
    names = (cache / "running_module_names.txt").read_text().split()
    assert names == LAYERS and all((cache / f"{n}.pt").exists() for n in LAYERS)
    (cache / "running_module_names.txt").write_text("\n".join(LAYERS[:-1]) + "\n")
    searched = []
    search = seq_mse_module._search
    monkeypatch.setattr(seq_mse_module, "_search",
                        lambda layer, *args: searched.append(layer) or search(layer, *args))
    sim = _sim(net, batches)
    apply_seq_mse(sim, batches, cache_dir=str(cache))
    assert searched == ["classifier"]              # the others come from the cache
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])


def test_checkpoints_config_is_validated_and_gives_the_same_result(digits, tmp_path):
    net, batches = digits["net"], digits["batches"]
    path = tmp_path / "ckpts.json"
    path.write_text(json.dumps({"grouped_modules": {"0": ["features"], "1": ["classifier"]},
                                "include_static_inputs": [False, False], "cache_on_cpu": True}))
    sim = _sim(net, batches)
    _old_shape(net, sim, batches, SeqMseParams(4), checkpoints_config=str(path))
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])


def test_vectorized_losses_match_a_loop_over_candidates():
    torch.manual_seed(0)
    cases = [nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 3, groups=2, stride=2),
             nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="reflect"),
             nn.Conv1d(4, 6, 3), nn.Linear(5, 7)]
    for module in cases:
        w = module.weight.detach()
        shape = (3, 5) if isinstance(module, nn.Linear) else (
            (3, 4, 9) if isinstance(module, nn.Conv1d) else (3, module.in_channels, 7, 7))
        xs = [torch.randn(shape), torch.randn(shape)]
        xqs = [x + 0.05 * torch.randn_like(x) for x in xs]
        deltas = torch.stack([quantize_dequantize(w, s * w.abs().amax(tuple(range(1, w.dim()))) / 7,
                                                  torch.zeros(w.shape[0]), -8, 7, axis=0) - w
                              for s in (0.4, 0.7, 1.0)])
        for loss_fn in ("mse", "l1", "sqnr"):
            for same in (True, False):
                got = _candidate_losses(module, w, deltas, xs, xs if same else xqs, loss_fn, same)
                want = torch.zeros(3, w.shape[0], dtype=torch.float64)
                for k in range(3):
                    for x, xq in zip(xs, xs if same else xqs):
                        y = module._conv_forward(x, w, None) if not isinstance(
                            module, nn.Linear) else F.linear(x, w)
                        yq = module._conv_forward(xq, w + deltas[k], None) if not isinstance(
                            module, nn.Linear) else F.linear(xq, w + deltas[k])
                        y2 = y.movedim(-1 if isinstance(module, nn.Linear) else 1, 0)
                        err = (yq.movedim(-1 if isinstance(module, nn.Linear) else 1, 0) - y2)
                        err, y2 = err.reshape(w.shape[0], -1), y2.reshape(w.shape[0], -1)
                        if loss_fn == "mse":
                            want[k] += err.square().sum(1).double()
                        elif loss_fn == "l1":
                            want[k] += err.abs().sum(1).double()
                        else:
                            want[k] -= 10 * torch.log10((y2.square().mean(1) + 1e-10)
                                                        / (err.square().mean(1) + 1e-10)).double()
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5,
                                           msg=f"{module} {loss_fn} same={same}")


def test_candidates_evaluated_in_chunks_give_the_same_encodings(digits, monkeypatch):
    monkeypatch.setattr(seq_mse_module, "_CHUNK_ELEMENTS", 1)     # one candidate at a time
    sim = _sim(digits["net"], digits["batches"])
    apply_seq_mse(sim, digits["batches"])
    assert _weight_encodings(sim) == _weight_encodings(digits["sims"]["applied"])


def test_runs_on_the_sims_device(digits, device):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(copy.deepcopy(net).to(device), [b.to(device) for b in batches])
    apply_seq_mse(sim, batches)                    # CPU batches: moved to the sim's device
    for layer in LAYERS:
        enc = sim.quantizer(f"{layer}.weight").encoding
        assert enc.scale.device.type == device.type and sim.quantizer(f"{layer}.weight").is_frozen
    sim.compute_encodings(_calibrate, [b.to(device) for b in batches])
    tf_db, _ = _logits_sqnr(digits["sims"]["tf"], digits["ref"], digits["images"])
    db, _ = _logits_sqnr(sim, digits["ref"].to(device), digits["images"].to(device))
    assert db > tf_db + 1.5


# -- errors -----------------------------------------------------------------------------------

def test_error_sim_is_not_a_sim(digits):
    with pytest.raises(TypeError, match=r"sim must be a fxquant.QuantizationSimModel, got list"):
        apply_seq_mse(digits["batches"], digits["batches"])
    with pytest.raises(TypeError, match=r"sim must be a fxquant.QuantizationSimModel, got list"):
        _old_shape(digits["net"], digits["batches"], digits["batches"], SeqMseParams(1))


def test_error_sim_not_built_from_model(digits):
    from tests.quantsim.digits import DigitsNet

    other = nn.Sequential()
    other.features = nn.Sequential(nn.Conv2d(1, 8, 3))                  # same path, other shape
    for model, match in ((DigitsNet(), r"none of the sim's conv/linear layers"),
                         (other, r"'features.0' is a Conv2d with weight \(8, 1, 3, 3\) in model")):
        with pytest.raises(ConfigError, match=r"sim was not built from model: " + match):
            _old_shape(model, _sim(digits["net"], digits["batches"]), digits["batches"],
                       SeqMseParams(1))


def test_error_params_and_model_types(digits):
    sim = _sim(digits["net"], digits["batches"])
    with pytest.raises(TypeError, match=r"params must be a SeqMseParams, got dict"):
        _old_shape(digits["net"], sim, digits["batches"], {"num_batches": 1})
    with pytest.raises(TypeError, match=r"model must be the float torch.nn.Module"):
        _old_shape(model="net", sim=sim, data_loader=digits["batches"], params=SeqMseParams(1))
    with pytest.raises(ConfigError, match=r"SeqMseParams.num_candidates must be a positive int"):
        apply_seq_mse(sim, digits["batches"], num_candidates=0)


@pytest.mark.parametrize("exclude, match", [
    ([nn.Conv2d(1, 1, 1)], r"Conv2d Conv2d\(1, 1.*is neither a submodule of model nor of "
                           r"sim.model; pass submodules of the float model"),
    (["features.99"], r"no layer 'features.99' in the sim; close: \['features.9'"),
    (None, r"modules_to_exclude must be a list of modules or layer names, got Conv2d; wrap"),
    ([3], r"modules_to_exclude: expected modules or layer names, got int 3"),
])
def test_error_modules_to_exclude_naming_nothing(digits, exclude, match):
    net = digits["net"]
    exclude = net.features[0] if exclude is None else exclude
    with pytest.raises(ConfigError, match=match):
        _old_shape(net, _sim(net, digits["batches"]), digits["batches"], SeqMseParams(1),
                   modules_to_exclude=exclude)


def test_error_data_loader(digits):
    sim = _sim(digits["net"], digits["batches"])
    with pytest.raises(ConfigError, match=r"data_loader yielded no batch"):
        apply_seq_mse(sim, [])
    with pytest.raises(ConfigError, match=r"num_batches=4 but data_loader yielded only 2 batch"):
        _old_shape(digits["net"], sim, digits["batches"][:2], SeqMseParams(4))
    assert not any(ref.quantizer.is_frozen for ref in sim.quantizers())


def test_error_checkpoints_config(digits, tmp_path):
    net, batches = digits["net"], digits["batches"]
    sim = _sim(net, batches)
    bad = tmp_path / "bad.json"
    cases = [("{not json", r"cannot be read as JSON"),
             (json.dumps({"grouped_modules": {}}),
              r"missing key\(s\) \['include_static_inputs', 'cache_on_cpu'\]"),
             (json.dumps({"grouped_modules": {"0": ["blocks.0"]}, "include_static_inputs": [0],
                          "cache_on_cpu": False}), r"names \['blocks.0'\], which are not modules")]
    for text, match in cases:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            apply_seq_mse(sim, batches, checkpoints_config=str(bad))
    with pytest.raises(ConfigError, match=r"cannot be read as JSON"):
        apply_seq_mse(sim, batches, checkpoints_config=str(tmp_path / "missing.json"))


def test_error_bad_cache_file(digits, tmp_path):
    net, batches = digits["net"], digits["batches"]
    (tmp_path / "running_module_names.txt").write_text("features.0\n")
    enc = QuantEncoding(scale=torch.ones(3), zero_point=0, bitwidth=4, signed=True,
                        symmetric=True, axis=0)
    torch.save({f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)},
               tmp_path / "features.0.pt")
    sim = _sim(net, batches)
    with pytest.raises(ConfigError, match=r"features.0.pt does not hold an encoding for layer "
                                          r"'features.0' \(ConfigError: 3 scales for 16 channels"
                                          r"\); delete it"):
        apply_seq_mse(sim, batches, cache_dir=str(tmp_path))
    os.remove(tmp_path / "features.0.pt")
    (tmp_path / "features.0.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"does not hold an encoding"):
        apply_seq_mse(sim, batches, cache_dir=str(tmp_path))
    assert not any(ref.quantizer.is_frozen for ref in sim.quantizers())

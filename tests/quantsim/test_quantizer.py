"""Quantizer modules: calibration, encodings, range learning, state dicts and float16."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fxquant.core import kernels
from fxquant.core.kernels import quantize_dequantize
from fxquant.errors import ConfigError, FxQuantError
from fxquant.quantsim import quantizer as quantizer_module
from fxquant.quantsim.encoding import MIN_SCALE, CalibrationError, QuantEncoding
from fxquant.quantsim.quant_scheme import QuantScheme
from fxquant.quantsim.quantizer import AffineQuantizer, FloatQuantizer, create_quantizer


def test_quantsim_path_re_exports_the_core_kernels():
    """``fxquant.quantsim.quantizer.quantize...`` (the AIMET-style path) are the core kernels
    themselves, so the sim and the QDQ writer share one arithmetic."""
    for name in ("quantize", "dequantize", "quantize_dequantize"):
        assert getattr(quantizer_module, name) is getattr(kernels, name)
    assert quantizer_module.CalibrationError is CalibrationError


def test_learn_range_quantizer_trains_with_an_optimizer():
    q = AffineQuantizer(8, learn_range=True, name="act")
    x = torch.randn(2048)
    q.set_encoding(QuantEncoding.from_min_max(-0.5, 0.5, 8, symmetric=False))   # clips badly
    assert isinstance(q.scale, nn.Parameter) and isinstance(q.zero_point, nn.Parameter)
    opt = torch.optim.Adam(q.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        opt.zero_grad()
        err = ((q(x) - x) ** 2).mean()
        first = first if first is not None else err.item()
        err.backward()
        opt.step()
    assert err.item() < 0.5 * first
    enc = q.encoding
    assert enc.qmin <= int(enc.zero_point) <= enc.qmax and float(enc.max) > 0.5
    sym = AffineQuantizer(8, symmetric=True, quant_scheme="training_range_learning_with_tf_init",
                          name="w", kind="param")
    assert sym.learn_range
    sym.set_encoding(QuantEncoding.from_min_max(-1.0, 1.0, 8, symmetric=True))
    assert isinstance(sym.scale, nn.Parameter) and not isinstance(sym.zero_point, nn.Parameter)
    sym.freeze_encoding()
    assert not sym.scale.requires_grad
    sym.unfreeze_encoding()
    assert sym.scale.requires_grad


def test_learned_scale_driven_non_positive_is_reported_as_forward_uses_it():
    """An optimizer can push a learned scale to 0 or below; forward() clamps it to MIN_SCALE, and
    the encoding (what export and save write) must be that same value, never the raw one."""
    q = AffineQuantizer(8, learn_range=True, name="fc.output")
    q.set_encoding(QuantEncoding.from_min_max(0.0, 1.0, 8, symmetric=False))
    with torch.no_grad():
        q.scale.fill_(-0.5)
    x = torch.tensor([0.0, 1e-6, 2e-6])
    enc = q.encoding
    assert float(enc.scale) == MIN_SCALE
    assert torch.equal(q(x), quantize_dequantize(x, enc.scale, enc.zero_point, enc.qmin, enc.qmax))


# -------------------------------------------------------------------------------------------------
# Quantizer modules
# -------------------------------------------------------------------------------------------------
def test_forward_before_encoding_raises():
    q = AffineQuantizer(8, name="layer1.0.conv1.output")
    match = r"'layer1\.0\.conv1\.output'.*sim\.compute_encodings"
    with pytest.raises(CalibrationError, match=match) as info:
        q(torch.ones(2))
    assert isinstance(info.value, FxQuantError)
    with pytest.raises(CalibrationError, match="collected no statistics"):
        q.compute_encoding()
    with pytest.raises(CalibrationError, match="no encoding to freeze"):
        q.freeze_encoding()


@pytest.mark.parametrize(("kind", "bitwidth", "valid"), [
    ("param", 1, "2-32"), ("param", 33, "2-32"), ("activation", 3, "4-32"),
    ("activation", 8.0, "4-32"),
])
def test_bad_bitwidth_names_quantizer_and_valid_range(kind, bitwidth, valid):
    with pytest.raises(ConfigError, match=f"'conv1.weight'.*bitwidth {bitwidth!r}.*{valid}"):
        AffineQuantizer(bitwidth, kind=kind, name="conv1.weight")
    AffineQuantizer(2 if kind == "param" else 4, kind=kind)
    q = AffineQuantizer(8, kind=kind, name="conv1.weight")
    with pytest.raises(ConfigError, match=valid):
        q.bitwidth = bitwidth
    with pytest.raises(ConfigError, match="float16"):
        FloatQuantizer(8, name="x")
    with pytest.raises(ConfigError, match="'param' or 'activation'"):
        AffineQuantizer(8, kind="weight")


def test_calibration_enabled_and_freeze(device):
    q = AffineQuantizer(8, name="act").to(device)
    x = torch.linspace(-1, 3, 101, device=device)
    with q.calibration():
        assert torch.equal(q(x), x)          # calibration passes data through unquantized
    enc = q.encoding
    assert enc is not None and enc.device.type == torch.device(device).type
    assert torch.equal(q(x), quantize_dequantize(x, enc.scale, enc.zero_point, 0, 255))
    assert not torch.equal(q(x), x)
    q.enabled = False
    assert q(x) is x
    q.enabled = True
    q.freeze_encoding()
    with q.calibration():
        q(x * 10)
    assert q.encoding == enc                 # frozen: not overwritten
    q.unfreeze_encoding()
    with q.calibration():
        q(x * 10)
    assert float(q.encoding.max) > 20


def test_calibration_without_data_warns(caplog):
    q = AffineQuantizer(8, name="unused")
    with caplog.at_level("WARNING"):
        with q.calibration():
            pass
    assert "'unused' saw no data" in caplog.text and q.encoding is None


def test_set_encoding_and_config_changes():
    q = AffineQuantizer(8, symmetric=True, axis=0, kind="param", name="conv.weight")
    w = torch.randn(4, 3, 3, 3)
    with q.calibration():
        q(w)
    assert q.encoding.axis == 0 and q.encoding.scale.shape == (4,) and q.encoding.signed
    assert torch.equal(q(w), quantize_dequantize(w, q.encoding.scale, 0, -128, 127, axis=0))
    with pytest.raises(ConfigError, match="axis 0, but the encoding has axis None"):
        q.set_encoding(QuantEncoding.from_min_max(-1.0, 1.0, 8, True))
    with pytest.raises(ConfigError, match="expects a QuantEncoding"):
        q.set_encoding((1.0, 0))
    q.bitwidth = 4                          # a different grid invalidates the encoding
    assert q.encoding is None and q.bitwidth == 4
    with q.calibration():
        q(w)
    assert q.encoding.qmin == -8
    q.freeze_encoding()
    with pytest.raises(ConfigError, match="unfreeze_encoding"):
        q.symmetric = False
    q.unfreeze_encoding()
    q.set_encoding(QuantEncoding.from_min_max(-torch.ones(4), torch.ones(4), 6, False, axis=0))
    assert (q.bitwidth, q.symmetric, q.qmin, q.qmax) == (6, False, 0, 63)


def test_conv_transpose_weight_axis_1():
    conv_t = nn.ConvTranspose2d(3, 5, 3)
    q = AffineQuantizer(8, symmetric=True, axis=1, kind="param")
    with q.calibration():
        q(conv_t.weight)
    assert q.encoding.scale.shape == (5,)
    out = q(conv_t.weight)
    ref = quantize_dequantize(conv_t.weight.detach(), q.encoding.scale, torch.zeros(5), -128, 127,
                              axis=1)              # per output channel: dim 1 of ConvTranspose
    assert torch.equal(out.detach(), ref)


def test_unsigned_symmetric():
    q = AffineQuantizer(8, symmetric=True, unsigned_symmetric=True)
    with q.calibration():
        q(torch.rand(100))
    assert not q.encoding.signed and q.qmin == 0
    q = AffineQuantizer(8, symmetric=True, unsigned_symmetric=True)
    with q.calibration():
        q(torch.randn(100))
    assert q.encoding.signed


@pytest.mark.parametrize("learn_range", [False, True])
def test_state_dict_round_trip(learn_range, tmp_path):
    src = AffineQuantizer(8, symmetric=False, axis=0, kind="param", learn_range=learn_range,
                          name="w")
    w = torch.randn(6, 4)
    with src.calibration():
        src(w)
    src.freeze_encoding()
    path = tmp_path / "q.pt"
    torch.save(src.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"scale", "zero_point", "_extra_state"}
    dst = AffineQuantizer(4, symmetric=True, axis=0, kind="param", learn_range=learn_range,
                          name="w")
    dst.load_state_dict(state)
    assert dst.encoding == src.encoding and dst.is_frozen
    assert isinstance(dst.scale, nn.Parameter) == learn_range
    assert torch.equal(dst(w), src(w))
    assert copy.deepcopy(dst).encoding == src.encoding
    empty = AffineQuantizer(8).state_dict()
    assert set(empty) == {"_extra_state"}
    AffineQuantizer(8).load_state_dict(empty)


def test_float16_quantizer(device):
    q = create_quantizer(16, data_type="float", name="x", kind="activation", symmetric=True)
    assert isinstance(q, FloatQuantizer) and q.is_initialized and q.encoding is None
    x = torch.tensor([1.0 + 2 ** -12, 70000.0, 1e-8], device=device)
    assert torch.equal(q.to(device)(x), x.half().float())
    q.enabled = False
    assert q(x) is x
    assert isinstance(create_quantizer(8, name="y"), AffineQuantizer)
    with pytest.raises(ConfigError, match="data_type"):
        create_quantizer(8, data_type="fp8")


def test_quant_scheme_selects_analyzer_and_range_learning():
    q = AffineQuantizer(8, quant_scheme="tf_enhanced")
    assert type(q.encoding_analyzer).__name__ == "TfEnhancedEncodingAnalyzer" and not q.learn_range
    q = AffineQuantizer(8, quant_scheme=QuantScheme.training_range_learning_with_tf_enhanced_init)
    assert type(q.encoding_analyzer).__name__ == "TfEnhancedEncodingAnalyzer" and q.learn_range
    with pytest.raises(ConfigError, match="'tf', 'min_max', 'tf_enhanced', 'percentile', 'mse'"):
        AffineQuantizer(8, quant_scheme="entropy")
    assert "bitwidth=8" in repr(AffineQuantizer(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_forward_and_calibration():
    q = AffineQuantizer(8, quant_scheme="tf_enhanced").cuda()
    x = torch.randn(1000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q.calibrating = True
        q(x)
        q(x * 2)
        q.calibrating = False
    finally:
        torch.cuda.set_sync_debug_mode("default")
    q.compute_encoding()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_state_snapshot_restores_encoding_flags_and_statistics() -> None:
    from fxquant.quantsim.quantizer import AffineQuantizer

    q = AffineQuantizer(8, name="act", quant_scheme="tf_enhanced")
    with q.calibration():
        q(torch.linspace(-1, 1, 101))
    x = torch.linspace(-2, 2, 57)
    out, enc = q(x), q.encoding
    counts = q.encoding_analyzer.histogram()[0]
    snap = q.state_snapshot()
    with q.calibration():                       # new stats and a new (8-bit, wider) encoding
        q(torch.linspace(-5, 5, 11))
    q.bitwidth = 4
    q.enabled = False
    q.restore_snapshot(snap)
    assert q.enabled and q.bitwidth == 8 and torch.equal(q(x), out)
    assert torch.equal(q.encoding.scale, enc.scale) and q.encoding.bitwidth == 8
    assert torch.equal(q.encoding_analyzer.histogram()[0], counts)
    # restoring onto a quantizer whose encoding was dropped brings the buffers back
    q.bitwidth = 6
    assert q.encoding is None
    q.restore_snapshot(snap)
    assert torch.equal(q(x), out) and list(q.state_dict()) == ["scale", "zero_point",
                                                                "_extra_state"]


@pytest.mark.parametrize("scheme", ["tf", "tf_enhanced", "percentile", "mse"])
def test_snapshot_survives_statistics_updated_without_reset(scheme) -> None:
    """Snapshots hold fxquant's analyzer statistics by reference (no copy); that is only right
    because updates never modify them in place. Update the analyzer directly, without the reset
    calibration does first, with NaN/Inf and a wider range: restoring gives the old statistics."""
    from fxquant.quantsim.quantizer import AffineQuantizer

    q = AffineQuantizer(8, name="act", quant_scheme=scheme)
    with q.calibration():
        q(torch.tensor([-1.0, float("nan"), 0.5, 1.0]))
    a = q.encoding_analyzer
    before = ([t.clone() for t in a.observed_min_max()], int(a.num_nonfinite),
              None if scheme == "tf" else [t.clone() for t in a.histogram()])
    snap = q.state_snapshot()
    for batch in (torch.tensor([float("inf"), 0.25, 0.75]), torch.linspace(-3, 4, 100)):
        a.update_stats(batch)
    assert int(a.num_nonfinite) == 2
    q.restore_snapshot(snap)
    a = q.encoding_analyzer
    assert all(torch.equal(x, y) for x, y in zip(a.observed_min_max(), before[0]))
    assert int(a.num_nonfinite) == before[1] == 1
    if before[2] is not None:
        assert all(torch.equal(x, y) for x, y in zip(a.histogram(), before[2]))


def test_snapshot_copies_the_state_of_a_user_analyzer() -> None:
    """A user's analyzer may keep state it changes in place: its state is copied."""
    from fxquant.quantsim.minmax_analyzer import MinMaxEncodingAnalyzer
    from fxquant.quantsim.quantizer import AffineQuantizer

    class Seen(MinMaxEncodingAnalyzer):
        def reset(self) -> None:
            super().reset()
            self.seen: list[float] = []

        def _update(self, x2: torch.Tensor) -> None:
            super()._update(x2)
            self.seen.append(float(x2.sum()))      # in place

    q = AffineQuantizer(8, name="act")
    q.encoding_analyzer = Seen()
    q.encoding_analyzer.update_stats(torch.tensor([1.0, 2.0]))
    snap = q.state_snapshot()
    q.encoding_analyzer.update_stats(torch.tensor([5.0]))
    q.restore_snapshot(snap)
    assert q.encoding_analyzer.seen == [3.0]

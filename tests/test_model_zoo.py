"""Every torchvision classification model: prepare is bit-exact, BN folding keeps numerics."""
from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torch import nn

import fxquant
import fxquant.core.layers
from tests.models import randomize_batch_norms

MODELS = sorted(torchvision.models.list_models(module=torchvision.models))
# Their test alone peaks near 6 GB of resident memory (measured with FXQUANT_MEM_PROBE, see
# tests/conftest.py; every other model's stays below 3.3 GB): marked bigmem, so that make test
# runs them one at a time after its parallel part.
BIGMEM = {"regnet_y_128gf", "vit_h_14"}
_FIXED_224 = ("vit", "swin", "maxvit")
_COPY_CHECK_MAX_PARAMS = 200_000_000


def _input(name: str) -> torch.Tensor:
    size = 224 if name.startswith(_FIXED_224) else (80 if name == "inception_v3" else 64)
    return torch.randn(1, 3, size, size)


def _bns_follow_layers(gm: torch.fx.GraphModule) -> bool:
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
              nn.ConvTranspose3d, nn.Linear)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            src = node.args[0]
            if not (src.op == "call_module" and isinstance(modules[src.target], layers)
                    and len(src.users) == 1):
                return False
    return True


def _assert_prepare_is_idempotent(name: str, prepared: torch.fx.GraphModule) -> None:
    """Preparing a prepared model changes nothing: not through prepare_model (which copies it:
    same code) and not when it is traced again and the pass re-run, as a user's own re-trace goes
    (same modules and layer names; the regenerated code differs only in cosmetic node names)."""
    layers = sorted(fxquant.core.layers.layer_nodes(prepared))
    modules = sorted(n for n, _ in prepared.named_modules())
    routes = {"trace + PrepareModelPass": fxquant.PrepareModelPass()(fxquant.trace(prepared))}
    # prepare_model copies the weights: on the largest models (vit_h_14, regnet_y_128gf: 2.5 GB
    # each) that third copy alone would take the suite's peak memory past its budget; the copy
    # route is the same code for every model, so it is checked on the others.
    if sum(p.numel() for p in prepared.parameters()) < _COPY_CHECK_MAX_PARAMS:
        again = fxquant.prepare_model(prepared)
        assert again.code == prepared.code, f"{name}: prepare_model of a prepared model changed code"
        routes["prepare_model"] = fxquant.PrepareModelPass()(again)
    for how, result in routes.items():
        # (a re-trace starts from fresh node metadata, so only the names get written again)
        assert not result.details["converted"] and not result.details["split"], f"{name}: {how}"
        assert how != "prepare_model" or not result.modified, f"{name}: prepare_model modified it"
        gm = result.graph_module
        assert sorted(n for n, _ in gm.named_modules()) == modules, f"{name}: {how} renamed modules"
        assert sorted(fxquant.core.layers.layer_nodes(gm)) == layers, f"{name}: {how} renamed layers"
    del routes, result, gm
    gc.collect()  # the re-trace shares the prepared model's modules: let folding free them


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.bigmem) if name in BIGMEM
                                  else name for name in MODELS])
def test_prepare_and_fold_torchvision(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        prepared = fxquant.prepare_model(model)
        assert torch.equal(prepared(x), expected), f"{name}: prepare_model changed the output"
        _assert_prepare_is_idempotent(name, prepared)
        all_foldable = _bns_follow_layers(prepared)
        folded = fxquant.fold_all_batch_norms(prepared)
        remaining = [n for n, m in prepared.named_modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if all_foldable:
            assert not remaining, f"{name}: BNs left after folding: {remaining}"
        got = prepared(x)
        # the caller's model is untouched by prepare_model / folding the prepared copy
        assert torch.equal(model(x), expected)
        del prepared, folded
        gc.collect()  # a GraphModule sits in reference cycles: free its weights before the next
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            # Deep nets built with weights=None reach logits of ~50, where float32 itself is
            # ~1e-5 off in absolute terms: then the fold must be no farther from a float64
            # evaluation of the unfolded model than float32 eager is. (The model itself goes to
            # float64 and back, which is exact: a float64 copy would double the peak memory of
            # regnet_y_128gf, 2.6 GB of float32 weights.)
            reference = model.double()(x.double())
            model.float()
            eager_err = (expected.double() - reference).abs().max().item()
            fold_err = (got.double() - reference).abs().max().item()
            assert fold_err <= 2 * eager_err + 1e-5, (
                f"{name}: folded output {fold_err:.3g} from the float64 reference, eager float32 "
                f"{eager_err:.3g}")

        # Fresh BNs (mean 0, var 1, γ 1, β 0) make the fold nearly an identity; check the fold
        # arithmetic with non-trivial statistics too. Float32 summation noise compounds with
        # depth here, so this check is on the relative L2 error of the whole output.
        randomize_batch_norms(model)
        expected = model(x)
        prepared = fxquant.prepare_model(model)
        del model  # only its output is needed from here on (peak memory of the largest models)
        fxquant.fold_all_batch_norms(prepared)
        # (ViT heads are zero-initialized: an all-zero output must stay exactly zero)
        rel_l2 = ((prepared(x) - expected).norm() / expected.norm().clamp_min(1e-30)).item()
        assert rel_l2 < 1e-4, f"{name}: relative L2 error {rel_l2:.2e} after folding"

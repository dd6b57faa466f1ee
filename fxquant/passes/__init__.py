"""Graph passes: each takes a GraphModule (or PassResult) and returns a PassResult."""
from __future__ import annotations

from fxquant.passes.base import Pass, PassResult, Sequential, pass_history, state_tags
from fxquant.passes.equalize import EqualizeLayersPass
from fxquant.passes.fold_batchnorm import FoldBatchNormPass
from fxquant.passes.insert_loggers import InsertLoggersPass
from fxquant.passes.insert_quantizers import InsertQuantizersPass
from fxquant.passes.insert_shadows import InsertShadowsPass
from fxquant.passes.prepare import PrepareModelPass
from fxquant.passes.remove_quantizers import RemoveQuantizersPass

__all__ = ["EqualizeLayersPass", "FoldBatchNormPass", "InsertLoggersPass", "InsertQuantizersPass", "InsertShadowsPass",
           "Pass", "PassResult", "PrepareModelPass", "RemoveQuantizersPass", "Sequential",
           "pass_history", "state_tags"]

"""torch.distributed calibration (fxquant/distributed.py): two gloo processes spawned on the CPU,
each calibrating on its own shard, against one process calibrated on the union."""
from __future__ import annotations

import datetime
import json
import os
import re
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

import fxquant
from fxquant.distributed import is_distributed, reduce_statistics
from fxquant.core.encoding import quant_range
from fxquant.errors import CalibrationError
from fxquant.quantsim.encoding_analyzer import get_encoding_analyzer
from fxquant.quantsim.histogram_costs import _candidate_costs
from fxquant.quantsim.quantsim import QuantizationSimModel

SCHEMES = ["tf", "tf_enhanced", "percentile", "mse"]
WORLD = 2


def _shard(rank: int) -> list[torch.Tensor]:
    """Rank r's calibration batches: different data (and ranges) on each rank."""
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(2, 3, 64, 64, generator=g) * (1 + 0.2 * rank) + 0.1 * rank
            for _ in range(2)]


def _sims() -> dict[str, QuantizationSimModel]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return {scheme: QuantizationSimModel(model, torch.randn(1, 3, 64, 64), quant_scheme=scheme)
            for scheme in SCHEMES}


def _calibrate(batches: list[torch.Tensor]):
    def run(model):
        for x in batches:
            model(x)
    return run


def _encodings(sim: QuantizationSimModel) -> dict[str, object]:
    return {ref.name: ref.quantizer.encoding for ref in sim.quantizers()}


def _hist_mse(analyzer, encoding) -> torch.Tensor:
    """Per channel: the quantization MSE of ``encoding`` over ``analyzer``'s histogram."""
    centres = analyzer._centres()[0]
    qmin, qmax = quant_range(encoding.bitwidth, encoding.signed, encoding.symmetric,
                             encoding.strict)
    return _candidate_costs(centres, analyzer._counts, encoding.scale.reshape(-1, 1).float(),
                            encoding.zero_point.reshape(-1, 1).float(), qmin, qmax).squeeze(1)


def assert_close_to_one_process(scheme: str, analyzer, got, expected, what: object) -> None:
    """How close a merged encoding must be to the one-process one (``analyzer`` holds the
    one-process statistics). Min-max: equal. Percentile: within one bin. TF-enhanced and MSE pick
    the cheapest of candidates 5 (MSE) to 32 (TF-enhanced) bins apart, so a slightly different
    histogram can pick a neighbour: their quantization MSE over the one-process histogram must
    be within 10% of the one-process encoding's (over 20 seeds of the merge test: at most 8.8%
    for TF-enhanced per channel, 1.2% for MSE)."""
    if scheme == "tf":
        assert got == expected, what
    elif scheme == "percentile":
        edges = analyzer.histogram()[1]
        width = (edges[:, 1] - edges[:, 0]).reshape(expected.min.shape) * 1.0001
        assert ((got.min - expected.min).abs() <= width).all(), (what, got, expected)
        assert ((got.max - expected.max).abs() <= width).all(), (what, got, expected)
    else:
        ratio = _hist_mse(analyzer, got) / _hist_mse(analyzer, expected).clamp_min(1e-30)
        assert (ratio <= 1.10).all(), (what, ratio.max())


def _init(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))


def _calibrate_worker(rank: int, store: str, out: str) -> None:
    _init(rank, store)
    try:
        result = {}
        for scheme, sim in _sims().items():
            sim.compute_encodings(_calibrate(_shard(rank)))
            result[scheme] = _encodings(sim)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _failing_worker(rank: int, store: str, out: str, mode: str) -> None:
    _init(rank, store)
    sim = _sims()["tf"]

    def calibrate(model):
        model(_shard(rank)[0])
        if rank == 1:
            if mode == "raise":
                raise ValueError("bad batch on rank 1")
            os._exit(3)                     # killed: no exception, no goodbye

    start = time.monotonic()
    try:
        sim.compute_encodings(calibrate, timeout=datetime.timedelta(seconds=20))
        message = "no error"
    except Exception as exc:                # noqa: BLE001 - the test reads what was raised
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    Path(f"{out}.{rank}").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)     # skip the process group's teardown, which would wait for the dead peer


def _qat_worker(rank: int, store: str, out: str) -> None:
    """Range-learning QAT under DistributedDataParallel: calibrate on this rank's shard (reduced),
    then two SGD steps on this rank's own batches."""
    _init(rank, store)
    try:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).train()
        sim = QuantizationSimModel(model.eval(), torch.randn(1, 3, 32, 32),
                                   quant_scheme="training_range_learning_with_tf_init")
        shard = [x[:, :, :32, :32] for x in _shard(rank)]
        sim.compute_encodings(_calibrate(shard))
        calibrated = _encodings(sim)
        ddp = torch.nn.parallel.DistributedDataParallel(sim.model.train())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(rank)
        for _ in range(2):
            x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        trained = _encodings(sim)
        torch.save({"calibrated": calibrated, "trained": trained,
                    "weights": {k: v.detach().clone() for k, v in sim.model.state_dict().items()
                                if isinstance(v, torch.Tensor)}},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _analyzer(process_group=None):
    from fxquant import CallbackFunc, QuantAnalyzer
    from tests.analysis.fragile import calibrate, evaluate, fragile_net

    return QuantAnalyzer(fragile_net(), torch.zeros(1, 1, 8, 8), CallbackFunc(calibrate, 2),
                         CallbackFunc(evaluate, None), process_group=process_group)


def _analyzer_worker(rank: int, store: str, out: str, fail: bool) -> None:
    _init(rank, store)
    qa = _analyzer()
    if fail and rank == 1:
        qa._eval_callback = _raise_on_second_call()
    try:
        results = qa.analyze(quant_scheme="tf", results_dir=f"{out}.dir{rank}")
        Path(f"{out}.{rank}").write_text(f"ok {results.evaluations}")
    except Exception as exc:                # noqa: BLE001 - the test reads what was raised
        Path(f"{out}.{rank}").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


def _single_analysis_worker(results_dir: str) -> None:
    torch.set_num_threads(1)
    results = _analyzer().analyze(quant_scheme="tf", results_dir=results_dir)
    Path(f"{results_dir}.evaluations").write_text(str(results.evaluations))


class _raise_on_second_call:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model):
        from tests.analysis.fragile import evaluate

        self.calls += 1
        if self.calls == 6:                 # inside the per-layer sweep
            raise ValueError("evaluation data missing on rank 1")
        return evaluate(model)


def _mismatch_worker(rank: int, store: str, out: str, mismatch: str) -> None:
    """Each rank reduces analyzers that do not match the other rank's."""
    _init(rank, store)
    if mismatch == "count":
        analyzers = [get_encoding_analyzer("tf") for _ in range(1 + rank)]
    elif mismatch == "kind":
        analyzers = [get_encoding_analyzer("tf_enhanced" if rank == 0 else "percentile")]
    else:   # channels
        analyzers = [get_encoding_analyzer("tf", axis=0)]
    for a in analyzers:
        a.update_stats(torch.randn(2 + rank if mismatch == "channels" else 2, 10))
    try:
        reduce_statistics(analyzers, timeout=datetime.timedelta(seconds=20))
        message = "no error"
    except Exception as exc:                # noqa: BLE001 - the test reads what was raised
        message = f"{type(exc).__name__}: {exc}"
    Path(f"{out}.{rank}").write_text(message)
    dist.destroy_process_group()


def _spawn(fn, tmp_path: Path, *args) -> str:
    """Runs ``fn(rank, store, out, *args)`` in WORLD spawned processes and waits for all of them
    (torch's own ``spawn`` would terminate the others as soon as one exits non-zero)."""
    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(rank, store, out, *args)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        if p.is_alive():
            p.kill()
    return out


@pytest.mark.slow
def test_two_ranks_reduce_to_the_union_of_their_shards(tmp_path):
    """resnet18, two gloo ranks with different shards: min-max encodings equal those of one process
    calibrated on the union bit for bit; TF-enhanced, percentile and MSE within one histogram bin
    of it; both ranks identical."""
    out = _spawn(_calibrate_worker, tmp_path)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]   # our own files
    union = [x for r in range(WORLD) for x in _shard(r)]
    for scheme, sim in _sims().items():
        sim.compute_encodings(_calibrate(union))
        for ref in sim.quantizers():
            got, other = ranks[0][scheme][ref.name], ranks[1][scheme][ref.name]
            assert got == other, (scheme, ref.name)          # identical on both ranks
            if ref.kind == "param":                           # from the weights: exact
                assert got == ref.quantizer.encoding, (scheme, ref.name)
            else:
                assert_close_to_one_process(scheme, ref.quantizer.encoding_analyzer, got,
                                            ref.quantizer.encoding, (scheme, ref.name))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "killed"])
def test_a_failing_rank_makes_every_rank_raise(tmp_path, mode):
    """Rank 1's callback raises (or rank 1 dies): every surviving rank raises CalibrationError
    naming what happened, well within the timeout, instead of waiting in a collective."""
    out = _spawn(_failing_worker, tmp_path, mode)
    rank0 = Path(f"{out}.0").read_text()
    seconds, message = rank0.split("\n", 1)
    assert float(seconds) < 30, rank0
    assert message.startswith("CalibrationError"), rank0
    if mode == "raise":
        assert "rank(s) 1 failed during calibration" in message, rank0
        rank1 = Path(f"{out}.1").read_text().split("\n", 1)[1]
        assert rank1.startswith("CalibrationError") and "bad batch on rank 1" in rank1, rank1
    else:
        assert "did not join" in message or "failed during calibration" in message, rank0


@pytest.mark.slow
def test_range_learning_qat_under_ddp_keeps_every_rank_identical(tmp_path):
    """Learned scales and offsets are parameters: DDP averages their gradients like the weights',
    so after calibration on different shards (reduced) and two steps on different batches every
    rank holds the same encodings and weights, and the steps did move the ranges."""
    out = _spawn(_qat_worker, tmp_path)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]
    for stage in ("calibrated", "trained"):
        for name, enc in ranks[0][stage].items():
            assert enc == ranks[1][stage][name], (stage, name)
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    moved = [n for n, e in ranks[0]["trained"].items()
             if not torch.equal(e.scale, ranks[0]["calibrated"][n].scale)]
    assert len(moved) > 10, moved


@pytest.mark.slow
def test_sharded_analysis_equals_one_process(tmp_path):
    """Two ranks share the per-layer sweeps and the what-ifs (same evaluation data): the
    per-layer JSON files rank 0 writes equal a one-process analysis's; rank 1 writes nothing and
    each rank ran about half of the evaluations."""
    out = _spawn(_analyzer_worker, tmp_path, False)
    # one process under the ranks' conditions (a fresh process, one thread: the digits net is
    # trained there, and float sums depend on the thread count)
    single_dir = tmp_path / "single"
    proc = mp.get_context("spawn").Process(target=_single_analysis_worker,
                                           args=(str(single_dir),))
    proc.start()
    proc.join(timeout=180)
    single_evaluations = int((tmp_path / "single.evaluations").read_text())
    shared = [Path(f"{out}.{r}").read_text() for r in range(WORLD)]
    assert all(text.startswith("ok ") for text in shared), shared
    for name in ("per_layer_quant_enabled.json", "per_layer_quant_disabled.json"):
        assert (Path(f"{out}.dir0") / name).read_text() == (single_dir / name).read_text(), name
    summary = json.loads((Path(f"{out}.dir0") / "summary.json").read_text())
    expected = json.loads((single_dir / "summary.json").read_text())
    for key in ("scores", "verdict", "culprits", "suggestions", "best_suggestion"):
        assert summary[key] == expected[key], key
    assert not Path(f"{out}.dir1").exists()
    evaluations = [int(text.split()[1]) for text in shared]
    assert sum(evaluations) < single_evaluations + 2 * 4 + 1      # sensitivity runs on both
    assert max(evaluations) < single_evaluations


@pytest.mark.slow
def test_a_failing_rank_fails_the_sharded_analysis_everywhere(tmp_path):
    out = _spawn(_analyzer_worker, tmp_path, True)
    rank0, rank1 = (Path(f"{out}.{r}").read_text() for r in range(WORLD))
    assert rank0.startswith("AnalysisError") and "rank(s) 1 failed" in rank0, rank0
    assert "evaluation data missing on rank 1" in rank1, rank1
    assert not Path(f"{out}.dir0").exists() and not Path(f"{out}.dir1").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mismatch, message", [
    ("count", r"ConfigError: the ranks have between 1 and 2 analyzers to reduce \(rank \d: \d\)"),
    ("kind", r"ConfigError: unnamed \w+EncodingAnalyzer: the ranks' analyzers differ \(channels "
             r"1 vs 1, kind/bins code"),
    ("channels", r"ConfigError: unnamed MinMaxEncodingAnalyzer: the ranks' analyzers differ "
                 r"\(channels 2 vs 3"),
])
def test_ranks_with_different_analyzers_are_refused(tmp_path, mismatch, message):
    """Ranks that would exchange buffers of different sizes (or merge different statistics)
    raise ConfigError on every rank instead of corrupting or hanging."""
    out = _spawn(_mismatch_worker, tmp_path, mismatch)
    for rank in range(WORLD):
        assert re.match(message, Path(f"{out}.{rank}").read_text()), (
            rank, Path(f"{out}.{rank}").read_text())


def test_single_process_is_not_distributed():
    assert not is_distributed()


def test_process_group_must_be_a_process_group():
    sim = _sims()["tf"]
    with pytest.raises(fxquant.ConfigError, match="process_group must be a torch.distributed "
                                                  "ProcessGroup .* got str"):
        sim.compute_encodings(_calibrate(_shard(0)), process_group="world")


# -------------------------------------------------------------------------------------------------
# The reduction's arithmetic in one process: EncodingAnalyzer.merge
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("axis", [None, 0])
def test_merge_equals_the_union_within_one_bin(scheme, axis):
    # similar ranges: one process's histogram is limited to 3x its first batch's range, which a
    # wider shard later would exceed (the merged one covers it: a different, not worse, answer)
    g = torch.Generator().manual_seed(3)
    shards = [[torch.randn(4, 400, generator=g) * (1 + 0.2 * i) + 0.1 * i for _ in range(3)]
              for i in range(3)]
    union = get_encoding_analyzer(scheme, axis=axis)
    for shard in shards:
        for x in shard:
            union.update_stats(x)
    merged = get_encoding_analyzer(scheme, axis=axis)
    for shard in shards:
        part = get_encoding_analyzer(scheme, axis=axis)
        for x in shard:
            part.update_stats(x)
        merged.merge(part)
    for a, b in zip(merged.observed_min_max(), union.observed_min_max()):
        assert torch.equal(a, b)
    assert int(merged.state()["num_values"]) == int(union.state()["num_values"]) == 14400
    assert torch.allclose(merged.state().get("counts", torch.zeros(1)).sum(),
                          union.state().get("counts", torch.zeros(1)).sum())
    for symmetric in (False, True):
        assert_close_to_one_process(scheme, union, merged.compute_encoding(8, symmetric),
                                    union.compute_encoding(8, symmetric), (scheme, symmetric))


def test_merge_rejects_other_analyzers():
    a = get_encoding_analyzer("tf_enhanced")
    a.update_stats(torch.randn(10))
    b = get_encoding_analyzer("percentile")
    b.update_stats(torch.randn(10))
    with pytest.raises(fxquant.ConfigError, match="cannot merge the statistics of "
                                                  "unnamed PercentileEncodingAnalyzer"):
        a.merge(b)
    c = get_encoding_analyzer("tf_enhanced", axis=0)
    c.update_stats(torch.randn(3, 10))
    with pytest.raises(fxquant.ConfigError, match="channels, bins must match"):
        a.merge(c)


def test_merge_with_empty_analyzers():
    a, empty = get_encoding_analyzer("tf_enhanced"), get_encoding_analyzer("tf_enhanced")
    a.update_stats(torch.tensor([0.0, 1.0, 2.0]))
    before = a.compute_encoding(8, False)
    a.merge(empty)
    assert a.compute_encoding(8, False) == before
    empty.merge(a)
    assert empty.compute_encoding(8, False) == before
    with pytest.raises(CalibrationError, match="no statistics"):
        get_encoding_analyzer("tf").state()


def test_reduce_statistics_outside_a_process_group_says_so():
    with pytest.raises((RuntimeError, ValueError), match="init_process_group|not been initialized"):
        reduce_statistics([get_encoding_analyzer("tf")])

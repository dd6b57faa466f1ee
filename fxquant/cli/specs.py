"""What the command line takes as MODEL and DATA, turned into a model and batches.

MODEL: ``torchvision:NAME`` (``weights=None``: nothing is downloaded), ``package.module:factory``
or ``path/to/file.py:factory`` (the factory is called with no arguments, after
``torch.manual_seed(0)`` so that random initial weights are the same from one command to the
next), with ``--weights FILE`` (a state dict, loaded with ``weights_only=True``). DATA: a folder
of images (resized and center-cropped to ``--image-size``, ImageNet-normalized), an ``.npy`` /
``.pt`` tensor file, or ``random:SHAPE`` (``random:4x3x64x64``, seeded) for smoke runs. Labeled
data (``--eval``): a folder of class subfolders (classes in sorted order) or an ``.npz`` with
``x`` and ``y``.

Every problem is a :class:`SpecError` whose message names the argument, what was given and what
is accepted (the CLI prints it on one line and exits with status 2).

Example:
    >>> model = load_model("torchvision:resnet18")
    >>> batches = load_batches("random:8x3x64x64", batch_size=4)
    >>> [tuple(b.shape) for b in batches]
    [(4, 3, 64, 64), (4, 3, 64, 64)]
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxquant.errors import FxQuantError

__all__ = ["SpecError", "add_model_arguments", "load_model", "parse_shape", "load_batches", "load_labeled",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_MODEL_FORMS = ("torchvision:NAME, package.module:factory or path/to/file.py:factory")
_DATA_FORMS = "a folder of images, an .npy or .pt tensor file, or random:SHAPE (random:4x3x64x64)"
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class SpecError(FxQuantError, ValueError):
    """A MODEL or DATA argument that cannot be used (the message says why and what works)."""


def add_model_arguments(parser: Any, *, onnx: bool = False) -> None:
    """Adds the MODEL positional argument (``onnx``: or a ``.onnx`` file) and ``--weights``."""
    forms = _MODEL_FORMS + (", or a .onnx file" if onnx else "")
    parser.add_argument("model", metavar="MODEL|ONNX" if onnx else "MODEL", help=forms)
    parser.add_argument("--weights", help="state dict to load into MODEL (torch.load "
                                          "weights_only=True)")


def parse_shape(text: str, what: str = "--input-shape") -> tuple[int, ...]:
    """``"1x3x224x224"`` → ``(1, 3, 224, 224)``.

    Raises:
        SpecError: not positive integers joined by ``x``.
    """
    parts = text.lower().replace("*", "x").split("x")
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SpecError(f"{what}: expected positive integers joined by 'x' (1x3x224x224), got "
                        f"{text!r}")
    return tuple(int(p) for p in parts)


def _factory_from_module(module: Any, name: str, where: str) -> Any:
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpecError(f"MODEL: {where} has no callable {name!r}{hint}")
    return factory


def load_model(spec: str, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """The model MODEL names, in eval mode, with ``weights`` loaded when given.

    Raises:
        SpecError: unknown form, unknown torchvision model (did-you-mean), missing file, module or
            factory, a factory that does not return an ``nn.Module``, unreadable or mismatching
            weights.

    Example:
        >>> load_model("torchvision:mobilenet_v2").training
        False
    """
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise SpecError(f"MODEL: expected {_MODEL_FORMS}, got {spec!r}")
    # random initial weights are seeded: separate commands on one MODEL see the same model
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            raise SpecError(f"MODEL: torchvision has no model {name!r}"
                            + (f"; did you mean {', '.join(close)}?" if close else ""))
        model = torchvision.models.get_model(name, weights=None)
    elif source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"MODEL: file {source} not found (expected {_MODEL_FORMS})")
        mod_name = "_fxquant_cli_model_" + re.sub(r"\W", "_", path.stem)
        loader = importlib.util.spec_from_file_location(mod_name, path)
        if loader is None or loader.loader is None:
            raise SpecError(f"MODEL: {source} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise SpecError(f"MODEL: importing {source} failed: {type(exc).__name__}: "
                            f"{exc}") from exc
        model = _call(_factory_from_module(module, name, source), spec)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise SpecError(f"MODEL: cannot import module {source!r} ({exc}); expected "
                            f"{_MODEL_FORMS}") from exc
        model = _call(_factory_from_module(module, name, f"module {source!r}"), spec)
    if weights is not None:
        _load_weights(model, weights)
    return model.eval()


def _call(factory: Any, spec: str) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:
        raise SpecError(f"MODEL: {spec}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise SpecError(f"MODEL: {spec}() returned {type(model).__qualname__}, expected a "
                        "torch.nn.Module")
    return model


def _load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    shown = os.fspath(path)
    if not os.path.isfile(shown):
        raise SpecError(f"--weights: file {shown} not found")
    try:
        state = torch.load(shown, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpecError(f"--weights: {shown} is not a state dict torch.load can read with "
                        f"weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(f"--weights: {shown} holds a {type(state).__name__}, expected a state dict "
                        "(parameter name -> tensor), e.g. torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SpecError(f"--weights: {shown} does not fit the model: "
                        f"{' '.join(str(exc).split())[:400]}") from exc


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, size: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception as exc:
        raise SpecError(f"DATA: cannot read image {path}: {exc}") from exc
    image = F.center_crop(F.resize(image, [size], antialias=True), [size, size])
    return (image.float() / 255.0 - _MEAN) / _STD


def _tensor_file(path: Path, what: str) -> torch.Tensor:
    try:
        if path.suffix == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpecError(f"{what}: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    numeric = isinstance(data, torch.Tensor) and (data.is_floating_point() or data.dtype in (
        torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))
    if not numeric:
        raise SpecError(f"{what}: {path} must hold one numeric tensor, got "
                        f"{type(data).__name__}")
    return data.float()


def load_batches(spec: str, *, batch_size: int = 16, image_size: int = 224) -> list[torch.Tensor]:
    """DATA as a list of input batches (first dimension split into ``batch_size``).

    Raises:
        SpecError: a missing path, an unknown form, an empty folder, an unreadable file.

    Example:
        >>> len(load_batches("random:10x3x32x32", batch_size=4))
        3
    """
    if spec.startswith("random:"):
        shape = parse_shape(spec[len("random:"):], "DATA random:SHAPE")
        data = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    else:
        path = Path(spec)
        if not path.exists():
            raise SpecError(f"DATA: {spec} not found (expected {_DATA_FORMS})")
        if path.is_dir():
            files = _images(path)
            if not files:
                raise SpecError(f"DATA: folder {spec} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            data = torch.stack([_read_image(f, image_size) for f in files])
        elif path.suffix in (".npy", ".pt", ".pth"):
            data = _tensor_file(path, "DATA")
        else:
            raise SpecError(f"DATA: expected {_DATA_FORMS}, got the file {spec}")
    return list(torch.split(data, batch_size))


def load_labeled(spec: str, *, image_size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of labeled evaluation data: a folder of class subfolders, or an ``.npz`` with
    ``x`` and ``y``.

    Raises:
        SpecError: a missing path, no class folders or images, an ``.npz`` without ``x``/``y`` or
            with lengths that differ.
    """
    path = Path(spec)
    if not path.exists():
        raise SpecError(f"--eval: {spec} not found (expected a folder of class subfolders or an "
                        ".npz with x and y)")
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise SpecError(f"--eval: {spec} has no class subfolders (expected "
                            f"{spec}/<class>/<image>)")
        xs, ys = [], []
        for label, folder in enumerate(classes):
            for f in _images(folder):
                xs.append(_read_image(f, image_size))
                ys.append(label)
        if not xs:
            raise SpecError(f"--eval: the class folders of {spec} hold no image")
        return torch.stack(xs), torch.tensor(ys)
    if path.suffix != ".npz":
        raise SpecError(f"--eval: expected a folder of class subfolders or an .npz with x and y, "
                        f"got {spec}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise SpecError(f"--eval: {spec} must hold arrays 'x' and 'y', it holds "
                                f"{sorted(data.files)}")
            x, y = torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"--eval: cannot read {spec}: {type(exc).__name__}: {exc}") from exc
    if len(x) != len(y):
        raise SpecError(f"--eval: {spec} has {len(x)} inputs but {len(y)} labels")
    return x, y

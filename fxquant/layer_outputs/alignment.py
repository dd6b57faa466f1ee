"""Bringing a tensor of dump B into dump A's layout (NHWC → NCHW, flat → shaped, permutations).

When both dumps record their layouts, B is permuted into A's. Otherwise, when the shapes differ
only by an axis permutation, or B is a flat raw file of the same size (a dump without shapes),
every fitting candidate is returned and the caller keeps the one that agrees best.

Example:
    >>> alignment_candidates((1, 8, 4, 4), info_b, "NCHW")   # info_b: NHWC (1, 4, 4, 8)
    [((0, 3, 1, 2), 'NHWC->NCHW')]
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from fxquant.layer_outputs.dump_format import default_layout

__all__ = ["Alignment", "alignment_candidates", "align", "MAX_PERMUTATION_RANK"]

#: Above this rank, permutations are not searched (rank! candidates).
MAX_PERMUTATION_RANK = 6

#: How to bring B into A's layout: ``(axes to transpose B by | "channels_last" | None, label)``;
#: ``(None, None)`` is "as stored".
Alignment = tuple[Any, str | None]


def _layout_perm(src: str | None, dst: str | None) -> tuple[int, ...] | None:
    if not src or not dst or sorted(src) != sorted(dst) or src == dst:
        return None
    return tuple(src.index(c) for c in dst)


def alignment_candidates(shape_a: tuple[int, ...], info_b: Any, layout_a: str | None
                         ) -> list[Alignment]:
    """The ways to bring B (its ``TensorInfo``: ``shape``, ``layout``) into A's shape, best
    guess first; empty when the shapes differ by more than a permutation.

    Example:
        >>> alignment_candidates((2, 3), info_b, None)   # info_b.shape == (3, 2)
        [((1, 0), '(1, 0)')]
    """
    shape_b = info_b.shape
    layout_b = info_b.layout
    if shape_b is None:  # flat: A's shape, or A's shape channels-last then moved back
        last = default_layout(len(shape_a), channels_last=True) if len(shape_a) >= 3 else None
        first = layout_a or default_layout(len(shape_a))
        as_stored: Alignment = (None, "reshape")
        moved: Alignment = ("channels_last", f"{last}->{first}")
        if layout_b is not None and layout_b == last and last != first:
            return [moved]
        if layout_b is not None or last is None or last == first:
            return [as_stored]
        return [as_stored, moved]
    perm = _layout_perm(layout_b, layout_a)
    if perm is not None and len(perm) != len(shape_b):  # a layout given for another rank
        perm = None
    if perm is not None and tuple(shape_b[i] for i in perm) == tuple(shape_a):
        return [(perm, f"{layout_b}->{layout_a}")]
    if tuple(shape_b) == tuple(shape_a):
        return [(None, None)]
    if sorted(shape_b) != sorted(shape_a) or len(shape_a) > MAX_PERMUTATION_RANK:
        return []
    fits = [p for p in itertools.permutations(range(len(shape_b)))
            if tuple(shape_b[i] for i in p) == tuple(shape_a)]
    channels_first = tuple([0, len(shape_a) - 1, *range(1, len(shape_a) - 1)])
    fits.sort(key=lambda p: (p != channels_first, p))
    return [(p, str(p)) for p in fits]


def align(b: np.ndarray, shape_a: tuple[int, ...], how: Any) -> np.ndarray:
    """``b`` in A's layout, ``how`` being the first element of an :data:`Alignment`.

    Example:
        >>> align(np.zeros((1, 4, 4, 8)), (1, 8, 4, 4), (0, 3, 1, 2)).shape
        (1, 8, 4, 4)
    """
    if how is None:
        return b.reshape(shape_a) if b.shape != shape_a else b
    if how == "channels_last":
        last = (shape_a[0], *shape_a[2:], shape_a[1])
        return np.moveaxis(b.reshape(last), -1, 1)
    return np.transpose(b, how)

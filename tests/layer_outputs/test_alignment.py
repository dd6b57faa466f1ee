"""fxquant/layer_outputs/alignment.py: the ways to bring a tensor of dump B into dump A's layout
(recorded layouts, axis permutations, flat raw files) and applying one."""
from __future__ import annotations

import numpy as np
import pytest

from fxquant.layer_outputs.alignment import MAX_PERMUTATION_RANK, align, alignment_candidates
from fxquant.layer_outputs.dump_reader import TensorInfo


def info(shape: tuple[int, ...] | None, layout: str | None = None) -> TensorInfo:
    return TensorInfo("t", "t.raw", shape, "float32", None, layout)


def nchw(shape: tuple[int, ...] = (1, 8, 4, 4)) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


# ------------------------------------------------------------------------------------------------
# Both layouts known
# ------------------------------------------------------------------------------------------------


def test_recorded_layouts_give_one_permutation() -> None:
    assert alignment_candidates((1, 8, 4, 4), info((1, 4, 4, 8), "NHWC"), "NCHW") == [
        ((0, 3, 1, 2), "NHWC->NCHW")]
    assert alignment_candidates((1, 4, 4, 8), info((1, 8, 4, 4), "NCHW"), "NHWC") == [
        ((0, 2, 3, 1), "NCHW->NHWC")]
    assert alignment_candidates((2, 5, 7), info((2, 7, 5), "NWC"), "NCW") == [
        ((0, 2, 1), "NWC->NCW")]


def test_recorded_layouts_win_even_when_every_dimension_is_equal() -> None:
    """(1, 4, 4, 4) in both: only the layouts say that B must be permuted."""
    assert alignment_candidates((1, 4, 4, 4), info((1, 4, 4, 4), "NHWC"), "NCHW") == [
        ((0, 3, 1, 2), "NHWC->NCHW")]
    assert alignment_candidates((1, 4, 4, 4), info((1, 4, 4, 4), "NCHW"), "NCHW") == [
        (None, None)]


def test_layouts_that_do_not_fit_the_shapes_fall_back_to_the_shapes() -> None:
    # B claims NHWC but is stored (1, 4, 8, 4): the layout permutation gives (1, 4, 4, 8) ≠ A
    assert alignment_candidates((1, 8, 4, 4), info((1, 4, 8, 4), "NHWC"), "NCHW") == [
        ((0, 2, 1, 3), "(0, 2, 1, 3)"), ((0, 2, 3, 1), "(0, 2, 3, 1)")]
    # letters of different ranks: no layout permutation, the shapes decide
    assert alignment_candidates((1, 8, 4), info((1, 4, 8), "NCHW"), "NCW") == [
        ((0, 2, 1), "(0, 2, 1)")]
    # a shape that is really NCHW although labelled NHWC
    assert alignment_candidates((1, 8, 4, 4), info((1, 8, 4, 4), "NHWC"), "NCHW") == [
        (None, None)]


# ------------------------------------------------------------------------------------------------
# Shapes only
# ------------------------------------------------------------------------------------------------


def test_equal_shapes_are_taken_as_stored() -> None:
    assert alignment_candidates((1, 8, 4, 4), info((1, 8, 4, 4)), None) == [(None, None)]
    assert alignment_candidates((), info(()), None) == [(None, None)]


def test_unique_permutation() -> None:
    assert alignment_candidates((2, 3), info((3, 2)), None) == [((1, 0), "(1, 0)")]
    assert alignment_candidates((2, 3, 5), info((5, 2, 3)), None) == [((1, 2, 0), "(1, 2, 0)")]


def test_ambiguous_shapes_list_channels_last_to_first_first() -> None:
    """(1, 4, 4, 8) → (1, 8, 4, 4) fits NHWC→NCHW and NWHC→NCHW; the channels-last guess leads
    although another fit sorts before it."""
    assert alignment_candidates((1, 8, 4, 4), info((1, 4, 4, 8)), None) == [
        ((0, 3, 1, 2), "(0, 3, 1, 2)"), ((0, 3, 2, 1), "(0, 3, 2, 1)")]
    assert alignment_candidates((1, 4, 5, 4), info((1, 5, 4, 4)), None) == [
        ((0, 3, 1, 2), "(0, 3, 1, 2)"), ((0, 2, 1, 3), "(0, 2, 1, 3)")]
    three = alignment_candidates((2, 2, 3), info((3, 2, 2)), None)
    assert three == [((1, 2, 0), "(1, 2, 0)"), ((2, 1, 0), "(2, 1, 0)")]


def test_every_candidate_really_gives_a_shape() -> None:
    a = (3, 2, 3, 2)
    b = np.zeros((2, 3, 2, 3))
    candidates = alignment_candidates(a, info(b.shape), None)
    assert len(candidates) == 4  # (1|3, 0|2, 1|3, 0|2) with distinct axes
    assert len(set(candidates)) == 4
    for how, _ in candidates:
        assert align(b, a, how).shape == a


@pytest.mark.parametrize("shape_a, shape_b", [
    ((2, 3), (2, 4)),               # different sizes
    ((2, 3), (6,)),                 # same size, different rank
    ((1, 8, 4, 4), (1, 2, 4, 16)),  # same size, not a permutation
])
def test_no_candidate_when_the_shapes_differ_by_more_than_a_permutation(
        shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> None:
    assert alignment_candidates(shape_a, info(shape_b), None) == []


def test_no_candidate_with_layouts_that_fit_neither() -> None:
    assert alignment_candidates((1, 8, 4, 4), info((1, 2, 4, 16), "NHWC"), "NCHW") == []


def test_permutations_are_not_searched_above_max_rank() -> None:
    assert MAX_PERMUTATION_RANK == 6
    six = tuple(range(2, 8))
    assert alignment_candidates(six, info(six[::-1]), None) == [
        ((5, 4, 3, 2, 1, 0), "(5, 4, 3, 2, 1, 0)")]
    seven = tuple(range(2, 9))
    assert alignment_candidates(seven, info(seven[::-1]), None) == []
    assert alignment_candidates(seven, info(seven), None) == [(None, None)]  # no search needed


# ------------------------------------------------------------------------------------------------
# Flat B (a raw file without shape)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_a, layout_a, layout_b, expected", [
    # unknown layout of B: as stored, or channels-last moved back, for 3- to 5-D A
    ((1, 8, 4, 4), None, None, [(None, "reshape"), ("channels_last", "NHWC->NCHW")]),
    ((1, 8, 4, 4), "NCHW", None, [(None, "reshape"), ("channels_last", "NHWC->NCHW")]),
    ((1, 8, 5), None, None, [(None, "reshape"), ("channels_last", "NLC->NCL")]),
    ((1, 2, 3, 4, 5), None, None, [(None, "reshape"), ("channels_last", "NDHWC->NCDHW")]),
    # B's layout known
    ((1, 8, 4, 4), "NCHW", "NHWC", [("channels_last", "NHWC->NCHW")]),
    ((1, 8, 4, 4), None, "NCHW", [(None, "reshape")]),
    # A itself channels last: B stored like A
    ((1, 4, 4, 8), "NHWC", None, [(None, "reshape")]),
    # below rank 3 there is no channels-last form
    ((2, 5), None, None, [(None, "reshape")]),
    ((7,), None, "NHWC", [(None, "reshape")]),
])
def test_flat_candidates(shape_a: tuple[int, ...], layout_a: str | None, layout_b: str | None,
                         expected: list) -> None:
    assert alignment_candidates(shape_a, info(None, layout_b), layout_a) == expected


# ------------------------------------------------------------------------------------------------
# align
# ------------------------------------------------------------------------------------------------


def test_align_permutation_undoes_nhwc() -> None:
    a = nchw()
    b = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    ((how, _),) = alignment_candidates(a.shape, info(b.shape, "NHWC"), "NCHW")
    np.testing.assert_array_equal(align(b, a.shape, how), a)


def test_align_channels_last_on_a_flat_file() -> None:
    a = nchw((2, 3, 4, 5))
    flat = a.transpose(0, 2, 3, 1).reshape(-1)  # what a channels-last target writes as .raw
    out = align(flat, a.shape, "channels_last")
    np.testing.assert_array_equal(out, a)
    assert not np.array_equal(align(flat, a.shape, None), a)  # read as stored it is scrambled
    np.testing.assert_array_equal(align(nchw((1, 3, 5)).transpose(0, 2, 1).reshape(-1),
                                        (1, 3, 5), "channels_last"), nchw((1, 3, 5)))


def test_align_as_stored_reshapes_only_when_needed() -> None:
    a = nchw((2, 3))
    assert align(a, (2, 3), None) is a
    np.testing.assert_array_equal(align(a.reshape(-1), (2, 3), None), a)


def test_align_does_not_pad_or_truncate() -> None:
    """Sizes are the caller's check (compare reports shape_mismatch); align refuses to guess."""
    with pytest.raises(ValueError, match="cannot reshape array of size 5"):
        align(np.zeros(5), (2, 3), None)
    with pytest.raises(ValueError, match="cannot reshape array of size 5"):
        align(np.zeros(5), (1, 2, 3), "channels_last")
    with pytest.raises(ValueError, match="axes don't match array"):
        align(np.zeros((2, 3)), (3, 2, 1), (2, 1, 0))


def test_forced_layouts_of_another_rank_fall_back_to_the_shapes() -> None:
    # --layout-a NCHW --layout-b NHWC on a dump that also holds 2-D (fc) outputs
    info = TensorInfo("fc", "fc.raw", (4, 2), "float32", None, "NHWC")
    assert alignment_candidates((2, 4), info, "NCHW") == [((1, 0), "(1, 0)")]
    same = TensorInfo("fc", "fc.raw", (2, 4), "float32", None, "NHWC")
    assert alignment_candidates((2, 4), same, "NCHW") == [(None, None)]

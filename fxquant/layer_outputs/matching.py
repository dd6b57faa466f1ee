"""Which tensor of dump B is which tensor of dump A: by name, else by file stem.

Example:
    >>> pairs, only_a, only_b = match_tensor_names(LayerOutputDump("a"), LayerOutputDump("b"))
    >>> pairs[0]
    ('conv', 'conv')
"""
from __future__ import annotations

import os

from fxquant.layer_outputs.dump_reader import LayerOutputDump

__all__ = ["match_tensor_names"]


def match_tensor_names(a: LayerOutputDump, b: LayerOutputDump
                       ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """``(pairs (name in A, name in B) in A's order, names only in A, names only in B)``.

    When both dumps have a manifest (or neither has), equal names match. A dump without a
    manifest knows file stems only, so against one with a manifest the tensors are matched on the
    file stems the writer chose (``module_split#0`` ↔ ``module_split_0``; two names with the same
    sanitized stem, ``a.b`` and ``a_b``, were written as ``a_b`` and ``a_b__1``).

    Example:
        >>> match_tensor_names(dump_with_manifest, aimet_dump)[0][:1]
        [('module_split#0', 'module_split_0')]
    """
    key_a = _keys(a, stems=a.has_manifest != b.has_manifest)
    key_b = _keys(b, stems=a.has_manifest != b.has_manifest)
    by_key_b: dict[str, str] = {}
    for name in b.names:
        by_key_b.setdefault(key_b[name], name)
    pairs = []
    matched_b: set[str] = set()
    for name in a.names:
        other = by_key_b.get(key_a[name])
        if other is not None and other not in matched_b:
            pairs.append((name, other))
            matched_b.add(other)
    matched_a = {n for n, _ in pairs}
    return (pairs, [n for n in a.names if n not in matched_a],
            [n for n in b.names if n not in matched_b])


def _keys(dump: LayerOutputDump, stems: bool) -> dict[str, str]:
    """``{name: what it is matched on}``: the name, or the stem of the file it was written to."""
    if not stems or not dump.has_manifest:
        return {n: n for n in dump.names}  # without a manifest the names are the file stems
    return {n: os.path.splitext(dump.info(n).file)[0] for n in dump.names}

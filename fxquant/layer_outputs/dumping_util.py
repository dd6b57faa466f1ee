"""What the torch and ONNX Runtime ``LayerOutputUtil`` share (:class:`DumpingUtil`): a
:class:`~fxquant.layer_outputs.dump_writer.DumpWriter` fed one instance at a time, batch
generation with a progress bar, closing and the context manager.

Example:
    >>> with fxquant.LayerOutputUtil(sim, "dumps/sim") as util:
    ...     util.generate_layer_outputs_batch(images)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

from fxquant.layer_outputs.dump_writer import DumpWriter, HostInstance

__all__ = ["DumpingUtil"]


class DumpingUtil:
    """What the torch and ONNX Runtime ``LayerOutputUtil`` share: a :class:`DumpWriter` fed by
    ``_instance(input_instance)``, batch generation, closing and the context manager.

    Example:
        >>> with LayerOutputUtil(sim, "dumps/sim") as util:
        ...     util.generate_layer_outputs_batch(images)
    """

    _writer: DumpWriter
    #: Progress-bar label of :meth:`generate_layer_outputs_batch`.
    _progress_label = "layer outputs"

    def _instance(self, input_instance: Any) -> HostInstance:
        raise NotImplementedError

    @property
    def dir_path(self) -> str:
        """The dump directory."""
        return self._writer.dir_path

    def generate_layer_outputs_batch(self, input_instances: Iterable[Any], *,
                                     progress: bool = True) -> int:
        """Runs and writes many input instances; writing overlaps the next run.

        Args:
            input_instances: an iterable of input instances (each as for
                ``generate_layer_outputs``), e.g. a ``DataLoader`` of single images.
            progress: show a progress bar.

        Returns:
            The number of instances written.

        Example:
            >>> util.generate_layer_outputs_batch(torch.randn(32, 1, 3, 224, 224))
            32
        """
        return self._writer.submit_all(input_instances, self._instance,
                                       desc=self._progress_label, progress=progress)

    def close(self) -> None:
        """Finishes pending writes and stops the writer thread (also done at exit)."""
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""Quantization schemes and data types, spelled as in AIMET so users can switch by changing an
import.

Example:
    >>> from fxquant.quantsim.quant_scheme import QuantScheme
    >>> QuantScheme.parse("tf_enhanced")
    <QuantScheme.post_training_tf_enhanced: 'post_training_tf_enhanced'>
    >>> QuantScheme.parse("min_max").calibration
    'tf'
"""
from __future__ import annotations

import enum

from fxquant.errors import ConfigError

__all__ = ["QuantScheme", "QuantizationDataType"]

# Short spellings accepted by ``QuantScheme.parse`` (AIMET accepts "tf", "tf_enhanced" and
# "percentile"; we add the rest).
_SCHEME_ALIASES = {
    "tf": "post_training_tf",
    "min_max": "post_training_tf",
    "minmax": "post_training_tf",
    "tf_enhanced": "post_training_tf_enhanced",
    "percentile": "post_training_percentile",
    "mse": "post_training_mse",
}

# The calibration (encoding analyzer) behind each scheme; range-learning schemes are initialised
# with it.
_CALIBRATION = {
    "post_training_tf": "tf",
    "post_training_tf_enhanced": "tf_enhanced",
    "post_training_percentile": "percentile",
    "post_training_mse": "mse",
    "training_range_learning_with_tf_init": "tf",
    "training_range_learning_with_tf_enhanced_init": "tf_enhanced",
    "training_range_learning": "tf",
}


class QuantScheme(enum.Enum):
    """How encodings are computed (and whether they are trained afterwards).

    The values are the member names, so ``QuantScheme("post_training_tf")`` works as well.
    ``post_training_mse`` is fxquant's own addition; the others are AIMET's names.
    ``training_range_learning`` is AIMET's name for the scheme of its learned-grid quantizers
    (``aimet_common.defs.QuantScheme.training_range_learning``); AIMET lists no initialisation for
    it, and fxquant initialises it with min-max ("tf") calibration, exactly as
    ``training_range_learning_with_tf_init``.
    """

    post_training_tf = "post_training_tf"
    post_training_tf_enhanced = "post_training_tf_enhanced"
    post_training_percentile = "post_training_percentile"
    training_range_learning_with_tf_init = "training_range_learning_with_tf_init"
    training_range_learning_with_tf_enhanced_init = "training_range_learning_with_tf_enhanced_init"
    post_training_mse = "post_training_mse"
    training_range_learning = "training_range_learning"

    @classmethod
    def parse(cls, value: QuantScheme | str) -> QuantScheme:
        """Return the scheme for an enum member or a string.

        Accepted strings: the member names and the short forms "tf", "min_max", "tf_enhanced",
        "percentile", "mse" (case-insensitive).

        Args:
            value: a ``QuantScheme`` or one of the strings above.

        Returns:
            The matching ``QuantScheme``.

        Raises:
            ConfigError: ``value`` names no scheme; the message lists the valid values.

        Example:
            >>> QuantScheme.parse("percentile") is QuantScheme.post_training_percentile
            True
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            if key.startswith("quantscheme."):
                key = key[len("quantscheme."):]
            key = _SCHEME_ALIASES.get(key, key)
            try:
                return cls(key)
            except ValueError:
                pass
        raise ConfigError(
            f"quant_scheme {value!r} is not a known quantization scheme; valid values are "
            f"{', '.join(repr(v) for v in cls.valid_names())}")

    @classmethod
    def valid_names(cls) -> list[str]:
        """All strings ``parse`` accepts (short forms first)."""
        return [k for k in _SCHEME_ALIASES if k != "minmax"] + [m.value for m in cls]

    @property
    def calibration(self) -> str:
        """The encoding analyzer behind this scheme: "tf", "tf_enhanced", "percentile" or "mse"."""
        return _CALIBRATION[self.value]

    @property
    def learns_range(self) -> bool:
        """True for the range-learning schemes (scale and offset become trainable parameters)."""
        return self.value.startswith("training_range_learning")


class QuantizationDataType(enum.Enum):
    """The simulated data type: integer (affine grid) or float (a float16 cast round trip)."""

    undefined = 0
    int = 1
    float = 2

    @classmethod
    def parse(cls, value: QuantizationDataType | str) -> QuantizationDataType:
        """Return the data type for an enum member or the strings "int" / "float".

        Raises:
            ConfigError: anything else; the message lists the valid values.

        Example:
            >>> QuantizationDataType.parse("float")
            <QuantizationDataType.float: 2>
        """
        if isinstance(value, cls) and value is not cls.undefined:
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            if key.startswith("quantizationdatatype."):
                key = key[len("quantizationdatatype."):]
            if key in ("int", "float"):
                return cls[key]
        raise ConfigError(f"data_type {value!r} is not valid; valid values are 'int' and 'float' "
                          f"(or QuantizationDataType.int / QuantizationDataType.float)")

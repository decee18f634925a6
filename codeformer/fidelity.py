"""The fidelity weight ``w``: what it may be, once for every model, front end and file format.

CodeFormer's ``w`` trades quality (0) for fidelity to the input (1). A model either takes it (with
a default when none is given), runs at one weight it was trained for (colorization, inpainting), or
has none (GFPGAN, GPEN ...). :func:`fidelity_weight_for` is the whole rule; every restorer
(torch, spandrel, ONNX) and :class:`codeformer.options.RestoreOptions` use it.
"""

from __future__ import annotations

import math
from numbers import Real

from codeformer.errors import OptionError

__all__ = ["DEFAULT_FIDELITY_WEIGHT", "NoFidelityControlError", "check_fidelity_weight", "fidelity_weight_for"]

# The weight when none is given: the reference scripts' default (-w 0.5).
DEFAULT_FIDELITY_WEIGHT = 0.5


class NoFidelityControlError(OptionError):
    """A fidelity weight was given to a model that has none."""

    def __init__(self, model: str, value: float) -> None:
        self.model = model
        super().__init__("fidelity_weight", value, f"{model} has no fidelity control; leave the weight out")


def check_fidelity_weight(value: float | None) -> float | None:
    """None (the model's default), or a finite number from 0 to 1 (as a float)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise OptionError("fidelity_weight", value, "must be a number from 0 (quality) to 1 (fidelity)")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise OptionError("fidelity_weight", value, "is outside [0, 1]; pick a value from 0 (quality) to 1 (fidelity)")
    return float(value)


def fidelity_weight_for(model: str, value: float | None, *, default: float | None,
                        fixed: float | None = None) -> float | None:
    """The weight ``model`` runs with when asked for ``value``.

    ``fixed``: the model runs at this weight only (``value`` must be None or equal to it);
    ``default``: the weight for None; both None: the model has no fidelity control (``value`` must
    be None, and None is returned).
    """
    value = check_fidelity_weight(value)
    if fixed is not None:
        if value is not None and value != fixed:
            raise NoFidelityControlError(model, value)
        return fixed
    if default is None:
        if value is not None:
            raise NoFidelityControlError(model, value)
        return None
    return default if value is None else value

"""Choosing the torch device from a command-line style name.

torch is imported when a device is resolved, not with this module: the command line's flags (and
``--help``) list the choices without paying for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codeformer.errors import OptionError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)  # absent on some builds
    return backend is not None and backend.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda`` (or ``cuda:<index>``) or ``mps``.

    A ``torch.device`` is returned as it is. Asking for a GPU PyTorch cannot see raises
    :class:`CodeFormerError` instead of failing later.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    kind, _, index = name.strip().lower().partition(":")
    if kind == "auto" and not index:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise OptionError("device", name, "PyTorch sees no CUDA GPU; use cpu or install a CUDA build of PyTorch")
        if index and int(index) >= torch.cuda.device_count():
            raise OptionError("device", name, f"PyTorch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0")
        return torch.device(name.strip().lower())
    if kind == "mps" and not index:
        if not _mps_available():
            raise OptionError("device", name, "PyTorch sees no Apple GPU (MPS); use cpu")
        return torch.device("mps")
    raise OptionError("device", name, f"unknown device; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:<index>)")

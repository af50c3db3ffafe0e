"""CPU/CUDA selection shared by the normative engine, XGBoost and the fusion network.

Nothing heavy is imported at module import; torch/cupy are probed on first use.
"""
from __future__ import annotations

import functools
import os
from typing import Literal

from normfuse.errors import MissingDependencyError

__all__ = ["Device", "cuda_available", "resolve_device", "xgboost_device"]

Device = Literal["auto", "cpu", "cuda"]


@functools.cache
def cuda_available() -> bool:
    """True when torch sees a CUDA device (``NORMFUSE_DISABLE_CUDA=1`` forces False)."""
    if os.environ.get("NORMFUSE_DISABLE_CUDA") == "1":
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` to a concrete device string.

    ``"auto"`` picks CUDA when present, else CPU. Asking for CUDA where none is
    visible raises a clear error instead of silently running on the CPU.
    """
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if not cuda_available():
            raise MissingDependencyError(
                f"device={device!r} was requested but no CUDA device is visible to torch. "
                "Use device='cpu' or device='auto' (CUDA when present, CPU otherwise)."
            )
        return device
    raise ValueError(f"Got device={device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def xgboost_device(device: str = "auto") -> str:
    """The ``device`` parameter for XGBoost >= 2 (``"cuda"`` or ``"cpu"``)."""
    d = resolve_device(device)
    return "cuda" if d.startswith("cuda") else "cpu"

"""Which torch device to run on, by the name a user gives (``--device``, ``train.device``)."""

from __future__ import annotations

import torch

from lm.config import ConfigError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` if available, else ``mps``, else ``cpu``; ``auto``/None picks. A device named
    explicitly must exist here: asking for ``cuda`` on a CPU-only PyTorch, a GPU index that is
    not there, or a misspelt name is a ``ConfigError`` that says what to do, not a traceback
    from the first tensor moved."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {str(device)!r} is not a device name (auto, cpu, cuda, cuda:N or mps)") from None
    if chosen.type == "cuda":
        if torch.version.cuda is None:
            raise ConfigError(f"device {str(device)!r}: this PyTorch ({torch.__version__}) is built without CUDA; "
                              "install a CUDA build (README, Install) or use cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device {str(device)!r}: no CUDA GPU is visible (check the driver and "
                              "CUDA_VISIBLE_DEVICES) or use cpu")
        if chosen.index is not None and chosen.index >= count:
            raise ConfigError(f"device {str(device)!r}: there are only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif chosen.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                       and torch.backends.mps.is_available()):
        raise ConfigError(f"device {str(device)!r}: MPS is not available here (it needs Apple silicon); use cpu")
    return chosen

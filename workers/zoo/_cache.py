"""Where trained zoo weights are cached, written atomically so parallel workers never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import platformdirs
import torch
from torch import nn


def cache_dir() -> Path:
    """``$HWSEARCH_CACHE_DIR`` or the user cache dir (e.g. ~/.cache/hwsearch)."""
    root = os.environ.get("HWSEARCH_CACHE_DIR") or platformdirs.user_cache_dir("hwsearch")
    path = Path(root) / "zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_state(key: str, model: nn.Module, train: Callable[[nn.Module], None]) -> nn.Module:
    """Load ``model``'s weights from the cache file ``key``, or train it and save them.

    Training is deterministic (the caller seeds it), so two processes racing here produce the
    same file; the write goes to a temporary file renamed into place, which is atomic.
    """
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, EOFError, OSError, ValueError):
            path.unlink(missing_ok=True)  # a corrupt or stale cache entry: retrain
    train(model)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()

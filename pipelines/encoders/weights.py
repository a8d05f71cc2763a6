"""Load model weights safely from a local path or any fsspec URL: safetensors, or torch's
weights-only unpickler (never arbitrary pickle)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import torch

CACHE_DIR = Path(os.environ.get("VMEM_CACHE", Path.home() / ".cache" / "visual-memory"))


def localize(url: str) -> str:
    """A local file path for ``url``: the path itself when local, else an atomic cached copy."""
    fs, path = fsspec.core.url_to_fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {url}")
        return path
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = CACHE_DIR / "weights" / f"{digest}-{Path(path).name}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            with fs.open(path, "rb") as remote:
                shutil.copyfileobj(remote, tmp)
        os.replace(tmp.name, target)  # atomic: a half-copied file never has the final name
    return str(target)


def load_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Tensors by name from ``.safetensors`` or a torch checkpoint (``weights_only=True``).

    Common wrappers (``state_dict``, ``model``) and DDP ``module.`` prefixes are unwrapped.
    """
    path = localize(url)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{url} does not hold a state dict (found {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state

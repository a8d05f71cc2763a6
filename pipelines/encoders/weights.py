"""Load model weights safely from a local path or any fsspec URL: safetensors, or torch's
weights-only unpickler (never arbitrary pickle)."""
from __future__ import annotations

import torch

from pipelines.storage import localize


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

"""The adapter state: the trainable tensors only, in one canonical key order.

Keys are the peft parameter names of the tensors that train (with FFA-LoRA: every
``...lora_B.default.weight`` and the head ``...classifier.modules_to_save.default.{weight,bias}``),
sorted in *natural* order: names compared piecewise, with digit runs compared as numbers, so
``layer.2`` comes before ``layer.10``. Values are float32 NumPy arrays on the CPU. This order is
what the wire format and secure aggregation flatten.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads only where tensors are touched (SecAgg-only processes skip it)
    import torch

AdapterState = "OrderedDict[str, np.ndarray]"
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(name))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The peft model inside an Opacus GradSampleModule, or the model itself."""
    return getattr(model, "_module", model)


def adapter_keys(model: torch.nn.Module) -> list[str]:
    names = [n for n, p in unwrap(model).named_parameters() if p.requires_grad]
    return sorted(names, key=natural_key)


def get_adapter_state(model: torch.nn.Module) -> "OrderedDict[str, np.ndarray]":
    import torch

    params = dict(unwrap(model).named_parameters())
    return OrderedDict(
        (k, params[k].detach().to("cpu", torch.float32).numpy().copy()) for k in adapter_keys(model)
    )


def set_adapter_state(model: torch.nn.Module, state: "dict[str, np.ndarray]") -> None:
    import torch

    """Load ``state`` into the trainable tensors; keys and shapes must match exactly."""
    params = dict(unwrap(model).named_parameters())
    expected = adapter_keys(model)
    if list(state) != expected:
        missing = sorted(set(expected) - set(state), key=natural_key)[:3]
        extra = sorted(set(state) - set(expected), key=natural_key)[:3]
        raise ValueError(
            f"adapter state does not match this model (missing {missing}, unexpected {extra}, "
            "or keys out of canonical order)"
        )
    with torch.no_grad():
        for key in expected:
            value = np.asarray(state[key])
            target = params[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"adapter tensor {key} has shape {value.shape}, model expects {tuple(target.shape)}")
            target.copy_(torch.as_tensor(value, dtype=target.dtype, device=target.device))


def adapter_size(state: "dict[str, np.ndarray]") -> int:
    return int(sum(v.size for v in state.values()))


def flatten(state: "dict[str, np.ndarray]") -> np.ndarray:
    """All tensors in key order as one float32 vector."""
    if not state:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in state.values()])


def unflatten(vector: np.ndarray, template: "dict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
    """Inverse of ``flatten`` with the keys and shapes of ``template``."""
    if vector.size != adapter_size(template):
        raise ValueError(f"vector has {vector.size} values, the adapter {adapter_size(template)}")
    out, offset = OrderedDict(), 0
    for key, value in template.items():
        out[key] = np.asarray(vector[offset : offset + value.size], dtype=np.float32).reshape(value.shape)
        offset += value.size
    return out

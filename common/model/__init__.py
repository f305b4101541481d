"""Model building: backbone resolution, LoRA via peft, the adapter state."""

from .adapter import flatten, get_adapter_state, set_adapter_state, unflatten
from .backbone import Backbone, resolve_backbone
from .lora import LoraSettings, build_model, load_tokenizer, resolve_device

__all__ = [
    "Backbone",
    "LoraSettings",
    "build_model",
    "flatten",
    "get_adapter_state",
    "load_tokenizer",
    "resolve_backbone",
    "resolve_device",
    "set_adapter_state",
    "unflatten",
]

"""The model every shop trains: a frozen BERT, LoRA on attention, and the interest scorer.

The scorer (``common.model.scorer``) ranks the taxonomy's classes from the user's own history,
the platform priors and the head's semantic term; the head itself is the frozen label-embedding
head, kept in the peft export with the scorer (``modules_to_save``).

FFA-LoRA (the default) freezes the LoRA ``A`` matrices at a seeded random initialisation shared
by every shop and trains only ``B`` and the head: DP noise enters linearly and averaging ``B``
across shops is exact. Plain LoRA (``ffa=False``) trains ``A`` too.

The model is moved to its device *before* peft wraps it (Opacus issue #820: wrapping first and
moving afterwards silently corrupts LoRA updates under DP).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when a model is built (settings stay importable without it)
    import torch

from ..config import ConfigError
from .backbone import Backbone

HEAD_MODULES = ("classifier", "scorer")


@dataclass(frozen=True)
class LoraSettings:
    """peft-style configuration, kept apart from behaviour."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("query", "value")
    ffa: bool = True
    dropout: float = 0.0
    seed: int = 0
    layers: tuple[int, ...] | None = None  # encoder layers with adapters (None: all); negative = from the top

    def __post_init__(self) -> None:
        if self.layers is not None and not self.layers:
            raise ConfigError("LoRA layers must name at least one layer (or be None for all)")
        if self.rank < 1:
            raise ConfigError("LoRA rank must be >= 1")
        if not self.targets:
            raise ConfigError("LoRA needs at least one target module")
        if not 0 <= self.dropout < 1:
            raise ConfigError("LoRA dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSettings":
        layers = d.get("layers")
        return cls(**{**d, "targets": tuple(d.get("targets", cls.targets)),
                      "layers": tuple(layers) if layers is not None else None})

    def layer_indices(self, n_layers: int) -> list[int] | None:
        """Absolute layer indices for a backbone with ``n_layers`` layers (None: all)."""
        if self.layers is None:
            return None
        out = sorted({i % n_layers if -n_layers <= i < n_layers else -1 for i in self.layers})
        if out and out[0] < 0:
            raise ConfigError(f"LoRA layers {list(self.layers)} do not exist in a {n_layers}-layer backbone")
        return out


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``"top2"`` or ``"-2,-1"`` -> ``(-2, -1)``; ``"0,1"`` -> ``(0, 1)``; empty -> None (every layer)."""
    text = str(text).strip().lower()
    if not text or text == "all":
        return None
    if text.startswith("top") and text[3:].isdigit() and int(text[3:]) > 0:
        return tuple(range(-int(text[3:]), 0))
    try:
        return tuple(int(x) for x in text.replace(";", ",").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"LoRA layers must be comma-separated integers, got {text!r}") from None


def resolve_device(device: str | None = "auto") -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(backbone: Backbone):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone.source)
    except (OSError, ValueError) as exc:
        raise _unavailable(backbone, exc) from None
    tokenizer.truncation_side = "left"  # keep the most recent events
    return tokenizer


def load_base_model(backbone: Backbone, n_classes: int, device: torch.device, seed: int = 0):
    """The backbone with a freshly initialised (seeded) classification head, on ``device``."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(backbone.source, num_labels=n_classes)
    except (OSError, ValueError) as exc:
        raise _unavailable(backbone, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if model.config.model_type != "bert":
        raise ConfigError(f"backbone {backbone.spec} is a {model.config.model_type} model; fedinterest needs a BERT")
    from .scorer import InterestScorer

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.classifier
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * model.config.initializer_range)
        head.bias.zero_()
    model.scorer = InterestScorer(n_classes)
    return model.to(device)


def build_model(backbone: Backbone, n_classes: int, settings: LoraSettings, device: torch.device | str = "cpu"):
    """A peft ``PeftModelForSequenceClassification`` with LoRA on ``settings.targets``."""
    from peft import LoraConfig, get_peft_model

    device = resolve_device(str(device))
    base = load_base_model(backbone, n_classes, device, settings.seed)  # on device before peft
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.targets),
        lora_dropout=settings.dropout,
        bias="none",
        modules_to_save=list(HEAD_MODULES),
        layers_to_transform=settings.layer_indices(base.config.num_hidden_layers),
        layers_pattern="layer" if settings.layers is not None else None,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            model = get_peft_model(base, config)
    except ValueError as exc:
        raise ConfigError(f"LoRA targets {list(settings.targets)} do not fit backbone {backbone.spec}: {exc}") from None
    _seed_lora_a(model, settings.seed)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(not settings.ffa)
        if ".classifier." in name:
            param.requires_grad_(False)  # the label-embedding head is fixed: the scorer weighs it
    return model


def _seed_lora_a(model: torch.nn.Module, seed: int) -> None:
    """Give every ``A`` the same values on every machine and device (kaiming-uniform, like peft)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in name:
                bound = 1.0 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5)) on a Linear
                values = (torch.rand(param.shape, generator=generator) * 2 - 1) * bound
                param.copy_(values.to(param.device, param.dtype))


def _unavailable(backbone: Backbone, exc: Exception) -> ConfigError:
    if backbone.kind == "hub":
        return ConfigError(
            f"backbone '{backbone.spec}' is not a local directory and the Hugging Face hub could not "
            f"provide it ({type(exc).__name__}); offline machines need --backbone minilm, tiny or a "
            "checkpoint directory"
        )
    return ConfigError(f"backbone {backbone.spec} at {backbone.source} cannot be loaded: {exc}")

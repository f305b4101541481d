"""Training above a frozen prefix: when LoRA sits only on the top encoder layers, the layers below
are frozen and adapter-free, so their output for an example never changes. It is computed once
(``prefix_hidden_states``) and training runs only the adapted suffix (``AdaptedSuffix``): the same
function of the same parameters, several times cheaper per step.

The suffix shares its modules (and so its parameters) with the peft model: training it trains
the peft model's adapter, whose state stays the one to export and exchange.

The head reads only the ``[CLS]`` position of the last layer, so that layer computes keys and
values for every token but the query, attention output and feed-forward block for ``[CLS]``
alone (``cls_only_layer``): the same output, and most of the top layer's cost saved.

The encodings are kept in bfloat16, so where bfloat16 matrix products run natively (GPUs, CPUs
with AVX512-BF16 or AMX) the frozen layers also compute in it (``native_bf16``): about twice as
fast on such a CPU, for a rounding the stored encodings had already.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

_LAYER = re.compile(r"\.layer\.(\d+)\.")
#: A directory to keep frozen-prefix encodings in, shared by processes (e.g. the points of a sweep).
CACHE_ENV = "FEDINTEREST_PREFIX_CACHE"


#: CPU features (``/proc/cpuinfo`` flags) with native bfloat16 matrix products.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively, so faster than float32, on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(BF16_CPU_FLAGS & _cpu_flags())


def _computes_in_bf16(dtype: torch.dtype, device: torch.device) -> bool:
    """Encodings kept in bfloat16 are computed in it where that is native."""
    return dtype == torch.bfloat16 and native_bf16(device)


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no claim
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split())


def adapted_layers_start(model: nn.Module) -> int:
    """Index of the lowest encoder layer holding a LoRA adapter (0: adapters start at the bottom)."""
    layers = [int(m.group(1)) for name, _ in model.named_parameters() if "lora_" in name
              for m in [_LAYER.search(name)] if m]
    return min(layers) if layers else 0


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def sequence_classifier(model: nn.Module) -> nn.Module:
    """The ``BertForSequenceClassification`` inside a peft model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "bert"):
        raise TypeError("frozen-prefix training needs a BERT sequence classifier")
    return inner


class AdaptedSuffix(nn.Module):
    """Encoder layers ``start..`` + pooler + dropout + head, fed with cached hidden states (and the scorer)."""

    def __init__(self, model: nn.Module, start: int):
        super().__init__()
        inner = sequence_classifier(model)
        self.config = inner.config
        self.layers = nn.ModuleList(list(inner.bert.encoder.layer)[start:])
        self.pooler = inner.bert.pooler
        self.dropout = inner.dropout
        self.classifier = inner.classifier
        self.scorer = inner.scorer  # called by ``client.training.logits_of``; a submodule for Opacus' hooks

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        *below, top = self.layers
        if below:
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states,
                                             attention_mask=attention_mask)
            for layer in below:
                hidden_states = layer(hidden_states, mask)
        cls = cls_only_layer(top, hidden_states, attention_mask)
        return self.classifier(self.dropout(self.pooler(cls)))


def cls_only_layer(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A ``BertLayer``'s output at position 0 only, shape ``(batch, 1, hidden)``.

    Keys and values come from every (unpadded) token; the query, attention output and
    feed-forward block run for ``[CLS]`` alone. Dropout modules are the layer's own.
    """
    attention = layer.attention.self
    batch, width, _ = hidden_states.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size
    cls = hidden_states[:, :1]
    query = attention.query(cls).view(batch, 1, heads, size).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, width, heads, size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, width, heads, size).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(2, 3)) * attention.scaling
    padding = (attention_mask[:, None, None, :width] == 0)
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    probs = attention.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, 1, heads * size)
    attended = layer.attention.output(context, cls)
    return layer.output(layer.intermediate(attended), attended)


def prefix_key(model: nn.Module, input_ids: np.ndarray, lengths: np.ndarray, start: int, dtype: torch.dtype) -> str:
    """What a prefix encoding depends on: the frozen weights below ``start``, the tokens, the dtypes."""
    inner = sequence_classifier(model)
    compute = "bf16" if _computes_in_bf16(dtype, next(model.parameters()).device) else "fp32"
    h = hashlib.sha256(f"{start}/{dtype}/{compute}/{input_ids.shape}".encode())
    for module in [inner.bert.embeddings, *list(inner.bert.encoder.layer)[:start]]:
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    h.update(np.ascontiguousarray(input_ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
    return h.hexdigest()


def prefix_hidden_states(model: nn.Module, input_ids: np.ndarray, lengths: np.ndarray, start: int,
                         batch_size: int = 64, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The input of encoder layer ``start`` for every example (frozen layers, eval mode), on CPU.

    With ``FEDINTEREST_PREFIX_CACHE`` set, encodings are kept there (keyed by ``prefix_key``,
    written atomically) and any process that needs the same ones reads them back.
    """
    directory = os.environ.get(CACHE_ENV)
    if not directory or start == 0:
        return _prefix_hidden_states(model, input_ids, lengths, start, batch_size, dtype)
    path = Path(directory) / f"{prefix_key(model, input_ids, lengths, start, dtype)}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable entry is recomputed and replaced
            pass
    hidden = _prefix_hidden_states(model, input_ids, lengths, start, batch_size, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(hidden, tmp)
    os.replace(tmp, path)
    return hidden


@torch.no_grad()
def _prefix_hidden_states(model: nn.Module, input_ids: np.ndarray, lengths: np.ndarray, start: int,
                          batch_size: int, dtype: torch.dtype) -> torch.Tensor:
    from transformers.masking_utils import create_bidirectional_mask

    inner = sequence_classifier(model)
    device = next(model.parameters()).device
    n, width = input_ids.shape
    out = torch.zeros((n, width, inner.config.hidden_size), dtype=dtype)
    bf16 = _computes_in_bf16(dtype, device)
    with eval_mode(model), (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()):
        for lo in range(0, n, batch_size):
            ids = torch.as_tensor(input_ids[lo : lo + batch_size], device=device)
            lens = torch.as_tensor(lengths[lo : lo + batch_size], device=device)
            mask = (torch.arange(width, device=device)[None, :] < lens[:, None]).long()
            hidden = inner.bert.embeddings(input_ids=ids)
            mask4 = create_bidirectional_mask(config=inner.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in list(inner.bert.encoder.layer)[:start]:
                hidden = layer(hidden, mask4)
            out[lo : lo + len(ids)] = hidden.to("cpu", dtype)
    return out

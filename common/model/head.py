"""Label-embedding initialisation of the classification head.

Instead of a random head, each class's weight row starts as the backbone's own pooled
representation of a one-line history about that class (``now {name} for 1 day``), centred over
the classes and scaled to ``scale``. The untrained model then scores a history by how much it
reads like each category, a persistence-and-similarity prior that DP-SGD only has to correct,
which matters when noise limits how far a few rounds of training can move the head.

It uses only the taxonomy's names (public, shared by every shop) and the frozen backbone, so
every party computes the same head; the federation server builds it into the initial adapter.
"""

from __future__ import annotations

import torch

from .prefix import eval_mode, sequence_classifier

#: The text whose representation stands for a class (the summary the renderer appends).
CLASS_TEXT = "now {name} for 1 day"


@torch.no_grad()
def class_representations(model: torch.nn.Module, tokenizer, class_names: list[str] | tuple[str, ...]) -> torch.Tensor:
    """The pooled representation (what the head reads) of ``CLASS_TEXT`` for every class, in order."""
    inner = sequence_classifier(model)
    device = next(model.parameters()).device
    encoded = tokenizer([CLASS_TEXT.format(name=n) for n in class_names], padding=True, return_tensors="pt")
    with eval_mode(model):
        output = inner.bert(input_ids=encoded["input_ids"].to(device),
                            attention_mask=encoded["attention_mask"].to(device))
    pooled = output.pooler_output if output.pooler_output is not None else output.last_hidden_state[:, 0]
    return pooled.float().cpu()


def label_embedding_head(representations: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Head weights: the class representations centred over classes, each row of norm ``scale``."""
    centred = representations - representations.mean(dim=0, keepdim=True)
    return scale * centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-6)


def init_head_from_names(model: torch.nn.Module, tokenizer, class_names, scale: float = 10.0) -> None:
    """Set the classifier of ``model`` (a peft or plain BERT classifier) to the label-embedding head."""
    weight = label_embedding_head(class_representations(model, tokenizer, class_names), scale)
    head = sequence_classifier(model).classifier
    target = getattr(head, "modules_to_save", None)
    modules = list(target.values()) if target is not None else [head]
    if target is not None and hasattr(head, "original_module"):
        modules.append(head.original_module)
    with torch.no_grad():
        for module in modules:
            module.weight.copy_(weight.to(module.weight.device, module.weight.dtype))
            module.bias.zero_()

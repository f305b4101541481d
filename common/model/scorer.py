"""The interest scorer: a model that starts where counting ends and learns the rest.

Every class ``c`` of an example ``x`` is scored with weights shared across classes::

    score(x, c) = w_h · f(x, c)                    # the class in the user's own history (features)
                + w_s · sem(x, c)                  # [CLS] (LoRA-adapted) against c's name embedding
                + w_p · log P(c) / 10              # platform popularity
                + w_t · log P(c | current) / 10    # platform transition prior from the current interest

``f`` are the history features of ``common.task.features``; ``sem`` is the frozen label-embedding
head read as a cosine; the priors are platform statistics (privately released, securely summed)
held as buffers. About twenty weights, the same for every class: DP-SGD has little to learn, and
at initialisation only the recency-weighted share is on (popularity breaks its ties), so the
untrained model ranks exactly like recency-weighted frequency.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..task.features import BASELINE_FEATURE, FEATURE_NAMES
from ..task.priors import Priors

DENSE_FEATURES = ("semantic", "popularity", "transition", "history_transition")
INITIAL_SHARE_WEIGHT = 8.0
TIE_BREAK = 1e-6  # popularity weight at initialisation: orders the classes the history does not name
PRIOR_SCALE = 10.0  # log-probabilities are divided by this, so every input is of order one
HEAD_SCALE = 10.0  # the label-embedding head's row norm (``common.model.head``)
HIDDEN = 16


class InterestScorer(nn.Module):
    """Scores of every class from the head's logits, the history features and the priors."""

    def __init__(self, n_classes: int, priors: Priors | None = None):
        super().__init__()
        self.history = nn.Linear(len(FEATURE_NAMES), 1, bias=False)
        self.dense = nn.Linear(len(DENSE_FEATURES), 1, bias=False)
        # interactions: a small network over all of a class's features, shared by every class; its
        # output layer starts at zero, so the initial ranking is still the linear one
        self.hidden = nn.Linear(len(FEATURE_NAMES) + len(DENSE_FEATURES), HIDDEN)
        self.out = nn.Linear(HIDDEN, 1, bias=False)
        self.register_buffer("log_popularity", torch.zeros(n_classes), persistent=False)
        self.register_buffer("log_transition", torch.zeros(n_classes, n_classes), persistent=False)
        self.set_priors(priors or Priors.uniform(n_classes))
        self.reset()

    def reset(self) -> None:
        """Recency-weighted frequency: the 0.9-decayed engagement share, ties by popularity."""
        with torch.no_grad():
            self.history.weight.zero_()
            self.history.weight[0, BASELINE_FEATURE] = INITIAL_SHARE_WEIGHT
            self.dense.weight.zero_()
            self.dense.weight[0, DENSE_FEATURES.index("popularity")] = TIE_BREAK
            generator = torch.Generator().manual_seed(0)
            self.hidden.weight.copy_(torch.randn(self.hidden.weight.shape, generator=generator) * 0.5)
            self.hidden.bias.zero_()
            self.out.weight.zero_()

    def set_priors(self, priors: Priors) -> None:
        if len(priors.popularity) != len(self.log_popularity):
            raise ValueError(f"priors over {len(priors.popularity)} classes, the scorer has {len(self.log_popularity)}")
        with torch.no_grad():
            self.log_popularity.copy_(torch.as_tensor(np.log(priors.popularity) / PRIOR_SCALE))
            self.log_transition.copy_(torch.as_tensor(priors.log_matrix() / PRIOR_SCALE))

    def forward(self, head_logits: torch.Tensor, classes: torch.Tensor, values: torch.Tensor,
                current: torch.Tensor, own_classes: torch.Tensor | None = None,
                own_values: torch.Tensor | None = None) -> torch.Tensor:
        """``own_*``: leave-one-user-out corrections of the log priors (training examples only)."""
        batch, n_classes = head_logits.shape
        popularity = self.log_popularity.expand(batch, n_classes)
        transition = self.log_transition[current]
        if own_classes is not None:
            index, known = own_classes.clamp_min(0), (own_classes >= 0).to(own_values.dtype)
            popularity = popularity.scatter_add(1, index, own_values[..., 0] * known / PRIOR_SCALE)
            transition = transition.scatter_add(1, index, own_values[..., 1] * known / PRIOR_SCALE)
        mixture = self._history_transition(classes, values, own_classes, own_values)
        dense = torch.stack([head_logits / HEAD_SCALE, popularity, transition, mixture], dim=-1)
        scores = self.dense(dense).squeeze(-1)
        known = (classes >= 0)
        history = self.history(values).squeeze(-1) * known
        scores = scores.scatter_add(1, classes.clamp_min(0), history)
        per_class = torch.zeros(batch, n_classes, values.shape[-1], dtype=values.dtype, device=values.device)
        per_class = per_class.scatter_add(1, classes.clamp_min(0)[..., None].expand_as(values),
                                          values * known[..., None].to(values.dtype))
        joint = torch.cat([per_class, dense], dim=-1)
        return scores + self.out(torch.relu(self.hidden(joint))).squeeze(-1)


    def _history_transition(self, classes: torch.Tensor, values: torch.Tensor, own_classes: torch.Tensor | None,
                            own_values: torch.Tensor | None) -> torch.Tensor:
        """log Σ_h share(h) · P(c | h): where every class of the history leads, by its recent share
        (less the mass the example's own user put there, for training examples)."""
        share = values[..., BASELINE_FEATURE] * (classes >= 0)
        rows = torch.exp(self.log_transition * PRIOR_SCALE)[classes.clamp_min(0)]  # (batch, width, classes)
        mixed = torch.einsum("bh,bhc->bc", share, rows)
        if own_classes is not None and own_values.shape[-1] > 2:
            own = own_values[..., 2] * (own_classes >= 0).to(own_values.dtype)
            mixed = mixed.scatter_add(1, own_classes.clamp_min(0), -own)
        floor = 1e-3 * torch.exp(self.log_popularity * PRIOR_SCALE)  # never below a sliver of popularity
        return torch.log(torch.maximum(mixed, floor)) / PRIOR_SCALE


def scorer_of(network: nn.Module) -> nn.Module:
    """The (peft-wrapped) scorer that ``network`` (a peft model, an adapted suffix, or either in an
    Opacus wrapper) calls; calling it runs the active copy."""
    from .prefix import sequence_classifier

    inner = getattr(network, "_module", network)
    return inner.scorer if hasattr(inner, "scorer") else sequence_classifier(inner).scorer


def set_priors(model: nn.Module, priors: Priors) -> None:
    """Give every scorer copy in ``model`` (peft keeps the original and the trained one) ``priors``."""
    for child in model.modules():
        if isinstance(child, InterestScorer):
            child.set_priors(priors)

"""DP-SGD for LoRA models in one forward and one backward pass, without Opacus' module hooks.

With FFA-LoRA only small ``nn.Linear`` layers train (every ``lora_B``, the scorer's layers). For
such a layer ``y = W x + b`` the gradient of one example is ``Σ_t δ_t x_tᵀ`` (``δ``: the gradient
of the loss at the layer's output, ``t``: token or class positions), so the per-example gradients
follow from the layer's inputs and output gradients alone:

* a forward hook on each trainable layer (and on nothing else) keeps its input and output;
* one ``torch.autograd.grad`` of the loss with respect to those outputs gives every ``δ`` (the
  parameters' ordinary ``.grad`` is never computed);
* per-example gradients come from one einsum per parameter (``bto,bti->boi``; the bias sums
  ``δ`` over ``t``), or, where materialising them costs more than it saves, their norms from the
  ghost-norm identity ``‖g_b‖² = Σ_{t,s} (x_t·x_s)(δ_t·δ_s)``;
* all squared norms add into one fp32 ``(batch,)`` buffer, each example is scaled by
  ``min(1, C / (‖g_b‖ + 1e-6))`` (Opacus' factor) and the clipped sum is accumulated.

``FastDPStep.step`` then adds one Gaussian draw ``N(0, (σC)²)`` per parameter from the caller's
generator, divides by the planned expected batch size and steps the optimizer: what Opacus'
``DPOptimizer`` does (same noise calls in the same parameter order, so the same generator state
gives the same noise). Several ``accumulate`` calls before one ``step`` are the physical batches
of one logical batch; ``step`` with nothing accumulated is the noise-only step of an empty batch.

Padded positions need nothing special: the loss reads no padded position and attention gives
padded keys probability exactly zero, so their ``δ`` is exactly zero and they add nothing.

A trainable parameter anywhere but in a plain ``nn.Linear`` raises ``UnsupportedParameterError``
(naming it), so callers can fall back to Opacus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Strategy = Literal["auto", "materialise", "ghost"]
CLIP_EPSILON = 1e-6  # Opacus' clip factor: C / (norm + 1e-6)



def gaussian_noise(std: float, shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, std²) drawn in float64, for both DP engines (cast to the gradient's dtype after).

    Float32 normals come from 24-bit uniforms and never exceed about 5.77σ: a truncated tail the
    accountant does not assume. Float64 ones reach about 8.6σ, past any δ we use.
    """
    return torch.normal(mean=0.0, std=std, size=tuple(shape), device=device, generator=generator,
                        dtype=torch.float64)

class UnsupportedParameterError(TypeError):
    """A trainable parameter the fast path cannot compute per-example gradients for."""


@dataclass(eq=False)
class _Site:
    """One trainable ``nn.Linear``: its trainable tensors and what the current pass captured."""

    name: str
    module: nn.Linear
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


def _is_plain_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _trainable_sites(model: nn.Module) -> tuple[list[_Site], list[nn.Parameter]]:
    """The trainable ``nn.Linear`` modules of ``model`` and its trainable parameters, in
    ``model.parameters()`` order (the optimizer's, hence the noise draws')."""
    owner: dict[int, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            if id(param) in owner:
                raise UnsupportedParameterError(
                    f"trainable parameter {name} is shared with {owner[id(param)][0]}: the fast DP step "
                    "needs every trainable parameter in exactly one module (use Opacus)")
            owner[id(param)] = (name, module)
    sites: dict[int, _Site] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    for param in params:
        name, module = owner[id(param)]
        if not _is_plain_linear(module):
            raise UnsupportedParameterError(
                f"trainable parameter {name} belongs to a {type(module).__name__}; the fast DP step supports "
                "trainable parameters of plain nn.Linear modules only (use Opacus)")
        site = sites.setdefault(id(module), _Site(name.rsplit(".", 1)[0], module, None, None))
        if param is module.weight:
            site.weight = param
        else:
            site.bias = param
    return list(sites.values()), params


class FastDPStep:
    """Clipped per-example gradient sums of ``model``'s trainable ``nn.Linear`` layers, and the noisy step.

    ``loss_reduction="mean"`` (as Opacus): the loss given to ``accumulate`` is a mean over the
    physical batch, and is multiplied back by its size; ``"sum"``: the loss is a sum.
    ``strategy`` picks per-example gradients (``"materialise"``), the ghost-norm identity
    (``"ghost"``) or, per layer, the cheaper of the two (``"auto"``).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, noise_multiplier: float,
                 expected_batch_size: float, loss_reduction: Literal["mean", "sum"] = "mean",
                 strategy: Strategy = "auto"):
        if max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0")
        if noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if expected_batch_size <= 0:
            raise ValueError("expected_batch_size must be > 0")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if strategy not in ("auto", "materialise", "ghost"):
            raise ValueError(f"strategy must be 'auto', 'materialise' or 'ghost', got {strategy!r}")
        self.max_grad_norm, self.noise_multiplier = float(max_grad_norm), float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.loss_reduction, self.strategy = loss_reduction, strategy
        self.sites, self.params = _trainable_sites(model)
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.samples = 0  # examples accumulated since the last step
        self._sums: list[torch.Tensor] | None = None
        self._handles = [site.module.register_forward_hook(self._capture_hook(site)) for site in self.sites]

    # ------------------------------------------------------------------ capture

    def _capture_hook(self, site: _Site):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if torch.is_grad_enabled() and output.requires_grad:
                site.inputs.append(args[0].detach())
                site.outputs.append(output)
        return hook

    def clear(self) -> None:
        """Forget what forward passes since the last ``accumulate`` captured."""
        for site in self.sites:
            site.clear()

    def remove(self) -> None:
        """Take the hooks off: the model is plain again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
        self._sums = None

    def __enter__(self) -> FastDPStep:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ one physical batch

    def accumulate(self, loss: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
        """Add the clipped per-example gradients of one physical batch to the running sums.

        ``loss``: a callable that runs the forward pass and returns the scalar loss, or that loss
        itself, computed by the only forward pass with gradients since the last ``accumulate``.
        Returns the loss, detached.
        """
        if callable(loss):
            self.clear()
            loss = loss()
        try:
            return self._accumulate(loss)
        finally:
            self.clear()

    def _accumulate(self, loss: torch.Tensor) -> torch.Tensor:
        if loss.dim() != 0:
            raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
        silent = [s.name for s in self.sites if not s.outputs]
        if silent:
            raise RuntimeError(f"trainable layer(s) {silent[:3]} ran no forward pass with gradients: the fast DP "
                               "step needs every trainable nn.Linear called through its forward")
        n = self.sites[0].inputs[0].shape[0]
        for site in self.sites:
            if any(x.dim() < 2 or x.shape[0] != n for x in site.inputs):
                raise RuntimeError(f"layer {site.name} saw inputs without a leading batch dimension of {n}")
        outputs = [y for site in self.sites for y in site.outputs]
        scale = float(n) if self.loss_reduction == "mean" else 1.0
        deltas = iter(torch.autograd.grad(loss, outputs, grad_outputs=torch.full_like(loss, scale),
                                          allow_unused=True))

        pieces = []  # per site: (x, δ) as (batch, positions, features), in δ's dtype
        for site in self.sites:
            xs, ds = [], []
            for x, y in zip(site.inputs, site.outputs):
                d = next(deltas)
                d = torch.zeros_like(y) if d is None else d
                xs.append(x.reshape(n, -1, x.shape[-1]))
                ds.append(d.reshape(n, -1, d.shape[-1]))
            d = ds[0] if len(ds) == 1 else torch.cat(ds, dim=1)
            x = (xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)).to(d.dtype)
            pieces.append((x, d))

        # squared per-example norms, summed over every parameter, in fp32
        squared = torch.zeros(n, dtype=torch.float32, device=pieces[0][1].device)
        per_example: list[torch.Tensor | None] = []  # materialised weight gradients, or None (ghost)
        bias_grads: list[torch.Tensor | None] = []
        for site, (x, d) in zip(self.sites, pieces):
            g = None
            if site.weight is not None:
                if self._ghost(x, d):
                    squared += _ghost_squared_norms(x, d)
                else:
                    g = torch.einsum("bto,bti->boi", d, x)
                    squared += _squared_norms(g)
            per_example.append(g)
            gb = d.sum(dim=1) if site.bias is not None else None
            if gb is not None:
                squared += _squared_norms(gb)
            bias_grads.append(gb)
        factors = (self.max_grad_norm / (squared.sqrt() + CLIP_EPSILON)).clamp(max=1.0)

        sums, clipped = [], []
        targets = self._running_sums()
        index = {id(p): i for i, p in enumerate(self.params)}
        for site, (x, d), g, gb in zip(self.sites, pieces, per_example, bias_grads):
            if site.weight is not None:
                p = site.weight
                if g is not None:
                    w = torch.einsum("b,boi->oi", factors.to(p.dtype), g.to(p.dtype))
                else:
                    w = torch.einsum("bto,bti->oi", d * factors.to(d.dtype)[:, None, None], x).to(p.dtype)
                sums.append(targets[index[id(p)]])
                clipped.append(w)
            if gb is not None:
                p = site.bias
                sums.append(targets[index[id(p)]])
                clipped.append(factors.to(p.dtype) @ gb.to(p.dtype))
        torch._foreach_add_(sums, clipped)
        self.samples += n
        return loss.detach()

    def _ghost(self, x: torch.Tensor, d: torch.Tensor) -> bool:
        if self.strategy != "auto":
            return self.strategy == "ghost"
        positions, inputs, outputs = x.shape[1], x.shape[2], d.shape[2]
        return positions * positions * (inputs + outputs) < inputs * outputs  # Gram matrices vs (out, in)

    def _running_sums(self) -> list[torch.Tensor]:
        if self._sums is None:
            self._sums = [torch.zeros_like(p) for p in self.params]
        return self._sums

    # ------------------------------------------------------------------ the logical batch's step

    def privatise(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Write ``(clipped sum + N(0, (σC)²)) / expected_batch_size`` into every trainable ``.grad``
        (one noise draw per parameter, in parameter order, from ``generator``) and start a new sum.

        With nothing accumulated (an empty Poisson batch) the gradient is the noise alone.
        """
        grads = self._running_sums()
        std = self.noise_multiplier * self.max_grad_norm
        if std > 0:
            noise = [gaussian_noise(std, p.shape, p.device, generator).to(p.dtype) for p in self.params]
            torch._foreach_add_(grads, noise)
        torch._foreach_div_(grads, self.expected_batch_size)
        for p, g in zip(self.params, grads):
            p.grad = g
        self._sums, self.samples = None, 0
        return grads

    def step(self, optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None) -> None:
        """``privatise``, step ``optimizer``, and drop the gradients."""
        self.privatise(generator)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _squared_norms(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1, dtype=torch.float32).square()


def _ghost_squared_norms(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖Σ_t δ_t x_tᵀ‖² per example without forming it: Σ_{t,s} (x_t·x_s)(δ_t·δ_s)."""
    if x.shape[1] == 1:
        return _squared_norms(x) * _squared_norms(d)
    x, d = x.float(), d.float()
    return (torch.bmm(x, x.transpose(1, 2)) * torch.bmm(d, d.transpose(1, 2))).sum(dim=(1, 2))

"""One round of local training on a shop's examples: DP-SGD with Opacus, or non-private.

DP-SGD here is Opacus' ``PrivacyEngine`` in hooks grad-sample mode around the peft model, with
our own Poisson sampler (over examples, or over users with one example each for user-level
privacy), logical batches split into physical ones by Opacus' ``BatchMemoryManager``, the loss
computed by us on the logits, and AdamW. An empty Poisson batch still takes a step: the update
is noise only, as the privacy analysis assumes.

``TrainConfig.dp_engine="fast"`` runs the same DP-SGD (same sampler, physical batches, noise
generator reseeding, divisor and noise draws) with ``client.fast_dp.FastDPStep`` instead of
Opacus: per-example gradients of the trainable ``nn.Linear`` layers from one forward and one
backward pass, without Opacus' module hooks.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import types
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from fedinterest.common.config import ConfigError
from fedinterest.common.task.features import HistoryFeatures

from .privacy import DP_ENGINES




@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings (the same in private and non-private mode)."""

    batch_size: int = 32  # expected logical batch (Poisson)
    physical_batch_size: int = 32  # most examples in one forward/backward
    learning_rate: float = 5e-3
    weight_decay: float = 0.0
    epochs: float = 1.0  # expected passes over the privacy units per round
    max_steps: int | None = None  # cap on steps per round
    max_grad_norm: float = 1.0
    max_length: int = 128
    bf16: bool = False
    device: str = "auto"
    dp_engine: str = "opacus"  # per-example gradients: "opacus" (hooks) or "fast" (client.fast_dp)

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.physical_batch_size >= 1, "physical_batch_size must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.dp_engine in DP_ENGINES, f"dp_engine must be one of {', '.join(DP_ENGINES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training: {message}")

    def sample_rate(self, n_units: int) -> float:
        return min(1.0, self.batch_size / max(n_units, 1))

    def steps_per_round(self, n_units: int) -> int:
        steps = max(1, math.ceil(self.epochs / self.sample_rate(n_units)))
        return min(steps, self.max_steps) if self.max_steps else steps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DPSettings:
    """What one private round needs: the planned noise, the clipping bound and the sampling."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    unit: str = "user"
    expected_batch_size: float | None = None  # the planned divisor (None: sample rate × units)


class ShopDataset(Dataset):
    """Encoded examples of one shop; items are indices, batches are built by ``batch``.

    Every example carries its history features and current interest for the scorer. With
    ``hidden`` (cached outputs of the frozen encoder layers below ``prefix_start``), batches
    carry those instead of token ids and training runs only the adapted suffix.
    """

    def __init__(self, input_ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray, users: np.ndarray,
                 features: HistoryFeatures, current: np.ndarray, hidden: torch.Tensor | None = None,
                 prefix_start: int = 0, own: tuple[np.ndarray, np.ndarray] | None = None):
        self.input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.users = np.asarray(users)
        self.feature_classes = torch.as_tensor(features.classes, dtype=torch.long)
        self.feature_values = torch.as_tensor(features.values, dtype=torch.float32)
        self.current = torch.as_tensor(current, dtype=torch.long)
        self.hidden, self.prefix_start = hidden, prefix_start
        # leave-one-user-out corrections of the priors (training examples; see common.stats)
        classes, values = own if own is not None else (np.full((len(labels), 1), -1), np.zeros((len(labels), 1, 3)))
        self.own_classes = torch.as_tensor(classes, dtype=torch.long)
        self.own_values = torch.as_tensor(values, dtype=torch.float32)

    def with_own_corrections(self, classes: np.ndarray, values: np.ndarray) -> "ShopDataset":
        out = self._with(None, self.hidden, self.prefix_start)
        out.own_classes = torch.as_tensor(classes, dtype=torch.long)
        out.own_values = torch.as_tensor(values, dtype=torch.float32)
        return out

    @property
    def features(self) -> HistoryFeatures:
        return HistoryFeatures(self.feature_classes.numpy(), self.feature_values.numpy())

    def _with(self, idx: torch.Tensor | None, hidden: torch.Tensor | None, start: int) -> "ShopDataset":
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])
        users = self.users if idx is None else self.users[idx.numpy()]
        return ShopDataset(pick(self.input_ids).numpy(), pick(self.lengths).numpy(), pick(self.labels).numpy(),
                           users, HistoryFeatures(pick(self.feature_classes).numpy(), pick(self.feature_values).numpy()),
                           pick(self.current).numpy(), hidden, start,
                           (pick(self.own_classes).numpy(), pick(self.own_values).numpy()))

    def subset(self, indices: np.ndarray) -> "ShopDataset":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self._with(idx, self.hidden[idx] if self.hidden is not None else None, self.prefix_start)

    def with_prefix(self, model: torch.nn.Module, start: int) -> "ShopDataset":
        """The same examples with the frozen layers below ``start`` computed once."""
        from fedinterest.common.model.prefix import prefix_hidden_states

        if start == 0:
            return self
        hidden = prefix_hidden_states(model, self.input_ids.numpy(), self.lengths.numpy(), start)
        return self._with(None, hidden, start)

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that maps this dataset's batches to logits."""
        from fedinterest.common.model.prefix import AdaptedSuffix

        return AdaptedSuffix(model, self.prefix_start) if self.hidden is not None else model

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> int:
        return index

    def batch(self, indices: list[int] | torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        # tensor cores take sequence lengths in multiples of 8; a CPU gains nothing from padding
        width = padded_width(int(self.lengths[idx].max()), self.input_ids.shape[1], 8 if device.type == "cuda" else 1)
        ids = self.input_ids[idx, :width]
        mask = (torch.arange(width)[None, :] < self.lengths[idx][:, None]).long()
        classes = self.feature_classes[idx]
        used = max(int((classes >= 0).sum(dim=1).max()), 1)  # history classes of the widest example
        own = self.own_classes[idx]
        own_used = max(int((own >= 0).sum(dim=1).max()), 1)
        batch = {"attention_mask": mask.to(device), "labels": self.labels[idx].to(device),
                 "feature_classes": classes[:, :used].to(device), "feature_values": self.feature_values[idx, :used].to(device),
                 "current": self.current[idx].to(device), "own_classes": own[:, :own_used].to(device),
                 "own_values": self.own_values[idx, :own_used].to(device)}
        if self.hidden is not None:
            batch["hidden_states"] = self.hidden[idx, :width].to(device, torch.float32)
        else:
            batch["input_ids"] = ids.to(device)
        return batch

    def user_members(self) -> list[np.ndarray]:
        """Example indices of each user, for user-level sampling."""
        order = np.argsort(self.users, kind="stable")
        _, starts = np.unique(self.users[order], return_index=True)
        return np.split(order, starts[1:])

    def n_units(self, unit: str) -> int:
        return len(np.unique(self.users)) if unit == "user" else len(self)


class StepRandomness:
    """Where a round's sampling and noise come from.

    Without a seed (deployed shops), every draw gets a generator freshly seeded from the OS
    CSPRNG (``os.urandom``), so no seed for a whole round exists to be guessed. With a seed
    (simulations and tests only: reproducible, hence never for deployment), the draws follow
    from it deterministically.
    """

    def __init__(self, seed: int | None = None):
        self.seed, self._draws = seed, 0

    @property
    def seeded(self) -> bool:
        return self.seed is not None

    def next_seed(self, purpose: str) -> int:
        """64 fresh bits: from ``os.urandom``, or derived from the seed, the purpose and a counter."""
        self._draws += 1
        if self.seed is None:
            return int.from_bytes(os.urandom(8), "big")
        digest = hashlib.blake2b(f"{self.seed}/{purpose}/{self._draws}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def reseed(self, generator: torch.Generator, purpose: str) -> torch.Generator:
        return generator.manual_seed(self.next_seed(purpose))


class PoissonBatchSampler(Sampler):
    """``steps`` batches; each unit joins a batch independently with probability ``sample_rate``.

    With ``members`` (user-level), the units are users and each sampled user contributes one of
    their examples, chosen uniformly. Each step's draws come from a freshly seeded generator.
    """

    def __init__(self, n_units: int, sample_rate: float, steps: int, randomness: StepRandomness,
                 members: list[np.ndarray] | None = None):
        self.n_units, self.sample_rate, self.steps = n_units, sample_rate, steps
        self.randomness, self.members = randomness, members
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            generator = self.randomness.reseed(self.generator, "sample")
            chosen = torch.nonzero(torch.rand(self.n_units, generator=generator) < self.sample_rate).flatten()
            if self.members is None:
                yield chosen.tolist()
                continue
            picks = torch.rand(len(chosen), generator=generator).numpy()
            yield [int(self.members[u][int(r * len(self.members[u]))]) for u, r in zip(chosen.tolist(), picks)]


@dataclass
class RoundStats:
    steps: int
    samples: int
    empty_batches: int
    mean_loss: float
    seconds: float
    private: bool


def _identity(batch: list[int]) -> list[int]:
    return batch


def padded_width(longest: int, limit: int, multiple: int) -> int:
    """A batch's sequence width: its longest example rounded up to ``multiple``, at most ``limit``."""
    return min(-(-longest // multiple) * multiple, limit)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def logits_of(network: torch.nn.Module, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
    """Class scores of a batch: the head on token ids (full model) or on cached hidden states (adapted
    suffix), then the interest scorer on the head's logits, the history features and the priors."""
    from fedinterest.common.model.scorer import scorer_of

    device = batch["attention_mask"].device
    with _autocast(device, bf16):
        if "hidden_states" in batch:
            head = network(hidden_states=batch["hidden_states"], attention_mask=batch["attention_mask"])
        else:
            head = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return scorer_of(network)(head.float(), batch["feature_classes"], batch["feature_values"], batch["current"],
                              batch.get("own_classes"), batch.get("own_values"))


def _loss(network: torch.nn.Module, batch: dict[str, torch.Tensor], bf16: bool) -> torch.Tensor:
    return F.cross_entropy(logits_of(network, batch, bf16), batch["labels"])  # our loss, on logits


def train_round(
    model: torch.nn.Module,
    data: ShopDataset,
    config: TrainConfig,
    dp: DPSettings | None,
    seed: int | None = None,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> RoundStats:
    """Train the trainable tensors of ``model`` in place for one round (AdamW unless ``make_optimizer``).

    ``seed=None`` (deployed shops): sampling and noise come from the OS CSPRNG, afresh each step.
    A seed makes the round reproducible: for simulations and tests only.
    """
    device = next(model.parameters()).device
    randomness = StepRandomness(seed)
    unit = dp.unit if dp else "example"
    n_units = data.n_units(unit)
    rate = dp.sample_rate if dp else config.sample_rate(n_units)
    steps = dp.steps if dp else config.steps_per_round(n_units)
    expected_batch = (dp.expected_batch_size if dp and dp.expected_batch_size else rate * n_units)
    members = data.user_members() if unit == "user" else None
    sampler = PoissonBatchSampler(n_units, rate, steps, randomness, members)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=_identity)
    network = data.network(model)
    params = [p for p in network.parameters() if p.requires_grad]
    if make_optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = make_optimizer(params)
    network.train()
    start = time.perf_counter()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from the round's randomness, not global state
        torch.manual_seed(randomness.next_seed("dropout"))
        if dp is None:
            stats = _train_plain(network, data, loader, optimizer, config, expected_batch, device)
        elif config.dp_engine == "fast":
            stats = _train_private_fast(network, data, loader, optimizer, config, dp, expected_batch, device,
                                        randomness)
        else:
            stats = _train_private(network, data, loader, optimizer, config, dp, expected_batch, device, randomness)
    stats.seconds = time.perf_counter() - start
    return stats


def _train_plain(model, data, loader, optimizer, config, expected_batch, device) -> RoundStats:
    """Same sampling and batch arithmetic as DP-SGD, without clipping or noise."""
    losses, samples, empty = [], 0, 0
    for indices in loader:
        if not indices:
            empty += 1
            continue
        optimizer.zero_grad()
        for chunk in _chunks(indices, config.physical_batch_size):
            batch = data.batch(chunk, device)
            loss = _loss(model, batch, config.bf16)
            (loss * len(chunk) / expected_batch).backward()
            losses.append(loss.item() * len(chunk))
            samples += len(chunk)
        optimizer.step()
    return RoundStats(len(loader), samples, empty, sum(losses) / max(samples, 1), 0.0, private=False)


def make_private(model, optimizer, loader, dp: DPSettings, expected_batch: float):
    """Opacus hooks-mode wrapping of ``model`` and ``optimizer`` for one round.

    The loader already yields Poisson batches (ours), so Opacus keeps it; the optimizer divides
    the noised sum by the *planned* expected batch size, never by anything the data decides.
    The noise generator is the caller's to reseed before each step (``StepRandomness``).
    """
    from opacus import PrivacyEngine

    device = next(model.parameters()).device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant="prv")  # accounting is the ledger's; this one is unused
        private_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,
            grad_sample_mode="hooks",
            loss_reduction="mean",
            noise_generator=torch.Generator(device=device),
        )
    dp_optimizer.expected_batch_size = expected_batch
    dp_optimizer.add_noise = types.MethodType(_add_float64_noise, dp_optimizer)  # this optimizer's only
    return private_model, dp_optimizer, dp_loader


def _add_float64_noise(self) -> None:
    """Opacus' ``DPOptimizer.add_noise`` with the noise drawn in float64 (``fast_dp.gaussian_noise``):
    the same draws, in the same parameter order, as the fast engine."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    from .fast_dp import gaussian_noise

    std = self.noise_multiplier * self.max_grad_norm
    for p in self.params:
        _check_processed_flag(p.summed_grad)
        grad = p.summed_grad
        if std:
            grad = grad + gaussian_noise(std, grad.shape, grad.device, self.generator).to(grad.dtype)
        p.grad = grad.view_as(p)
        _mark_as_processed(p.summed_grad)


def release(private_model, model) -> None:
    """Remove Opacus hooks and attributes: the peft model is a plain model again."""
    private_model._close()
    for p in model.parameters():
        for attr in ("summed_grad", "grad_sample"):
            if hasattr(p, attr):
                delattr(p, attr)


def _train_private(model, data, loader, optimizer, config, dp, expected_batch, device, randomness) -> RoundStats:
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    private_model, dp_optimizer, dp_loader = make_private(model, optimizer, loader, dp, expected_batch)
    losses, samples, empty = [], 0, 0
    try:
        with warnings.catch_warnings():
            # Opacus' hooks on frozen-input modules trigger this PyTorch notice on every backward
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=config.physical_batch_size,
                                    optimizer=dp_optimizer) as physical_loader:
                for indices in physical_loader:
                    randomness.reseed(dp_optimizer.generator, "noise")
                    if not indices:
                        empty += 1
                        noise_only_step(dp_optimizer)
                        continue
                    batch = data.batch(indices, device)
                    loss = _loss(private_model, batch, config.bf16)
                    loss.backward()
                    dp_optimizer.step()
                    dp_optimizer.zero_grad()
                    losses.append(loss.item() * len(indices))
                    samples += len(indices)
    finally:
        release(private_model, model)
    return RoundStats(dp.steps, samples, empty, sum(losses) / max(samples, 1), 0.0, private=True)


def _train_private_fast(model, data, loader, optimizer, config, dp, expected_batch, device,
                        randomness) -> RoundStats:
    """``_train_private`` with ``FastDPStep``: the same physical batches (``np.array_split``, as Opacus'
    ``BatchMemoryManager``) and the same reseeding of the noise generator before each of them.
    A model with a trainable tensor the fast step does not support trains with Opacus (a warning)."""
    from .fast_dp import FastDPStep, UnsupportedParameterError

    try:
        fast = FastDPStep(model, dp.max_grad_norm, dp.noise_multiplier, expected_batch)
    except UnsupportedParameterError as exc:
        warnings.warn(f"dp_engine 'fast': {exc}; this round trains with Opacus", RuntimeWarning, stacklevel=3)
        return _train_private(model, data, loader, optimizer, config, dp, expected_batch, device, randomness)
    generator = torch.Generator(device=device)
    losses, samples, empty = [], 0, 0
    try:
        for indices in loader:
            if not indices:
                randomness.reseed(generator, "noise")
                empty += 1
                fast.step(optimizer, generator)  # noise only
                continue
            for chunk in np.array_split(np.asarray(indices), math.ceil(len(indices) / config.physical_batch_size)):
                randomness.reseed(generator, "noise")
                batch = data.batch(chunk.tolist(), device)
                loss = fast.accumulate(_loss(model, batch, config.bf16))
                losses.append(loss.item() * len(chunk))
                samples += len(chunk)
            fast.step(optimizer, generator)
    finally:
        fast.remove()
    return RoundStats(dp.steps, samples, empty, sum(losses) / max(samples, 1), 0.0, private=True)


def noise_only_step(optimizer) -> None:
    """An empty Poisson batch: clip nothing, add the noise, step (zero per-sample gradients)."""
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
    optimizer.zero_grad()


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def predict_proba(model: torch.nn.Module, data: ShopDataset, batch_size: int = 64, bf16: bool = False) -> np.ndarray:
    """Class probabilities for every example, in order."""
    device = next(model.parameters()).device
    network = data.network(model)
    network.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))), device)
        out.append(torch.softmax(logits_of(network, batch, bf16).double(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels))

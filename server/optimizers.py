"""Server optimizers: how the securely aggregated mean update moves the global adapter.

The server never sees one shop's update, only the weighted mean Δ of the round's updates
(``client adapter - global adapter``). ``FedAvg`` adds it (server learning rate 1 is plain
federated averaging); ``FedAdam`` (Reddi et al. 2021) treats -Δ as a pseudo-gradient with Adam
moments. Each has ``state_dict()`` / ``load_state_dict()`` so checkpoints can resume exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fedinterest.common.config import ConfigError


class ServerOptimizer(ABC):
    name: str = "server-optimizer"

    @abstractmethod
    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """New global weights from the current ones and the round's mean update."""

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class FedAvg(ServerOptimizer):
    name = "fedavg"

    def __init__(self, lr: float = 1.0):
        self.lr = lr

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        return (weights + self.lr * mean_update).astype(np.float32)


class FedAdam(ServerOptimizer):
    name = "fedadam"

    def __init__(self, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        delta = mean_update.astype(np.float64)
        if self.m is None:
            self.m = np.zeros_like(delta)
            self.v = np.zeros_like(delta)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        self.v = self.beta2 * self.v + (1 - self.beta2) * delta * delta
        return (weights + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)

    def state_dict(self) -> dict:
        if self.m is None:
            return {"t": self.t}
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state.get("t", 0))
        self.m = np.asarray(state["m"]) if "m" in state else None
        self.v = np.asarray(state["v"]) if "v" in state else None


OPTIMIZERS = {"fedavg": FedAvg, "fedadam": FedAdam}


def make_optimizer(name: str, lr: float | None = None) -> ServerOptimizer:
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown server optimizer '{name}'; use one of {', '.join(OPTIMIZERS)}") from None
    return cls() if lr is None else cls(lr=lr)

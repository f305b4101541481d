"""Seeded synthetic merchant data with known, learnable interest-migration structure.

The process, one step per UTC day for every user:

* a user belongs to one shop; shops specialise in a few interest chains (Dirichlet skew);
* the user's hidden interest is a position on a chain (``simulations.catalog``); at each midnight
  it moves on with a hazard that grows with the days already spent there (a dwell effect a
  first-order model cannot see), to the next category of the same chain (``chain_follow``) or to
  a random category of the shop; at a chain's end a new chain starts;
* on an active day the user makes 1 + Poisson events, ``focus`` of them on the current interest
  and the rest on the shop's other categories.

``SynthConfig.realistic()`` makes the hard case that real logs are (the Taobao sample): a long tail
of ``tail_categories`` categories that take ``tail_share`` of the off-interest events (Zipf), so
the top 50 categories hold about half of the engagement and most days' labels differ from the
current interest; anonymous numeric categories (no names, no titles); and ``outliers`` events
with timestamps far outside the data's window, as real exports have.

The output is Taobao UserBehavior layout (one CSV per shop), English category names and item
titles, a ``dataset.json`` manifest and ``ground_truth.json`` with the Bayes-optimal next-interest
accuracy: the accuracy of a predictor that knows every user's hidden state and the process. No
model that sees only the events can beat it in expectation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedinterest.common.atomic import atomic_write_text
from fedinterest.common.config import DAY, ConfigError
from fedinterest.common.data.load import MANIFEST
from fedinterest.common.data.schema import ACTION_WEIGHTS
from fedinterest.common.task.examples import top_class

from . import catalog

#: Relative hazard of moving on after 1, 2, 3 and 4+ days on an interest.
DWELL_HAZARD = np.array([0.4, 0.8, 1.2, 1.6])
#: P(view, fav, cart, buy) of one event.
ACTION_PROBS = np.array([0.72, 0.08, 0.12, 0.08])
TAOBAO_ACTIONS = np.array(["pv", "fav", "cart", "buy"])
DAY_START, DAY_HOURS = 7 * 3600, 16 * 3600
ORACLE_SAMPLES = 2000
#: The task settings the Bayes-optimal figure assumes (TaskConfig defaults).
ORACLE_TASK = {"window_seconds": DAY, "stride_seconds": DAY, "min_history": 3, "min_target": 1}


@dataclass(frozen=True)
class SynthConfig:
    shops: int = 5
    users: int = 2000
    days: int = 42
    seed: int = 0
    migration_rate: float = 0.25
    chain_follow: float = 0.85
    focus: float = 0.85
    shop_skew: float = 0.3
    activity: float = 0.6
    events_per_day: float = 6.0
    items_per_category: int = 20
    start: str = "2025-09-01"
    tail_categories: int = 0  # extra categories no interest chain holds, hit by off-interest events
    tail_share: float = 0.0  # of the off-interest events, the share that falls in the tail
    tail_exponent: float = 1.05  # Zipf exponent of the tail's popularity
    personal_tail: int = 8  # tail categories each user returns to (drawn from the Zipf tail)
    anonymous: bool = False  # no category names or item titles: categories are numbers only
    outliers: int = 0  # events moved to timestamps far outside the window

    @classmethod
    def realistic(cls, **overrides) -> "SynthConfig":
        """Shops as hard as the real Taobao sample: anonymous ids, out-of-window rows, and matched to its
        shape, not to any model (taobao_head: top 50 of 2,910 categories hold 50% of engagement, 85%
        of labels migrate at the full taxonomy; these shops: 52% and 85%; Markov is weak on both)."""
        settings = dict(tail_categories=2000, tail_share=0.9, tail_exponent=0.8, personal_tail=20,
                        focus=0.35, chain_follow=0.4, migration_rate=0.45, anonymous=True, outliers=40)
        return cls(**{**settings, **overrides})

    def __post_init__(self) -> None:
        checks = [
            (self.shops >= 1, "shops must be >= 1"),
            (self.users >= 2 * self.shops, "users must be at least 2 per shop"),
            (self.days >= 5, "days must be >= 5"),
            (0 < self.migration_rate <= 0.6, "migration_rate must be in (0, 0.6]"),
            (0 <= self.chain_follow <= 1, "chain_follow must be in [0, 1]"),
            (0 < self.focus <= 1, "focus must be in (0, 1]"),
            (self.shop_skew > 0, "shop_skew must be > 0"),
            (0 < self.activity < 1, "activity must be in (0, 1)"),
            (self.events_per_day > 1, "events_per_day must be > 1"),
            (self.items_per_category >= 1, "items_per_category must be >= 1"),
            (self.tail_categories >= 0, "tail_categories must be >= 0"),
            (0 <= self.tail_share < 1, "tail_share must be in [0, 1)"),
            (self.tail_share == 0 or self.tail_categories > 0, "tail_share needs tail_categories > 0"),
            (self.tail_exponent > 0, "tail_exponent must be > 0"),
            (self.personal_tail >= 1, "personal_tail must be >= 1"),
            (self.outliers >= 0, "outliers must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"synthetic data: {message}")

    @property
    def start_ts(self) -> int:
        return int(pd.Timestamp(self.start, tz="UTC").timestamp()) // DAY * DAY


@dataclass(frozen=True)
class World:
    """The fixed structure: catalogue, chains and shops."""

    names: tuple[str, ...]
    chain_names: tuple[str, ...]
    chain_cat: np.ndarray  # (chains, max_len) category index, -1 padded
    chain_len: np.ndarray
    shop_chain: np.ndarray  # (shops, chains) chain weights
    shop_background: np.ndarray  # (shops, categories) noise distribution
    tail_cumulative: np.ndarray  # cumulative Zipf distribution over the tail (empty: no tail)

    @property
    def n_categories(self) -> int:
        return len(self.names)

    @property
    def n_interests(self) -> int:
        """Categories an interest can sit on (the chains'); the tail follows them."""
        return len(self.names) - len(self.tail_cumulative)


def category_id(index: int | np.ndarray) -> np.ndarray:
    return np.asarray(1000 + 7 * np.asarray(index)).astype(str)


def make_world(config: SynthConfig, rng: np.random.Generator) -> World:
    names = catalog.categories()
    index = {n: i for i, n in enumerate(names)}
    chains = list(catalog.CHAINS.items())
    max_len = max(len(c) for _, c in chains)
    chain_cat = np.full((len(chains), max_len), -1, dtype=np.int64)
    for c, (_, members) in enumerate(chains):
        chain_cat[c, : len(members)] = [index[m] for m in members]
    chain_len = np.array([len(m) for _, m in chains])
    shop_chain = rng.dirichlet(np.full(len(chains), config.shop_skew), size=config.shops)
    background = np.zeros((config.shops, len(names)))
    for c in range(len(chains)):
        members = chain_cat[c, : chain_len[c]]
        np.add.at(background, (slice(None), members), shop_chain[:, [c]] / chain_len[c])
    background /= background.sum(axis=1, keepdims=True)
    tail = 1.0 / np.arange(1, config.tail_categories + 1) ** config.tail_exponent
    if config.tail_categories:
        names = (*names, *(f"assorted goods {i + 1}" for i in range(config.tail_categories)))
        background = np.pad(background, ((0, 0), (0, config.tail_categories)))
    return World(names, tuple(n for n, _ in chains), chain_cat, chain_len, shop_chain, background,
                 np.cumsum(tail / tail.sum()) if config.tail_categories else np.zeros(0))


def off_interest(world: World, config: SynthConfig, shops: np.ndarray, rng: np.random.Generator,
                 tails: np.ndarray | None = None) -> np.ndarray:
    """Categories of off-interest events: the shop's other categories, or with ``tail_share`` one of
    the event's user's own tail categories (``tails``, one row per event; default: fresh draws)."""
    e = len(shops)
    noise = _sample_rows(np.cumsum(world.shop_background, axis=1), shops, rng.random(e))
    if not config.tail_categories:
        return noise
    if tails is None:
        tails = draw_tails(world, config, e, rng)
    tail = tails[np.arange(e), rng.integers(0, tails.shape[1], size=e)]
    return np.where(rng.random(e) < config.tail_share, tail, noise)


def draw_tails(world: World, config: SynthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, personal_tail) tail categories per user, by the tail's Zipf popularity."""
    u = rng.random((n, config.personal_tail))
    return world.n_interests + np.minimum(np.searchsorted(world.tail_cumulative, u, side="right"),
                                          config.tail_categories - 1)


def hazard(dwell: np.ndarray, rate: float) -> np.ndarray:
    """P(moving on tonight | ``dwell`` days on the interest so far)."""
    return np.minimum(0.95, rate * DWELL_HAZARD[np.minimum(dwell, len(DWELL_HAZARD)) - 1])


def _sample_rows(cumulative: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling from row ``rows[i]`` of a stack of cumulative distributions."""
    n_cols = cumulative.shape[1]
    flat = (cumulative + np.arange(len(cumulative))[:, None]).ravel()
    flat[n_cols - 1 :: n_cols] = np.arange(1, len(cumulative) + 1)  # exact row ends
    picked = np.searchsorted(flat, rows + u, side="right")
    return np.minimum(picked - rows * n_cols, n_cols - 1)


@dataclass
class Users:
    shop: np.ndarray
    activity: np.ndarray
    rate: np.ndarray
    chain: np.ndarray
    pos: np.ndarray
    dwell: np.ndarray
    tails: np.ndarray | None = None  # (n, personal_tail) the user's own tail categories


def make_users(config: SynthConfig, world: World, rng: np.random.Generator) -> Users:
    n = config.users
    shares = rng.dirichlet(np.full(config.shops, 4.0))
    shop = rng.choice(config.shops, size=n, p=shares)
    shop[: config.shops] = np.arange(config.shops)  # every shop has users
    shop = np.sort(shop)
    concentration = 4.0
    activity = rng.beta(concentration * config.activity, concentration * (1 - config.activity), size=n)
    rate = rng.gamma(3.0, (config.events_per_day - 1.0) / 3.0, size=n)
    chain = _sample_rows(np.cumsum(world.shop_chain, axis=1), shop, rng.random(n))
    pos = np.floor(rng.random(n) * world.chain_len[chain]).astype(np.int64)
    dwell = rng.integers(1, len(DWELL_HAZARD) + 1, size=n)
    tails = draw_tails(world, config, n, rng) if config.tail_categories else None
    return Users(shop, activity, rate, chain, pos, dwell, tails)


def step_interests(users: Users, world: World, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Advance every user's hidden interest by one night; returns who moved."""
    n = len(users.shop)
    u_move, u_follow, u_chain, u_pos = rng.random(n), rng.random(n), rng.random(n), rng.random(n)
    move = u_move < hazard(users.dwell, config.migration_rate)
    follow = move & (u_follow < config.chain_follow)
    jump = move & ~follow
    new_chain = _sample_rows(np.cumsum(world.shop_chain, axis=1), users.shop, u_chain)
    at_end = follow & (users.pos + 1 >= world.chain_len[users.chain])
    users.pos = np.where(follow & ~at_end, users.pos + 1, users.pos)
    restart = at_end | jump
    users.chain = np.where(restart, new_chain, users.chain)
    users.pos = np.where(at_end, 0, users.pos)
    users.pos = np.where(jump, np.floor(u_pos * world.chain_len[users.chain]).astype(np.int64), users.pos)
    users.dwell = np.where(move, 1, users.dwell + 1)
    return move


def day_events(
    users: Users, world: World, config: SynthConfig, rng: np.random.Generator, day_ts: int
) -> pd.DataFrame:
    """One day of events for every active user, sorted by user then time."""
    n = len(users.shop)
    active = rng.random(n) < users.activity
    counts = np.where(active, 1 + rng.poisson(users.rate), 0)
    owner = np.repeat(np.arange(n), counts)
    e = len(owner)
    interest = world.chain_cat[users.chain, users.pos]
    noise = off_interest(world, config, users.shop[owner], rng, None if users.tails is None else users.tails[owner])
    category = np.where(rng.random(e) < config.focus, interest[owner], noise)
    action = np.searchsorted(np.cumsum(ACTION_PROBS), rng.random(e), side="right").clip(0, 3)
    rank = np.minimum(rng.geometric(0.3, size=e) - 1, config.items_per_category - 1)
    seconds = day_ts + DAY_START + np.floor(rng.random(e) * DAY_HOURS).astype(np.int64)
    order = np.lexsort((seconds, owner))
    return pd.DataFrame(
        {
            "user": owner[order],
            "category": category[order],
            "item": (category * config.items_per_category + rank)[order],
            "action": action[order],
            "timestamp": seconds[order],
        }
    )


def label_given_state(
    world: World, config: SynthConfig, users: Users, rng: np.random.Generator
) -> np.ndarray:
    """Q[s, k, c] = P(label c | shop s, the day's interest k), by Monte Carlo with the task's rule."""
    n_shops, n_cat = world.shop_chain.shape[0], world.n_categories
    q = np.zeros((n_shops, n_cat, n_cat))
    m = ORACLE_SAMPLES
    for s in range(n_shops):
        rates = users.rate[users.shop == s]
        for k in range(world.n_interests):  # the tail is never an interest
            counts = 1 + rng.poisson(rng.choice(rates, size=m))
            owner = np.repeat(np.arange(m), counts)
            e = len(owner)
            noise = off_interest(world, config, np.full(e, s, dtype=np.int64), rng)
            category = np.where(rng.random(e) < config.focus, k, noise)
            action = np.searchsorted(np.cumsum(ACTION_PROBS), rng.random(e), side="right").clip(0, 3)
            weight = ACTION_WEIGHTS[action]
            label = top_class(owner, category, weight, m, prefer_last=False)
            q[s, k] = np.bincount(label, minlength=n_cat) / m
    return q


def next_interest(world: World, config: SynthConfig, shop: int, chain: int, pos: int, dwell: int) -> np.ndarray:
    """P(tomorrow's interest) for a user in ``(chain, pos)`` after ``dwell`` days there."""
    n_cat = world.n_categories
    h = float(hazard(np.array([dwell]), config.migration_rate)[0])
    weights = world.shop_chain[shop]
    starts = np.zeros(n_cat)
    np.add.at(starts, world.chain_cat[:, 0], weights)
    anywhere = world.shop_background[shop]  # a random position of a shop-weighted chain
    p = np.zeros(n_cat)
    p[world.chain_cat[chain, pos]] += 1 - h
    if pos + 1 < world.chain_len[chain]:
        p[world.chain_cat[chain, pos + 1]] += h * config.chain_follow
    else:
        p += h * config.chain_follow * starts
    p += h * (1 - config.chain_follow) * anywhere
    return p


def oracle_accuracy_table(world: World, config: SynthConfig, q: np.ndarray) -> np.ndarray:
    """acc[s, chain, pos, dwell-1] = max_c P(label c | hidden state): the Bayes-optimal hit rate."""
    n_shops, n_chains, max_len = q.shape[0], len(world.chain_len), world.chain_cat.shape[1]
    table = np.zeros((n_shops, n_chains, max_len, len(DWELL_HAZARD)))
    for s in range(n_shops):
        for c in range(n_chains):
            for p in range(world.chain_len[c]):
                for d in range(1, len(DWELL_HAZARD) + 1):
                    table[s, c, p, d - 1] = (next_interest(world, config, s, c, p, d) @ q[s]).max()
    return table


@dataclass
class SyntheticData:
    config: SynthConfig
    world: World
    events: pd.DataFrame  # user, category, item, action, timestamp, shop (indices)
    ground_truth: dict


def generate(config: SynthConfig) -> SyntheticData:
    """Simulate ``config.days`` days; deterministic for a given config (seed included)."""
    rng = np.random.default_rng(config.seed)
    world = make_world(config, rng)
    users = make_users(config, world, rng)
    q = label_given_state(world, config, users, np.random.default_rng([config.seed, 1]))
    oracle = oracle_accuracy_table(world, config, q)

    frames, by_day, moves = [], [], []
    seen = np.zeros(config.users, dtype=np.int64)
    for day in range(config.days):
        day_ts = config.start_ts + day * DAY
        if day:
            # the oracle predicts tonight's move from today's hidden state
            expected = oracle[users.shop, users.chain, users.pos, np.minimum(users.dwell, 4) - 1]
            moves.append(step_interests(users, world, config, rng).mean())
        events = day_events(users, world, config, rng, day_ts)
        if day:
            active = np.bincount(events["user"], minlength=config.users) > 0
            eligible = active & (seen >= ORACLE_TASK["min_history"])
            by_day.append(
                {"t": day_ts, "points": int(eligible.sum()), "accuracy": float(expected[eligible].mean()) if eligible.any() else 0.0}
            )
        seen += np.bincount(events["user"], minlength=config.users)
        frames.append(events)
    events = pd.concat(frames, ignore_index=True)
    events["shop"] = users.shop[events["user"].to_numpy()]
    if config.outliers:
        events = _with_outliers(events, config, np.random.default_rng([config.seed, 2]))
    return SyntheticData(config, world, events, _ground_truth(config, world, users, events, by_day, moves))


def _with_outliers(events: pd.DataFrame, config: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """``config.outliers`` events moved far outside the window: most to 60-90 days before it (a
    clock reset, as in the Taobao file), a few to a year after it."""
    events = events.copy()
    pick = rng.choice(len(events), size=min(config.outliers, len(events)), replace=False)
    before = rng.random(len(pick)) < 0.8
    shift = np.where(before, -rng.integers(60, 90, size=len(pick)) * DAY,
                     (config.days + 365) * DAY)
    events.loc[events.index[pick], "timestamp"] = events["timestamp"].to_numpy()[pick] + shift
    return events


def _ground_truth(config, world, users, events, by_day, moves) -> dict:
    points = sum(d["points"] for d in by_day)
    overall = sum(d["points"] * d["accuracy"] for d in by_day) / max(points, 1)
    shops = {}
    for s in range(config.shops):
        shops[shop_name(s)] = {
            "users": int((users.shop == s).sum()),
            "events": int((events["shop"] == s).sum()),
            "chain_weights": {n: round(float(w), 4) for n, w in zip(world.chain_names, world.shop_chain[s])},
        }
    return {
        "generator": "fedinterest synth",
        "config": asdict(config),
        "categories": [{"id": str(category_id(i)), "name": n} for i, n in enumerate(world.names)],
        "chains": {n: [world.names[k] for k in world.chain_cat[c, : world.chain_len[c]]] for c, n in enumerate(world.chain_names)},
        "shops": shops,
        "daily_migration_rate": float(np.mean(moves)) if moves else 0.0,
        "bayes_optimal": {
            "description": "expected acc@1 of a predictor that knows each user's hidden interest state "
            "and the process; an upper bound in expectation for any model of the events"
            + ("" if not config.tail_categories else
               " (approximate with a long tail: it draws tail events afresh, not from each user's own tail)"),
            "task": ORACLE_TASK,
            "accuracy": overall,
            "points": points,
            "by_day": by_day,
        },
    }


def shop_name(index: int) -> str:
    return f"shop_{index:02d}"


def bayes_accuracy_since(ground_truth: dict, start_ts: int, last_ts: int | None = None) -> float:
    """The Bayes-optimal acc@1 over prediction times ``start_ts <= t <= last_ts`` (e.g. a test period)."""
    days = [d for d in ground_truth["bayes_optimal"]["by_day"]
            if d["t"] >= start_ts and (last_ts is None or d["t"] <= last_ts)]
    points = sum(d["points"] for d in days)
    return sum(d["points"] * d["accuracy"] for d in days) / points if points else float("nan")


def write_synthetic(out: str | Path, config: SynthConfig) -> SyntheticData:
    """Generate and write a dataset directory; the manifest is written last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = generate(config)
    ev = data.events
    shops = {}
    for s in range(config.shops):
        rows = ev[ev["shop"] == s]
        csv = pd.DataFrame(
            {
                "user_id": rows["user"].to_numpy() + 1,
                "item_id": 100_000 + rows["item"].to_numpy(),
                "category_id": category_id(rows["category"].to_numpy()),
                "behavior_type": TAOBAO_ACTIONS[rows["action"].to_numpy()],
                "timestamp": rows["timestamp"].to_numpy(),
            }
        )
        name = f"{shop_name(s)}.csv"
        atomic_write_text(out / name, csv.to_csv(header=False, index=False))
        shops[shop_name(s)] = name
    start = config.start_ts
    manifest = {"format": "taobao", "shops": shops, "catalogue": "catalogue.csv",
                "window": [start, start + config.days * DAY]}  # the generator's calendar and catalogue: public
    catalogue = pd.DataFrame({"category_id": category_id(np.arange(data.world.n_categories))})
    if not config.anonymous:
        catalogue["category_name"] = data.world.names
    atomic_write_text(out / "catalogue.csv", catalogue.to_csv(index=False))
    if not config.anonymous:
        names = pd.DataFrame({"category_id": category_id(np.arange(data.world.n_categories)),
                              "category_name": data.world.names})
        atomic_write_text(out / "categories.csv", names.to_csv(index=False))
        k = np.arange(data.world.n_categories * config.items_per_category)
        items = pd.DataFrame(
            {
                "item_id": 100_000 + k,
                "category_id": category_id(k // config.items_per_category),
                "title": [catalog.item_title(data.world.names[i // config.items_per_category],
                                             i % config.items_per_category) for i in k],
            }
        )
        atomic_write_text(out / "items.csv", items.to_csv(index=False))
        manifest.update(category_names="categories.csv", item_titles="items.csv")
    atomic_write_text(out / "ground_truth.json", json.dumps(data.ground_truth, indent=1))
    manifest["ground_truth"] = "ground_truth.json"
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return data


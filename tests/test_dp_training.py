"""DP-SGD on a tiny BERT with LoRA: gradient correctness, weights that move, sampling, empty batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedinterest.client.shop import shop_dataset
from fedinterest.client.training import (
    DPSettings, PoissonBatchSampler, StepRandomness, TrainConfig, logits_of, make_private, release, train_round,
)
from fedinterest.common.model.prefix import adapted_layers_start
from fedinterest.common.config import TaskConfig
from fedinterest.common.model import LoraSettings, build_model, get_adapter_state, load_tokenizer, resolve_backbone
from fedinterest.common.task import prepare_task


@pytest.fixture(scope="module")
def shop(tiny_shop_table):
    backbone = resolve_backbone("tiny")
    task = prepare_task(tiny_shop_table, TaskConfig())
    data = shop_dataset(task.train.subset(np.arange(200)), tiny_shop_table.category_names,
                        load_tokenizer(backbone), max_length=64)
    return backbone, task, data


def fresh_model(shop, **lora):
    backbone, task, _ = shop
    model = build_model(backbone, task.taxonomy.n_classes, LoraSettings(**lora))
    for module in model.modules():  # deterministic forward passes for exact comparisons
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def one(batch, i):
    return {k: v[i : i + 1] for k, v in batch.items()}


def manual_clipped_mean(network, batch, clip):
    """Per-example gradients one at a time, clipped like Opacus, averaged over the batch."""
    grads = []
    for i in range(len(batch["labels"])):
        network.zero_grad()
        example = one(batch, i)
        F.cross_entropy(logits_of(network, example), example["labels"]).backward()
        g = torch.cat([p.grad.detach().flatten().double() for _, p in trainable(network)])
        grads.append(g * min(1.0, clip / (g.norm().item() + 1e-6)))
    network.zero_grad()
    return torch.stack(grads).mean(dim=0), [g.norm().item() for g in grads]


@pytest.mark.parametrize("layers", [None, (-1,)], ids=["all-layers", "frozen-prefix"])
def test_privatised_gradient_equals_mean_of_clipped_per_example_gradients(shop, layers):
    _, _, data = shop
    model = fresh_model(shop, layers=layers)
    data = data.with_prefix(model, adapted_layers_start(model))
    network = data.network(model)
    network.train()
    indices = list(range(12))
    batch = data.batch(indices, torch.device("cpu"))
    clip = 0.05
    expected, _ = manual_clipped_mean(network, batch, clip)
    # clipping must really bind for this test to mean anything
    raw, norms = manual_clipped_mean(network, batch, clip=1e9)
    assert min(norms) > clip

    optimizer = torch.optim.SGD([p for _, p in trainable(network)], lr=0.0)
    loader = DataLoader(data, batch_sampler=[indices], collate_fn=lambda b: b)
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, sample_rate=1.0, steps=1)
    private, dp_optimizer, _ = make_private(network, optimizer, loader, dp, expected_batch=len(indices))
    try:
        F.cross_entropy(logits_of(private, batch), batch["labels"]).backward()
        assert dp_optimizer.pre_step()
        got = torch.cat([p.grad.detach().flatten().double() for _, p in trainable(network)])
    finally:
        release(private, network)
    relative = (got - expected).norm() / expected.norm()
    assert relative < 1e-5, relative
    assert (got - raw).norm() / raw.norm() > 1e-2  # and clipping changed the result


def test_adapter_weights_change_after_one_step_and_frozen_ones_do_not(shop):
    _, _, data = shop
    model = fresh_model(shop)
    before = get_adapter_state(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = TrainConfig(batch_size=8, max_steps=1)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=8 / len(data), steps=1)
    train_round(model, data, config, dp, seed=1)
    after = get_adapter_state(model)
    for key in before:
        assert not np.array_equal(before[key], after[key]), f"{key} did not change"
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # hooks released


def test_empty_poisson_batches_take_a_noise_step(shop):
    _, _, data = shop
    model = fresh_model(shop)
    before = get_adapter_state(model)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1e-6, steps=3)
    stats = train_round(model, data, TrainConfig(batch_size=1), dp, seed=2)
    assert stats.empty_batches == 3 and stats.samples == 0
    after = get_adapter_state(model)
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the noise was applied


def test_logical_batches_larger_than_physical_ones(shop):
    _, _, data = shop
    model = fresh_model(shop)
    config = TrainConfig(batch_size=40, physical_batch_size=8, max_steps=2)
    dp = DPSettings(noise_multiplier=0.5, max_grad_norm=1.0, sample_rate=40 / len(data), steps=2, unit="example")
    stats = train_round(model, data, config, dp, seed=3)
    assert stats.steps == 2 and stats.samples > 16  # several physical batches per step


def test_poisson_sampler_rate_and_user_level_sampling(shop):
    _, _, data = shop
    sampler = PoissonBatchSampler(len(data), 0.1, 400, StepRandomness(0))
    sizes = [len(b) for b in sampler]
    assert abs(np.mean(sizes) - 0.1 * len(data)) < 0.1 * len(data) * 0.1
    members = data.user_members()
    user_sampler = PoissonBatchSampler(len(members), 0.5, 50, StepRandomness(0), members)
    for batch in user_sampler:
        users = data.users[batch]
        assert len(users) == len(set(users.tolist()))  # at most one example per user per step


def test_non_private_mode_trains(shop):
    _, _, data = shop
    model = fresh_model(shop)
    before = get_adapter_state(model)
    stats = train_round(model, data, TrainConfig(batch_size=16, max_steps=2), None, seed=4)
    assert not stats.private and stats.steps == 2
    after = get_adapter_state(model)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def sgd(params, lr=1.0):
    return torch.optim.SGD(params, lr=lr)  # the parameter change is minus lr × the privatised gradient


def flat_trainable(model):
    return torch.cat([p.detach().flatten().double() for _, p in trainable(model)])


def test_physical_batches_add_up_to_the_clipped_sum_over_the_planned_batch(shop):
    """One logical batch of 40 in physical batches of 8 = brute-force clipped sum / planned batch."""
    _, _, data = shop
    data = data.subset(np.arange(40))
    model = fresh_model(shop)
    network = data.network(model)
    network.train()
    clip, planned = 0.01, 50.0  # the divisor is the plan's, not the 40 examples this step happened to get
    batch = data.batch(list(range(40)), torch.device("cpu"))
    expected, _ = manual_clipped_mean(network, batch, clip)
    assert min(manual_clipped_mean(network, batch, 1e9)[1]) > clip  # clipping binds
    expected = expected * 40 / planned
    before = flat_trainable(model)
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, sample_rate=1.0, steps=1, unit="example",
                    expected_batch_size=planned)
    lr = 1e4  # a large step keeps the change far above float32 rounding of the weights
    stats = train_round(model, data, TrainConfig(batch_size=40, physical_batch_size=8), dp, seed=5,
                        make_optimizer=lambda params: sgd(params, lr))
    assert stats.samples == 40 and stats.steps == 1
    got = (before - flat_trainable(model)) / lr
    relative = ((got - expected).norm() / expected.norm()).item()
    assert relative < 1e-5, relative


@pytest.mark.parametrize("seed", [None, 11], ids=["csprng", "seeded"])
def test_noise_std_is_sigma_clip_over_the_planned_batch(shop, seed):
    _, _, data = shop
    model = fresh_model(shop)
    sigma, clip, planned = 2.0, 0.5, 10.0
    dp = DPSettings(noise_multiplier=sigma, max_grad_norm=clip, sample_rate=1e-9, steps=1, unit="example",
                    expected_batch_size=planned)  # an empty batch: the step is noise only
    noise = []
    for r in range(8):  # eight noise-only rounds: enough values to pin the std down to a few percent
        before = flat_trainable(model)
        stats = train_round(model, data, TrainConfig(), dp, seed=None if seed is None else seed + r,
                            make_optimizer=sgd)
        assert stats.empty_batches == 1
        noise.append((flat_trainable(model) - before).numpy())
    n = sum(x.size for x in noise)
    first, noise = noise[0], np.concatenate(noise)
    expected = sigma * clip / planned
    assert abs(noise.std() / expected - 1) < 5 / np.sqrt(2 * n)  # std estimate: relative error ~ 1/sqrt(2n)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(n)

    again = fresh_model(shop)
    before = flat_trainable(again)
    train_round(again, data, TrainConfig(), dp, seed=seed, make_optimizer=sgd)
    same = np.array_equal((flat_trainable(again) - before).numpy(), first)
    assert same == (seed is not None)  # seeded runs repeat; CSPRNG runs never do


def test_poisson_sampling_matches_its_definition(shop):
    """Inclusion frequencies are q for every unit, independent across steps; one uniform example per user."""
    _, _, data = shop
    q, steps = 0.3, 2000
    counts = np.zeros(len(data))
    pair = 0
    for batch in PoissonBatchSampler(len(data), q, steps, StepRandomness(None)):
        member = np.zeros(len(data), dtype=bool)
        member[batch] = True
        counts += member
        pair += member[0] and member[1]
    # per-unit inclusion ~ Binomial(steps, q): all within 5 standard deviations
    sd = np.sqrt(steps * q * (1 - q))
    assert np.all(np.abs(counts - steps * q) < 5 * sd)
    assert abs(pair - steps * q * q) < 5 * np.sqrt(steps * q * q)  # independence of two units

    members = data.user_members()
    big = max(range(len(members)), key=lambda u: len(members[u]))
    picks = np.zeros(len(members[big]))
    position = {int(e): i for i, e in enumerate(members[big])}
    for batch in PoissonBatchSampler(len(members), 1.0, 3000, StepRandomness(3), members):
        users = data.users[batch]
        assert len(batch) == len(members) and len(set(users.tolist())) == len(members)  # one example per user
        chosen = [e for e in batch if e in position]
        assert len(chosen) == 1
        picks[position[chosen[0]]] += 1
    expected = 3000 / len(picks)
    chi2 = ((picks - expected) ** 2 / expected).sum()
    assert chi2 < len(picks) + 6 * np.sqrt(2 * len(picks)), chi2  # uniform within the user

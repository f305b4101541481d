"""The fast DP-SGD step (client.fast_dp) against brute force and Opacus, on the tiny BERT with LoRA."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedinterest.client.fast_dp import FastDPStep, UnsupportedParameterError
from fedinterest.client.training import (
    DPSettings, ShopDataset, TrainConfig, logits_of, make_private, release, train_round,
)
from fedinterest.common.config import ConfigError
from fedinterest.common.model import LoraSettings, build_model, get_adapter_state, resolve_backbone
from fedinterest.common.model.prefix import adapted_layers_start
from fedinterest.common.task.features import FEATURE_NAMES, HistoryFeatures

N_CLASSES = 7


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads; on a loaded machine they cost seconds a test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return resolve_backbone("tiny")


def make_model(backbone, seed: int = 0, train_classifier: bool = False, **lora):
    """The project's model, without dropout, its trainable tensors moved off their (partly zero) start."""
    torch.manual_seed(seed)
    model = build_model(backbone, N_CLASSES, LoraSettings(**lora))
    for name, param in model.named_parameters():
        if train_classifier and "classifier.modules_to_save" in name:
            param.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    model.train()
    return model


def make_batch(n: int = 10, width: int = 16, seed: int = 0, loud: float = 30.0) -> dict[str, torch.Tensor]:
    """Token ids with padding (lengths from 3 to ``width``), history features; every other example's
    features scaled by ``loud``, so per-example gradient norms spread over orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 90, (n, width), generator=g) * mask
    history = 4
    values = torch.rand(n, history, len(FEATURE_NAMES), generator=g)
    values[::2] *= loud
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, N_CLASSES, (n,), generator=g),
            "feature_classes": torch.randint(-1, N_CLASSES, (n, history), generator=g),
            "feature_values": values, "current": torch.randint(0, N_CLASSES, (n,), generator=g)}


def example(batch, i):
    """Example ``i`` alone, without its padding."""
    length = int(batch["attention_mask"][i].sum())
    out = {k: v[i : i + 1] for k, v in batch.items()}
    out["input_ids"], out["attention_mask"] = out["input_ids"][:, :length], out["attention_mask"][:, :length]
    return out


def loss_of(model, batch):
    return F.cross_entropy(logits_of(model, batch), batch["labels"])


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def flat(tensors):
    return torch.cat([t.detach().flatten().double() for t in tensors])


def brute_force(model, batch, clip):
    """One backward per (unpadded) example, clipped like Opacus, summed; and the unclipped norms."""
    params = trainable(model)
    total, norms = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64), []
    for i in range(len(batch["labels"])):
        grads = torch.autograd.grad(loss_of(model, example(batch, i)), params, allow_unused=True)
        g = flat([torch.zeros_like(p) if d is None else d for d, p in zip(grads, params)])
        norms.append(g.norm().item())
        total += g * min(1.0, clip / (norms[-1] + 1e-6))
    return total, norms


def opacus_sum(model, batch, clip):
    """Opacus hooks' clipped sum on the same batch (noise 0, divisor 1)."""
    optimizer = torch.optim.SGD(trainable(model), lr=0.0)
    loader = DataLoader(range(len(batch["labels"])), batch_sampler=[list(range(len(batch["labels"])))],
                        collate_fn=lambda b: b)
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, sample_rate=1.0, steps=1)
    private, dp_optimizer, _ = make_private(model, optimizer, loader, dp, expected_batch=1.0)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            loss_of(private, batch).backward()
        assert dp_optimizer.pre_step()
        return flat(p.grad for p in trainable(model))
    finally:
        optimizer.zero_grad(set_to_none=True)
        release(private, model)


def fast_sum(model, batch, clip, **kwargs):
    with FastDPStep(model, clip, noise_multiplier=0.0, expected_batch_size=1.0, **kwargs) as fast:
        fast.accumulate(lambda: loss_of(model, batch))
        return flat(fast.privatise())


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("variant", ["ffa", "plain-lora", "trained-head-ghost", "ghost"])
def test_clipped_sum_equals_brute_force_and_opacus(backbone, variant):
    model = make_model(backbone, train_classifier=variant == "trained-head-ghost", ffa=variant != "plain-lora")
    batch = make_batch()
    assert (batch["attention_mask"] == 0).any()  # padding in the batch
    _, norms = brute_force(model, batch, clip=math.inf)
    clip = math.sqrt(min(norms) * max(norms))
    assert max(norms) > 3 * clip and min(norms) < clip / 3  # clipping binds hard for some, not for others
    assert sum(n > clip for n in norms) >= 3 and sum(n < clip for n in norms) >= 3
    expected, _ = brute_force(model, batch, clip)
    got = fast_sum(model, batch, clip, strategy="ghost" if variant == "ghost" else "auto")
    assert relative(got, expected) < 1e-4
    assert relative(got, opacus_sum(model, batch, clip)) < 1e-4
    unclipped, _ = brute_force(model, batch, clip=math.inf)
    assert relative(got, unclipped) > 1e-2  # and clipping changed the result


def test_strategies_agree_and_auto_materialises_lora_b(backbone):
    model = make_model(backbone, train_classifier=True)
    batch = make_batch(seed=1)
    ghost = fast_sum(model, batch, 0.1, strategy="ghost")
    assert relative(fast_sum(model, batch, 0.1, strategy="materialise"), ghost) < 1e-5
    fast = FastDPStep(model, 1.0, 0.0, 1.0)
    try:
        x, d = torch.zeros(2, 16, 8), torch.zeros(2, 16, 32)  # a lora_B: 16 tokens, rank 8, width 32
        assert not fast._ghost(x, d) and fast._ghost(torch.zeros(2, 1, 32), torch.zeros(2, 1, N_CLASSES))
    finally:
        fast.remove()


def test_padded_positions_have_exactly_zero_output_gradient(backbone):
    model = make_model(backbone)
    batch = make_batch(seed=2)
    fast = FastDPStep(model, 1.0, 0.0, 1.0)
    try:
        loss = loss_of(model, batch)
        sites = [s for s in fast.sites if "lora_B" in s.name]
        outputs = [y for s in sites for y in s.outputs]
        deltas = torch.autograd.grad(loss, outputs)
    finally:
        fast.remove()
    padded = batch["attention_mask"] == 0
    for delta in deltas:
        assert torch.all(delta[padded] == 0)
        assert delta[~padded].abs().max() > 0


def test_physical_batches_add_up_and_step_divides_by_the_planned_batch(backbone):
    model = make_model(backbone, seed=3)
    batch = make_batch(n=12, seed=3)
    clip, planned = 0.2, 20.0
    expected, _ = brute_force(model, batch, clip)
    before = flat(trainable(model))
    optimizer = torch.optim.SGD(trainable(model), lr=1.0)
    with FastDPStep(model, clip, 0.0, planned) as fast:
        for chunk in np.array_split(np.arange(12), 3):
            part = {k: v[torch.as_tensor(chunk)] for k, v in batch.items()}
            loss = loss_of(model, part)  # the loss itself (forward already run), not a callable
            assert torch.equal(fast.accumulate(loss), loss.detach())
        assert fast.samples == 12
        fast.step(optimizer, torch.Generator())
        assert all(p.grad is None for p in trainable(model))
    got = before - flat(trainable(model))
    assert relative(got, expected / planned) < 1e-4


def test_noise_is_sigma_clip_over_planned_batch_independent_of_data_and_as_opacus(backbone):
    model = make_model(backbone, seed=4)
    sigma, clip, planned = 2.0, 0.5, 10.0
    batch = make_batch(n=6, seed=4)
    signal = fast_sum(model, batch, clip) / planned
    noise = []
    with FastDPStep(model, clip, sigma, planned) as fast:
        for seed in range(10):
            noise.append(flat(fast.privatise(torch.Generator().manual_seed(seed))))  # empty logical batch
        fast.accumulate(lambda: loss_of(model, batch))
        with_data = flat(fast.privatise(torch.Generator().manual_seed(0)))
        again = flat(fast.privatise(torch.Generator().manual_seed(0)))
    assert torch.equal(again, noise[0])  # the seed fixes the noise
    assert torch.allclose(with_data - signal, noise[0], atol=1e-6)  # the data changes nothing in the noise
    values = torch.cat(noise).numpy()
    n, std = values.size, sigma * clip / planned
    assert abs(values.std() / std - 1) < 5 / math.sqrt(2 * n)
    assert abs(values.mean()) < 5 * std / math.sqrt(n)
    assert abs(np.corrcoef(noise[0].numpy(), noise[1].numpy())[0, 1]) < 5 / math.sqrt(noise[0].numel())

    # the same generator state gives Opacus' noise, draw for draw
    optimizer = torch.optim.SGD(trainable(model), lr=0.0)
    loader = DataLoader(range(1), batch_sampler=[[0]], collate_fn=lambda b: b)
    dp = DPSettings(noise_multiplier=sigma, max_grad_norm=clip, sample_rate=1.0, steps=1)
    private, dp_optimizer, _ = make_private(model, optimizer, loader, dp, expected_batch=planned)
    try:
        dp_optimizer.generator.manual_seed(3)
        for p in dp_optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape))
        assert dp_optimizer.pre_step()
        opacus_noise = flat(p.grad for p in trainable(model))
    finally:
        optimizer.zero_grad(set_to_none=True)
        release(private, model)
    assert torch.equal(opacus_noise, noise[3])


@pytest.mark.parametrize("make_trainable", ["word_embeddings", "LayerNorm"])
def test_unsupported_trainable_module_is_a_clear_error(backbone, make_trainable):
    model = make_model(backbone)
    name = next(n for n, _ in model.named_parameters() if make_trainable in n)
    dict(model.named_parameters())[name].requires_grad_(True)
    with pytest.raises(UnsupportedParameterError, match=name.replace(".", r"\.")):
        FastDPStep(model, 1.0, 1.0, 8.0)
    assert not any(m._forward_hooks for m in model.modules())  # nothing left behind


def test_a_trainable_layer_the_forward_skips_is_an_error_and_remove_takes_the_hooks_off(backbone):
    model = make_model(backbone)
    batch = make_batch(n=4)
    fast = FastDPStep(model, 1.0, 0.0, 4.0)
    assert sum(len(m._forward_hooks) for m in model.modules()) == len(fast.sites)
    assert all("lora_B" in s.name or "scorer" in s.name for s in fast.sites)  # hooks on trainable layers only
    with pytest.raises(RuntimeError, match="scorer"):  # the head alone: the scorer never runs
        fast.accumulate(lambda: F.cross_entropy(model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).logits,
                                                batch["labels"]))
    fast.remove()
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in trainable(model))


def test_bf16_autocast_is_close_to_fp32(backbone):
    model = make_model(backbone, seed=5)
    batch = make_batch(n=6, seed=5)
    reference = fast_sum(model, batch, 0.5)
    with FastDPStep(model, 0.5, 0.0, 1.0) as fast:
        fast.accumulate(lambda: F.cross_entropy(logits_of(model, batch, bf16=True), batch["labels"]))
        got = fast.privatise()
    assert all(g.dtype == torch.float32 for g in got)
    assert relative(flat(got), reference) < 5e-2


# ---------------------------------------------------------------------------- in train_round


def shop_data(n: int = 48, seed: int = 6) -> ShopDataset:
    batch = make_batch(n=n, seed=seed)
    return ShopDataset(batch["input_ids"].numpy(), batch["attention_mask"].sum(dim=1).numpy(), batch["labels"].numpy(),
                       np.arange(n) // 2, HistoryFeatures(batch["feature_classes"].numpy(),
                                                          batch["feature_values"].numpy()),
                       batch["current"].numpy())


def round_delta(backbone, data, engine, dp, dropout: bool, sgd: bool = False, layers=None, **config):
    model = make_model(backbone, seed=7, layers=layers)
    data = data.with_prefix(model, adapted_layers_start(model))  # layers below the adapters: cached
    if dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.1
    before = flat(map(torch.as_tensor, get_adapter_state(model).values()))
    make_optimizer = (lambda params: torch.optim.SGD(params, lr=1.0)) if sgd else None  # None: AdamW
    stats = train_round(model, data, TrainConfig(dp_engine=engine, **config), dp, seed=8,
                        make_optimizer=make_optimizer)
    after = flat(map(torch.as_tensor, get_adapter_state(model).values()))
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # hooks off afterwards
    return after - before, stats


@pytest.mark.parametrize("noise,unit,dropout,sgd,layers", [
    (0.0, "example", False, True, None), (0.8, "user", True, False, None), (0.0, "example", False, True, (-1,)),
], ids=["no-noise-sgd", "noise-user-level-dropout-adamw", "frozen-prefix-no-noise-sgd"])
def test_a_fast_round_trains_the_same_adapter_as_an_opacus_round(backbone, noise, unit, dropout, sgd, layers):
    """Same seed, same sampling, physical batches and noise draws: the same adapter.

    Without noise the optimizer is SGD: some scorer weights have a gradient that is zero in exact
    arithmetic (features constant across classes under uniform priors) and rounding noise in each
    engine's, which AdamW would blow up to ±lr. With noise no coordinate's gradient is near zero."""
    data = shop_data()
    dp = DPSettings(noise_multiplier=noise, max_grad_norm=1.0, sample_rate=0.5, steps=3, unit=unit,
                    expected_batch_size=12.0)
    config = {"batch_size": 12, "physical_batch_size": 5, "learning_rate": 1e-2}
    opacus, opacus_stats = round_delta(backbone, data, "opacus", dp, dropout, sgd, layers, **config)
    fast, fast_stats = round_delta(backbone, data, "fast", dp, dropout, sgd, layers, **config)
    assert fast_stats.samples == opacus_stats.samples > 2 * 5  # several physical batches per step
    assert (fast_stats.empty_batches, fast_stats.private) == (opacus_stats.empty_batches, True)
    assert abs(fast_stats.mean_loss - opacus_stats.mean_loss) < 1e-5
    assert opacus.norm() > 0 and relative(fast, opacus) < 1e-4


def test_a_fast_round_of_empty_batches_takes_opacus_noise_steps(backbone):
    data = shop_data(n=8)
    dp = DPSettings(noise_multiplier=1.5, max_grad_norm=0.5, sample_rate=1e-9, steps=2, unit="example",
                    expected_batch_size=4.0)
    opacus, _ = round_delta(backbone, data, "opacus", dp, False)
    fast, stats = round_delta(backbone, data, "fast", dp, False)
    assert stats.empty_batches == 2 and stats.samples == 0
    assert opacus.norm() > 0 and relative(fast, opacus) < 1e-6


def test_a_fast_round_falls_back_to_opacus_for_unsupported_trainable_tensors(backbone):
    data = shop_data(n=16)
    model = make_model(backbone)
    norm = next(p for n, p in model.named_parameters() if "LayerNorm" in n)
    norm.requires_grad_(True)
    before = norm.detach().clone()
    dp = DPSettings(noise_multiplier=0.5, max_grad_norm=1.0, sample_rate=0.5, steps=1, unit="example")
    with pytest.warns(RuntimeWarning, match="LayerNorm.*trains with Opacus"):
        stats = train_round(model, data, TrainConfig(dp_engine="fast", batch_size=8), dp, seed=9)
    assert stats.private and not torch.equal(norm.detach(), before)


def test_dp_engine_is_validated():
    with pytest.raises(ConfigError, match="dp_engine"):
        TrainConfig(dp_engine="jax")
    assert TrainConfig().dp_engine == "opacus"


def test_a_shop_chooses_its_dp_engine_in_its_node_config():
    from fedinterest.client.node import NodeSettings, train_config
    from fedinterest.common.settings import LocalTraining, RoundConfig

    base = {"data-path": "shop.csv", "state-dir": "state"}
    round_config = RoundConfig(round=1, rounds=2, backbone="tiny", training=LocalTraining())
    assert train_config(round_config, NodeSettings.from_node_config(base)).dp_engine == "opacus"
    fast = NodeSettings.from_node_config({**base, "dp-engine": "fast"})
    assert train_config(round_config, fast).dp_engine == "fast"
    with pytest.raises(ConfigError, match="'dp-engine' must be one of opacus, fast"):
        NodeSettings.from_node_config({**base, "dp-engine": "hooks"})


def test_gpu_batches_are_padded_to_multiples_of_eight_within_the_encoded_width():
    from fedinterest.client.training import padded_width

    assert [padded_width(n, 48, 8) for n in (1, 8, 9, 41, 47, 48)] == [8, 8, 16, 48, 48, 48]
    assert padded_width(45, 45, 8) == 45  # never past the encoded tokens
    assert padded_width(13, 48, 1) == 13  # a CPU batch keeps its longest example's width


def test_both_engines_draw_their_noise_in_float64():
    """Float32 normals come from 24-bit uniforms and never pass about 5.77σ, a tail the accountant does not
    assume; both engines draw in float64 (53-bit uniforms: about 8.6σ) and cast after. The engines'
    agreement above (same generator, same draws) holds with these draws."""
    from fedinterest.client.fast_dp import gaussian_noise

    generator = torch.Generator().manual_seed(0)
    draws = gaussian_noise(2.0, (1_000_000,), "cpu", generator)
    assert draws.dtype == torch.float64 and abs(float(draws.std()) - 2.0) < 1e-2
    again = gaussian_noise(2.0, (1_000_000,), "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # reproducible from the generator, as the engines need
    assert 5.7 < math.sqrt(-2 * math.log(2.0**-24)) < 5.8 < math.sqrt(-2 * math.log(2.0**-53))

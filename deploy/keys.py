"""A merchant's two public keys, as one file it sends to the platform.

Flower authenticates SuperNodes with an ECDSA key on a NIST curve (OpenSSH format); our SecAgg+
signs advertisements with Ed25519. The two cannot be one key, so a shop has both, made together by
``fedinterest node init`` and sent together in ``public-keys.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedinterest.common.atomic import atomic_write_bytes, atomic_write_text
from fedinterest.common.config import ConfigError

PUBLIC_KEYS_FORMAT = "fedinterest-shop-keys/1"


def make_supernode_key(private_path: Path, public_path: Path) -> str:
    """An ECDSA P-384 key pair in OpenSSH format (Flower's SuperNode authentication); the public line."""
    if private_path.exists():
        raise ConfigError(f"{private_path} already exists; refusing to overwrite a SuperNode key")
    key = ec.generate_private_key(ec.SECP384R1())
    atomic_write_bytes(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                       serialization.NoEncryption()), mode=0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    atomic_write_text(public_path, public + "\n")
    return public


@dataclass(frozen=True)
class ShopKeys:
    """A shop's public keys: Flower's SuperNode key (OpenSSH line) and its SecAgg identity (Ed25519)."""

    supernode: str
    identity: bytes

    def __post_init__(self) -> None:
        try:
            key = serialization.load_ssh_public_key(self.supernode.encode())
        except (ValueError, TypeError) as err:
            raise ConfigError(f"shop keys: 'supernode' is not an OpenSSH public key ({err})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError("shop keys: 'supernode' must be an ECDSA key (ecdsa-sha2-nistp384), as "
                              "`fedinterest node init` makes")
        if len(self.identity) != 32:
            raise ConfigError("shop keys: 'identity' must be an Ed25519 public key (64 hex digits)")

    def to_json(self) -> str:
        return json.dumps({"format": PUBLIC_KEYS_FORMAT, "supernode": self.supernode,
                           "identity": self.identity.hex()}, sort_keys=True)

    @classmethod
    def parse(cls, text: str, where: str) -> "ShopKeys":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("format") != PUBLIC_KEYS_FORMAT:
            raise ConfigError(f"{where}: not a shop's public keys (a {PUBLIC_KEYS_FORMAT!r} JSON object, as "
                              "`fedinterest node init` prints and writes to public-keys.json)")
        missing = {"supernode", "identity"} - set(data)
        if missing:
            raise ConfigError(f"{where}: the field(s) {sorted(missing)} are missing")
        try:
            identity = bytes.fromhex(str(data["identity"]))
        except ValueError:
            raise ConfigError(f"{where}: 'identity' must be 64 hex digits") from None
        return cls(supernode=str(data["supernode"]).strip(), identity=identity)

    @classmethod
    def read(cls, source: str) -> "ShopKeys":
        """From a file path, or from the JSON text itself (as pasted from the merchant's email)."""
        path = Path(source)
        if not source.lstrip().startswith("{"):
            try:
                return cls.parse(path.read_text(), str(path))
            except OSError as err:
                raise ConfigError(f"{source}: cannot read the shop's public keys ({err.strerror})") from None
        return cls.parse(source, "public keys")

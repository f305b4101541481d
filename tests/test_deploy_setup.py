"""The platform's and the merchants' directories: certificates, keys, roster, checks before anything runs."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography import x509

from fedinterest.cli import main
from fedinterest.common.config import ConfigError
from fedinterest.common.secagg import Roster
from fedinterest.deploy import flower, tls
from fedinterest.deploy.keys import ShopKeys
from fedinterest.deploy.merchant import NodeDir, diagnose, init_node, node_config, pin_roster
from fedinterest.deploy.platform import PlatformDir, add_shop, init_platform, start_platform

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


@pytest.fixture
def platform(tmp_path, synthetic_dir):
    return init_platform(tmp_path / "platform", address="127.0.0.1:9092", catalogue=synthetic_dir,
                         run_config={"num-server-rounds": 2})


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from fedinterest.simulations.synthetic import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, SynthConfig(shops=3, users=90, days=12, seed=2))
    return out


def test_the_server_certificate_is_signed_by_the_ca_for_the_hosts_and_keys_are_private(platform):
    ca = x509.load_pem_x509_certificate(platform.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(platform.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert set(tls.certificate_hosts(platform.cert)) == {"localhost", "127.0.0.1", "::1"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other_key, other = tls.make_ca("other")
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(other)
    assert stat.S_IMODE(platform.key.stat().st_mode) == 0o600
    assert not (platform.root / "ca.key").exists()  # signed, then discarded
    settings = platform.settings()
    assert settings["run_config"]["roster"] == str(platform.roster) and not settings["insecure"]
    assert json.loads(platform.roster.read_text())["shops"] == {}


def test_a_platform_directory_is_never_made_twice_and_needs_a_task(tmp_path, platform, synthetic_dir):
    with pytest.raises(ConfigError, match="already a platform directory"):
        init_platform(platform.root, address="127.0.0.1:9092", catalogue=synthetic_dir)
    with pytest.raises(ConfigError, match="--task-spec FILE, or --catalogue"):
        init_platform(tmp_path / "other", address="127.0.0.1:9092")
    with pytest.raises(ConfigError, match="unknown key"):
        init_platform(tmp_path / "third", address="127.0.0.1:9092", catalogue=synthetic_dir, run_config={"lrr": 1})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        init_platform(tmp_path / "fourth", address="localhost", catalogue=synthetic_dir)


def test_shops_join_the_roster_once_each(tmp_path, platform):
    nodes = [init_node(tmp_path / f"shop{i}") for i in range(3)]
    add_shop(platform.root, "a", nodes[0])
    roster = add_shop(platform.root, "b", nodes[1])
    assert sorted(roster.keys) == ["a", "b"] and Roster.load(platform.roster).fingerprint() == roster.fingerprint()
    assert (platform.shops / "a.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(ConfigError, match="already on the roster"):
        add_shop(platform.root, "a", nodes[2])
    with pytest.raises(ConfigError, match="already registered as shop 'a'"):
        add_shop(platform.root, "c", nodes[0])
    with pytest.raises(ConfigError, match="shop name"):
        add_shop(platform.root, "../evil", nodes[2])
    # the platform refuses to start a run the roster cannot carry
    with pytest.raises(ConfigError, match="lists 2 shop"):
        start_platform(platform.root)


def test_shop_keys_travel_as_one_checked_file(tmp_path):
    keys = init_node(tmp_path / "shop")
    node = NodeDir(tmp_path / "shop")
    assert ShopKeys.read(str(node.public_keys)) == keys == ShopKeys.read(keys.to_json())
    assert stat.S_IMODE(node.supernode_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.identity.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already a node directory"):
        init_node(tmp_path / "shop")
    bad = json.loads(keys.to_json())
    bad["identity"] = "zz"
    with pytest.raises(ConfigError, match="'identity' must be 64 hex digits"):
        ShopKeys.read(json.dumps(bad))
    bad = json.loads(keys.to_json())
    bad["supernode"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with pytest.raises(ConfigError, match="must be an ECDSA key"):
        ShopKeys.read(json.dumps(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        ShopKeys.read(str(tmp_path / "missing.json"))


def test_a_node_pins_its_roster_and_refuses_one_without_it_or_a_changed_one(tmp_path):
    keys = {name: init_node(tmp_path / name) for name in ("a", "b", "c", "d")}
    node = NodeDir(tmp_path / "a")
    roster = Roster({name: k.identity for name, k in keys.items() if name != "d"})
    roster.save(tmp_path / "roster.json")
    assert pin_roster(node, tmp_path / "roster.json").fingerprint() == roster.fingerprint()
    with pytest.raises(ConfigError, match="not on the roster"):
        pin_roster(NodeDir(tmp_path / "d"), tmp_path / "roster.json")
    changed = Roster({name: k.identity for name, k in keys.items()})
    changed.save(tmp_path / "changed.json")
    with pytest.raises(ConfigError, match="differs from the roster this node pinned"):
        pin_roster(node, tmp_path / "changed.json")
    assert pin_roster(node, tmp_path / "changed.json", repin=True).fingerprint() == changed.fingerprint()
    assert Roster.load(node.roster).fingerprint() == changed.fingerprint()


def test_the_node_config_is_checked_before_the_supernode_starts(tmp_path, synthetic_dir):
    init_node(tmp_path / "a")
    node = NodeDir(tmp_path / "a")
    config = node_config(node, data=str(synthetic_dir), data_format=None, shop="shop_00", epsilon=4.0,
                         extra={"delta": 1e-5})
    assert config["state-dir"] == str(node.root) and config["epsilon"] == 4.0 and config["shop"] == "shop_00"
    with pytest.raises(ConfigError, match="unknown key"):
        node_config(node, data=str(synthetic_dir), data_format=None, shop=None, epsilon=None, extra={"epsilonn": 1})
    with pytest.raises(ConfigError, match="set by their own options"):
        node_config(node, data=str(synthetic_dir), data_format=None, shop=None, epsilon=None,
                    extra={"state-dir": "/tmp"})
    with pytest.raises(ConfigError, match="only\\s+for simulations"):
        node_config(node, data=str(synthetic_dir), data_format=None, shop=None, epsilon=None, extra={"seed": 1})
    assert "data-path='" in flower.toml_pairs(config)
    with pytest.raises(ConfigError, match="cannot hold spaces"):
        flower.toml_pairs({"data-path": "/a b"})


def test_node_start_fails_clearly_on_bad_input(tmp_path, synthetic_dir, capsys):
    keys = init_node(tmp_path / "a")
    Roster({"a": keys.identity}).save(tmp_path / "roster.json")
    base = ["node", "start", str(tmp_path / "a"), "--data", str(synthetic_dir), "--shop", "shop_00",
            "--platform", "127.0.0.1:9", "--roster", str(tmp_path / "roster.json")]
    assert main(base) == 2
    assert "--ca: the platform's CA certificate is required" in capsys.readouterr().err
    assert main([*base, "--ca", str(tmp_path / "nope.pem")]) == 2
    assert "nope.pem: no such file" in capsys.readouterr().err
    (tmp_path / "ca.pem").write_text("x")
    bad_data = ["node", "start", str(tmp_path / "a"), "--data", str(tmp_path / "missing.csv"), "--platform",
                "127.0.0.1:9", "--roster", str(tmp_path / "roster.json"), "--ca", str(tmp_path / "ca.pem")]
    assert main(bad_data) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main(["node", "start", str(tmp_path / "nothing"), "--data", "x", "--platform", "h:1", "--roster", "r"]) == 2
    assert "not a node directory" in capsys.readouterr().err


def test_a_stopped_supernode_is_explained():
    assert "does not verify against --ca" in diagnose("ERROR: SSL/TLS handshake error detected.\nExit Code: 305")
    assert "not registered" in diagnose("[code: 2004] Failed to activate SuperNode.\nExit Code: 305")
    assert "could not reach" in diagnose("Exit Code: 305\n")
    assert diagnose("interrupted") is None


def test_the_app_declares_every_run_config_key_the_server_reads():
    """``flwr run`` refuses a run-config key the app's pyproject does not declare."""
    from pathlib import Path

    from fedinterest.server.settings import DEFAULTS

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(DEFAULTS)


def test_platform_cli_prints_what_to_send(tmp_path, synthetic_dir, capsys):
    assert main(["platform", "init", str(tmp_path / "p"), "--address", "127.0.0.1:9092", "--catalogue",
                 str(synthetic_dir), "--rounds", "2", "--run-config", "lr=0.01 eval-every=1"]) == 0
    out = capsys.readouterr().out
    assert "ca.pem" in out and "was discarded" in out and not (tmp_path / "p" / "ca.key").exists()
    settings = PlatformDir(tmp_path / "p").settings()
    assert settings["run_config"]["lr"] == 0.01 and settings["run_config"]["num-server-rounds"] == 2
    assert main(["node", "init", str(tmp_path / "n")]) == 0
    printed = capsys.readouterr().out
    keys = ShopKeys.read(printed.strip().splitlines()[-1])
    assert main(["platform", "add-shop", str(tmp_path / "p"), "n", str(tmp_path / "n" / "public-keys.json")]) == 0
    assert keys.identity in Roster.load(tmp_path / "p" / "roster.json")
    assert main(["platform", "init", str(tmp_path / "q"), "--address", "127.0.0.1:9092", "--catalogue",
                 str(synthetic_dir), "--insecure"]) == 0
    assert "WARNING: --insecure" in capsys.readouterr().out
    assert not (tmp_path / "q" / "ca.pem").exists()

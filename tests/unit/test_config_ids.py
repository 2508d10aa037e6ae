"""Config decoding (defaults, field-named errors, env overrides) and the id rules."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from fcd_common import config, ids, types
from fcd_common.errors import InvalidArgument


def test_empty_config_has_defaults() -> None:
    cfg = config.decode(b"")
    assert cfg.paths.state_dir == "/var/lib/fcd"
    assert str(cfg.network.gateway) == "172.30.0.1"
    assert cfg.socket("api") == Path("/run/fcd/api.sock")
    assert cfg.state("net") == Path("/var/lib/fcd/net")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[network]\nsubnet = "10.0.0.0/33"', "$.network"),
        ('[network]\nsubnet = "10.0.0.1/24"', "host bits"),
        ("[limits]\nmax_vms = 0", "$.limits.max_vms"),
        ('[limits]\nmax_vms = "x"', "$.limits.max_vms"),
        ("[jail]\nuid_min = 5000\nuid_max = 4000", "uid_min"),
        ('[jail]\nfirecracker = "relative/fc"', "absolute"),
        ("[nope]\nx = 1", "unknown field `nope`"),
        ("[paths]\nstate_dir = 1", "$.paths.state_dir"),
        ("not toml [", "not valid TOML"),
        ('[network]\nbridge = "name-longer-than-15"', "$.network.bridge"),
    ],
)
def test_bad_config_names_the_field(text: str, needle: str) -> None:
    with pytest.raises(config.ConfigError) as ei:
        config.decode(text, source="x.toml")
    assert needle in str(ei.value)
    assert str(ei.value).startswith("x.toml: ")


def test_render_roundtrips() -> None:
    cfg = config.decode('[network]\nsubnet = "10.9.0.0/24"\n[limits]\nboot_timeout_s = 3.5')
    assert config.decode(config.render(cfg)) == cfg


def test_load_missing_default_is_defaults_but_explicit_is_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FCD_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "none.toml"))
    assert config.load().paths.run_dir == "/run/fcd"
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "missing.toml"))
    monkeypatch.setenv("FCD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(config.ConfigError):
        config.load()


def test_env_overrides_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "fcd.toml"
    p.write_text('[jail]\nfirecracker = "/a/firecracker"\n')
    monkeypatch.setenv("FCD_FIRECRACKER", "/opt/fc/firecracker")
    monkeypatch.setenv("FCD_JAILER", "/opt/fc/jailer")
    cfg = config.load(str(p))
    assert (cfg.jail.firecracker, cfg.jail.jailer) == ("/opt/fc/firecracker", "/opt/fc/jailer")
    monkeypatch.setenv("FCD_JAILER", "jailer")
    with pytest.raises(config.ConfigError, match="absolute"):
        config.load(str(p))


@pytest.mark.parametrize("good", ["a", "0", "vm-1", "a" * 64, "abc-def-123"])
def test_vm_id_ok(good: str) -> None:
    assert ids.check_vm_id(good) == good
    # always a valid jailer --id (jail.jailer_argv passes the VM id): 1-64 of [A-Za-z0-9-]
    assert re.fullmatch(r"[A-Za-z0-9-]{1,64}", ids.check_vm_id(good))


@pytest.mark.parametrize("bad", ["", "-a", "A", "a_b", "a" * 65, "a/b", "../x", "a.b", "é", "a b"])
def test_vm_id_bad(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ids.check_vm_id(bad)


@pytest.mark.parametrize("bad", ["", "..", ".", "../etc", "a/b", "/abs", "x..y", "-x", "A"])
def test_name_refuses_paths(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        ids.check_name(bad)


def test_tap_names_short_unique_stable() -> None:
    names = {ids.tap_name(f"vm-{i}") for i in range(5000)}
    assert len(names) == 5000
    assert all(len(n.encode()) <= 15 and n.startswith("fc") for n in names)
    assert ids.tap_name("a" * 64) == ids.tap_name("a" * 64)
    assert (
        ids.tap_name("vm-1", prefix="tap").startswith("tap")
        and len(ids.tap_name("vm-1", "tap")) == 15
    )


def test_new_ids_are_valid() -> None:
    assert all(ids.is_vm_id(ids.new_vm_id()) for _ in range(100))


def test_guest_mac_from_ip() -> None:
    assert ids.guest_mac("172.30.0.2") == "06:00:ac:1e:00:02"
    assert ids.guest_mac("10.0.0.255") == "06:00:0a:00:00:ff"


@pytest.mark.parametrize(
    ("typ", "good"),
    [
        (types.VmId, "vm-1"),
        (types.Name, "base.v1"),
        (types.DriveName, "data"),
        (types.Sha256, "0" * 64),
        (types.KernelArgs, "quiet"),
    ],
)
def test_shared_types_refuse_a_trailing_newline(typ: object, good: str) -> None:
    """msgspec matches with re.search, where ``$`` also matches before a final newline."""
    assert msgspec.json.decode(msgspec.json.encode(good), type=typ) == good
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(good + "\n"), type=typ)
    assert types.fullmatch(types.VM_ID_PATTERN, "vm-1")
    assert not types.fullmatch(types.VM_ID_PATTERN, "vm-1\n")

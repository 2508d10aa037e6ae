"""fcctl's resource flags (create, update) and the update command against a live fcd-api."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from fcd_api import cli
from fcd_api.resources_cli import limit_fields, parse_rate

from .test_fcctl import live_api  # noqa: F401 -- the fixture


def test_parse_rate() -> None:
    assert parse_rate("10M") == 10_000_000
    assert parse_rate("512Ki") == 524_288
    assert parse_rate("1.5G") == 1_500_000_000
    assert parse_rate("0") == 0
    assert parse_rate("2MB/s") == 2_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_rate("fast")


def test_create_body_carries_every_limit() -> None:
    args = cli.build_parser().parse_args(
        [
            "create", "-t", "base", "--drive", "data=8",
            "--cpu-quota", "0.5", "--mem-limit", "256", "--mem-target", "100",
            "--disk-bw", "10M", "--disk-iops", "500",
            "--drive-bw", "data=1Mi", "--drive-iops", "data=20",
            "--net-rx-bw", "1M", "--net-tx-pps", "1000",
            "--balloon-stats", "2", "--deflate-on-oom",
        ]
    )  # fmt: skip
    body = cli.create_body(args)
    assert body["cpu_quota"] == 0.5
    assert (body["mem_limit_mib"], body["mem_target_mib"]) == (256, 100)
    assert body["balloon"] == {"deflate_on_oom": True, "stats_interval_s": 2}
    sec = 1000
    assert body["rate_limits"] == {
        "root": {
            "bandwidth": {"size": 10_000_000, "refill_time_ms": sec},
            "ops": {"size": 500, "refill_time_ms": sec},
        },
        "drives": {
            "data": {
                "bandwidth": {"size": 1 << 20, "refill_time_ms": sec},
                "ops": {"size": 20, "refill_time_ms": sec},
            }
        },
        "net": {
            "rx": {"bandwidth": {"size": 1_000_000, "refill_time_ms": sec}},
            "tx": {"ops": {"size": 1000, "refill_time_ms": sec}},
        },
    }
    plain = cli.create_body(cli.build_parser().parse_args(["create", "-t", "base"]))
    assert not {"rate_limits", "balloon", "cpu_quota"} & set(plain)


def test_update_zero_removes() -> None:
    args = cli.build_parser().parse_args(["update", "vm1", "--disk-bw", "0", "--cpu-quota", "0"])
    assert limit_fields(args) == {
        "cpu_quota": 0.0,
        "rate_limits": {"root": {"bandwidth": {"size": 0, "refill_time_ms": 0}}},
    }


def test_update_against_live_api(live_api: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    def fcctl(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(["--socket", live_api, *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, _, err = fcctl("create", "--id", "vm1", "-t", "base", "--cpu-quota", "0.5", "--balloon",
                       "--disk-bw", "10M")  # fmt: skip
    assert rc == 0, err
    rc, out, err = fcctl("-o", "json", "get", "vm1")
    vm = json.loads(out)
    assert vm["config"]["cpu_quota"] == 0.5
    assert vm["config"]["rate_limits"]["root"]["bandwidth"]["size"] == 10_000_000
    assert "in_force" in vm["resources"]
    rc, out, err = fcctl("update", "vm1", "--cpu-quota", "1.5", "--mem-target", "100")
    assert rc == 0, err
    assert re.search(r"^cpu_quota:\s+1\.5$", out, re.M), out
    assert re.search(r"^mem_target_mib:\s+100$", out, re.M), out
    assert re.search(r"^in_force\.cpu_quota:\s+1\.5$", out, re.M), out
    rc, _, err = fcctl("update", "vm1", "--vcpus", "2")
    assert rc == 1 and err.startswith("error: failed_precondition: vcpu_count cannot change")
    assert fcctl("stop", "vm1")[0] == 0
    rc, out, err = fcctl("-o", "json", "update", "vm1", "--vcpus", "2", "--mem", "256")
    assert rc == 0, err
    view = json.loads(out)
    assert (view["vcpu_count"], view["mem_size_mib"], view["in_force"]) == (2, 256, None)
    rc, _, err = fcctl("update", "vm1")
    assert rc == 1 and "nothing to change" in err
    assert fcctl("rm", "vm1")[0] == 0

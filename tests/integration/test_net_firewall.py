"""fcd_net.firewall's table check against the kernel, in a network namespace of the test's own."""

from __future__ import annotations

import logging
from typing import Any

import nftables
import pytest

from fcd_common.config import NetworkConfig
from fcd_net.firewall import Firewall

from .test_net_links import in_ns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.root


def _nft(cmd: str) -> None:
    rc, _, err = nftables.Nftables().cmd(cmd)
    assert rc == 0, err


def test_present_sees_each_table_go_and_come_back(in_ns: Any) -> None:  # noqa: F811
    """present() is False as soon as either fcd table is gone (a flush, a firewall
    reload), and a table of that name in another family does not count."""

    def body() -> list[bool]:
        fw = Firewall(NetworkConfig(nft_table="fcdt"))
        seen = [fw.present()]  # nothing built yet
        fw.ensure_base([])
        seen.append(fw.present())
        _nft("delete table bridge fcdt")
        seen.append(fw.present())
        fw.ensure_base([])
        seen.append(fw.present())
        _nft("flush ruleset")
        _nft("add table ip fcdt; add table netdev fcdt")  # same name, other families
        seen.append(fw.present())
        fw.ensure_base([])
        seen.append(fw.present())
        return seen

    assert in_ns(body) == [False, True, False, True, False, True]


def test_present_falls_back_to_libnftables_when_the_dump_fails(in_ns: Any) -> None:  # noqa: F811
    """A netlink dump that cannot be made (a socket refused, say) does not read as
    "tables gone" -- which would rebuild them every check: libnftables answers."""

    def body() -> list[bool]:
        fw = Firewall(NetworkConfig(nft_table="fcdt"))

        def broken() -> list[Any]:
            raise OSError(13, "Permission denied")

        fw._tables = broken  # type: ignore[method-assign]
        seen = [fw.present()]
        fw.ensure_base([])
        seen.append(fw.present())
        _nft("delete table inet fcdt")
        seen.append(fw.present())
        return seen

    assert in_ns(body) == [False, True, False]


def test_a_dump_that_keeps_failing_is_a_warning_once(
    in_ns: Any,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    def body() -> None:
        fw = Firewall(NetworkConfig(nft_table="fcdt"))

        def broken() -> list[Any]:
            raise OSError(13, "Permission denied")

        fw._tables = broken  # type: ignore[method-assign]
        fw.ensure_base([])
        for _ in range(3):
            assert fw.present()

    with caplog.at_level(logging.DEBUG, logger="fcd.net.firewall"):
        in_ns(body)
    said = [r.levelno for r in caplog.records if "cannot dump" in r.getMessage()]
    assert said == [logging.WARNING, logging.DEBUG, logging.DEBUG]

"""fcd-net's TCP health probe (``net.probe_tcp``) against real guests behind real TAPs.

A guest namespace is wired to the VM's TAP through a relay running as the jail
uid (tests/integration/test_net_packets.py's Lab): the probe must reach it
from fcd-net's own namespace in bridge mode and from inside the VM's namespace
in netns mode, exactly like a client would, and report a closed port or a VM
without a lease as a failed probe or NotFound -- never a hang.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_common.errors import NotFound
from fcd_common.proto.net import NetProbeTcp

from .test_net_packets import Lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.daemon.start()
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("mode", ["bridge", "netns"])
def test_probe_reaches_the_guest_where_a_client_does(lab: Lab, mode: str) -> None:
    info = lab.setup("vm-a", mode=mode)
    g = lab.guest(info)
    lab.serve(g, 8000, "guest")
    res = None
    for _ in range(3):  # the first exchange through the relay may take a moment
        res = lab.daemon.call(NetProbeTcp(vm_id="vm-a", port=8000, timeout_s=5))
        if res.ok:
            break
    assert res is not None and res.ok, res
    assert info.ip in res.detail
    closed = lab.daemon.call(NetProbeTcp(vm_id="vm-a", port=8001, timeout_s=2))
    assert not closed.ok and "refused" in closed.detail.lower(), closed
    with pytest.raises(NotFound):
        lab.daemon.call(NetProbeTcp(vm_id="nobody", port=8000, timeout_s=1))

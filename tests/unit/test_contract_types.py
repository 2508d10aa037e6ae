"""mypy proves the contract at every call site: a wrong reply type is a type error.

Two snippets go through ``mypy --strict``: a call whose result is used as the
wrong reply type, and a helper handler that returns the wrong reply. Both must
be refused; their correct twins must pass.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

CALL = """
from fcd_common.proto import vmm as pvmm
from fcd_common.rpc import RpcClient

async def f(vmm: RpcClient) -> None:
    proc: pvmm.{reply} = await vmm.call(pvmm.Stop(vm_id="a"))
"""

HANDLER = """
from fcd_common.proto import net as pnet
from fcd_common.rpc import Done, Peer, handles

class Svc:
    @handles(pnet.NetTeardown)
    async def teardown(self, req: pnet.NetTeardown, peer: Peer) -> {reply}:
        raise NotImplementedError
"""


def _mypy(tmp_path: Path, source: str) -> tuple[str, int]:
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(source))
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)]
    )
    return out + err, status


@pytest.mark.parametrize(
    ("template", "good", "bad"),
    [(CALL, "StopResult", "VmProcess"), (HANDLER, "Done", "pnet.NetInfo")],
    ids=["call-site", "handler"],
)
def test_wrong_reply_type_is_a_type_error(
    tmp_path: Path, template: str, good: str, bad: str
) -> None:
    out, status = _mypy(tmp_path, template.format(reply=good))
    assert status == 0, out
    out, status = _mypy(tmp_path, template.format(reply=bad))
    assert status == 1 and "incompatible type" in out, out

"""#9 "Must show": a schema-driven fuzz of the OpenAPI against the four real daemons.

schemathesis (its engine, as ``st run`` drives it: examples, coverage,
fuzzing and stateful phases, every check) sends requests generated from
fcd-api's own ``/openapi.json`` to a running suite (the real fcd-api, fcd-net,
fcd-storage and fcd-vmm with the Firecracker/jailer double), through a
loopback TCP port that forwards to the API's Unix socket. The run must find no
server error, no response that breaks the documented schema, no undocumented
status and no 405 without ``Allow``. The number of requests it made is printed
(and written to ``$FCD_FUZZ_REPORT`` when set).

Budget: ``FCD_FUZZ_MAX_TIME`` seconds (default 150) and ``FCD_FUZZ_EXAMPLES``
examples per operation (default 25); a longer run is
``FCD_FUZZ_MAX_TIME=1800 FCD_FUZZ_EXAMPLES=300 pytest tests/e2e/test_api_fuzz.py``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from fcd_dev import devup

from .harness import api, running_suite
from .tcp_proxy import tcp_to_unix

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MAX_TIME = int(os.environ.get("FCD_FUZZ_MAX_TIME", "150"))
EXAMPLES = int(os.environ.get("FCD_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("FCD_FUZZ_SEED", "9"))


def _config(base_url: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "max-time": MAX_TIME,
            "base-url": base_url,
            "workers": 1,
            "request-timeout": 60,
            "generation": {"max-examples": EXAMPLES},
            "checks": {"enabled": True},
        }
    )


def _run(base_url: str) -> tuple[int, Counter[str], list[str]]:
    """Run the engine; (requests made, responses by status, failures described)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=_config(base_url))
    requests = 0
    by_status: Counter[str] = Counter()
    failures: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        recorder: Any = getattr(event, "recorder", None)
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            for interaction in recorder.interactions.values():
                requests += 1
                if interaction.response is not None:
                    by_status[str(interaction.response.status_code)] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        f = check.failure_info
                        sample = f.code_sample.replace("\n", " ")[:300]
                        failures.append(f"{check.name}: {f.failure.title} -- {sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"engine error: {getattr(event, 'value', None) or event}")
    return requests, by_status, failures


def test_api_fuzz_finds_no_server_error_and_no_broken_contract(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite:
        devup.import_demo_template(suite, "tiny")
        with api(suite) as c:  # one VM for the id-taking routes to find
            r = c.post("/v1/vms", json={"id": "fz", "template": "tiny"})
            assert r.status_code == 201, r.text
        with tcp_to_unix(suite.api_socket) as port:
            requests, by_status, failures = _run(f"http://127.0.0.1:{port}")
    summary = {
        "requests": requests,
        "by_status": dict(sorted(by_status.items())),
        "failures": len(failures),
    }
    print(f"\napi fuzz: {json.dumps(summary)}")
    if report := os.environ.get("FCD_FUZZ_REPORT"):
        Path(report).write_text(json.dumps({**summary, "details": failures}, indent=2))
    assert requests > 0
    unique = sorted(set(failures))
    assert not unique, f"{len(unique)} distinct failures:\n" + "\n".join(unique[:40])
    assert not [s for s in by_status if s.startswith("5")], by_status

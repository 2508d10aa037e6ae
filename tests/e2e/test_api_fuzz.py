"""#9 "Must show": a schema-driven fuzz of the OpenAPI against the four real daemons.

schemathesis (its engine, as ``st run`` drives it: examples, coverage,
fuzzing and stateful phases, every check) sends requests generated from
fcd-api's own ``/openapi.json`` to a running suite (the real fcd-api, fcd-net,
fcd-storage and fcd-vmm with the Firecracker/jailer double), through a
loopback TCP port that forwards to the API's Unix socket. The run must find no
server error, no response that breaks the documented schema, no undocumented
status and no 405 without ``Allow``. The number of requests it made is printed
(and written to ``$FCD_FUZZ_REPORT`` when set).

Two things the check for "schema-valid request rejected" would count are
rules no JSON Schema can state, so the run is told about them:

* an integral float for an integer field (``"vcpu_count": 2.0``): JSON Schema
  calls 2.0 an integer, fcd refuses it on purpose (strict decoding, #9 finding
  15). Such 400s are counted and printed as ``strict_int``, not failures.
* the operator's limits and the files a request names: the host port range
  (fcd-net's config), ``limits.max_vcpu``/``max_mem_mib``/``max_disk_mib``, a
  template's kernel arguments plus the request's, source files that must exist
  and hash to the given sha256; and a resources PATCH must change something,
  and a memory target needs a VM made with a balloon; a log query's ``since``
  is seconds or an ISO 8601 time and an event query's ``type`` a
  comma-separated list of kinds (free-form strings in the document). The operations whose
  bodies carry them may answer 400 to a schema-valid request.

Budget: ``FCD_FUZZ_MAX_TIME`` seconds (default 150) and ``FCD_FUZZ_EXAMPLES``
examples per operation (default 25); a longer run is
``FCD_FUZZ_MAX_TIME=1800 FCD_FUZZ_EXAMPLES=300 pytest tests/e2e/test_api_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from fcd_common import config
from fcd_dev import devup

from .harness import api, running_suite
from .tcp_proxy import tcp_to_unix

pytestmark = [pytest.mark.root, pytest.mark.e2e]

MAX_TIME = int(os.environ.get("FCD_FUZZ_MAX_TIME", "150"))
EXAMPLES = int(os.environ.get("FCD_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("FCD_FUZZ_SEED", "9"))


CONFIG_LIMITED = (
    r"^/v1/vms$|^/v1/vms/\{vm_id\}/ports$|^/v1/snapshots/\{name\}/restore$|^/v1/templates"
)
"""Operations whose schema-valid bodies can break an operator's limit or name a file."""
STRICT_INT = re.compile(r"Expected `int[^`]*`, got `float`")


def _config(base_url: str) -> SchemathesisConfig:
    accepted = ["2xx", "401", "403", "404", "409", "429", "5xx"]
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "max-time": MAX_TIME,
            "base-url": base_url,
            "workers": 1,
            "request-timeout": 60,
            "generation": {"max-examples": EXAMPLES},
            # a followed log or event stream has no end by design: it is read to its end
            # (follow=false) here, and followed in the logs/events tests
            "parameters": {"query.follow": False},
            "checks": {"enabled": True},
            "operations": [
                {
                    "include-path-regex": CONFIG_LIMITED,
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*accepted, 400]}},
                },
                {
                    "include-path-regex": r"^/v1/vms/\{vm_id\}/resources$",
                    "include-method": "PATCH",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*accepted, 400]}},
                },
                {  # ?type=false is a kind name the store has never seen, not a boolean
                    "include-path-regex": r"^/v1/events$",
                    "include-method": "GET",
                    "checks": {"negative_data_rejection": {"enabled": False}},
                },
                {
                    "include-path-regex": r"^/v1/vms/\{vm_id\}/logs$|^/v1/events$",
                    "include-method": "GET",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*accepted, 400]}},
                },
            ],
        }
    )


def _strict_int(response: Any) -> bool:
    """A 400 for an integral float where an int belongs (see the module's docstring)."""
    if response is None or response.status_code != 400:
        return False
    try:
        return STRICT_INT.search(json.loads(response.content)["error"]["message"]) is not None
    except (ValueError, KeyError, TypeError):
        return False


def _guest_not_ready(response: Any) -> bool:
    """The documented 504 of a create whose ``wait_for`` the guest never met in time
    (fcd_api/readiness.py): the real minimal guest keeps running without opening a
    port, so with the real binaries each such create ends this way (the double's
    guest halts first, and the create fails at once with a 4xx)."""
    if response is None or response.status_code != 504:
        return False
    try:
        err = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(err.get("code") == "deadline_exceeded" and err["details"]["field"] == "wait_for")


def _run(base_url: str) -> tuple[int, Counter[str], list[str]]:
    """Run the engine; (requests made, responses by status and kind, failures described)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=_config(base_url))
    requests = 0
    by_status: Counter[str] = Counter()
    failures: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        recorder: Any = getattr(event, "recorder", None)
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            for interaction in recorder.interactions.values():
                requests += 1
                if _guest_not_ready(interaction.response):
                    by_status["guest_not_ready"] += 1
                elif interaction.response is not None:
                    by_status[str(interaction.response.status_code)] += 1
            for case_id, checks in recorder.checks.items():
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                for check in checks:
                    if check.failure_info is None:
                        continue
                    if check.name == "positive_data_acceptance" and _strict_int(response):
                        by_status["strict_int"] += 1
                        continue
                    if _guest_not_ready(response):
                        continue
                    f = check.failure_info
                    sample = f.code_sample.replace("\n", " ")[-400:]
                    answer = (
                        "" if response is None else response.content[:300].decode(errors="replace")
                    )
                    failures.append(f"{check.name}: {f.failure.title} -- {sample} => {answer}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"engine error: {getattr(event, 'value', None) or event}")
    return requests, by_status, failures


LIMITS = {
    "max_vms": 256,  # a run creates up to ~120; at the limit a create is a 507 (see README)
    "max_mem_mib": 1024,
    "max_disk_mib": 1024,
    "max_vm_disk_mib": 2048,
    "max_wait_timeout_s": 5.0,  # a create waiting for its guest ends well within a request
}
"""An operator's limits below what this machine has: a request past them is a 400 that
names the field; without them a 80 GiB disk is a true 507 (the store is full)."""

SUPERVISION = config.SupervisionConfig(wait_timeout_s=5.0)
"""A create or start with ``wait_for`` (the minimal guest never opens a port) waits
this long by default: with the default 60 s it outlived the fuzzer's request timeout."""


@pytest.mark.timeout(MAX_TIME + 300)  # the run's own budget, plus the suite and its template
def test_api_fuzz_finds_no_server_error_and_no_broken_contract(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    with running_suite(tmp_path, limits=LIMITS, supervision=SUPERVISION) as suite:
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
    with capsys.disabled():  # shown on success too: the closing note counts requests
        print(f"\napi fuzz: {json.dumps(summary)}")
    record_property("fuzz_requests", requests)
    if report := os.environ.get("FCD_FUZZ_REPORT"):
        Path(report).write_text(json.dumps({**summary, "details": failures}, indent=2))
    assert requests > 0
    unique = sorted(set(failures))
    assert not unique, f"{len(unique)} distinct failures:\n" + "\n".join(unique[:40])
    assert not [s for s in by_status if s.startswith("5")], by_status

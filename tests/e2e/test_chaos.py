"""Chaos in CI: random operations while random daemons are kill -9'ed and restarted.

A short run (``FCD_CHAOS_OPS``, default 40 operations; ``FCD_CHAOS_SEED`` replays a
seed); bench/chaos.py runs long ones. See tests/e2e/chaos.py for what is checked.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from fcd_common.config import SupervisionConfig
from fcd_dev import devup

from .chaos import Chaos
from .harness import running_suite

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def test_chaos_loses_and_leaks_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("FCD_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    ops = int(os.environ.get("FCD_CHAOS_OPS", "40"))
    sup = SupervisionConfig(reconcile_interval_s=2.0)
    with running_suite(tmp_path, supervision=sup) as suite:
        devup.import_demo_template(suite, "demo")
        fig = Chaos(suite, seed).run(ops)
    with capsys.disabled():
        print("\n== chaos (" + f"FCD_CHAOS_SEED={seed} replays it)")
        print("\n".join(fig.lines()))
    assert fig.lost == [], fig.lines()
    assert fig.mismatches == [], fig.lines()
    assert fig.leaks == [], fig.lines()

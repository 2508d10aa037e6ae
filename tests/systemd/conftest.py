"""Figures the systemd tests report at the end of the run (scores, CapEff, timings)."""

from __future__ import annotations

import pytest

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("systemd units")
        for line in REPORT:
            terminalreporter.write_line(line)

"""Figures the systemd tests report at the end of the run (scores, CapEff, timings)."""

from __future__ import annotations

import pytest

REPORT: list[str] = []
_STEP = {"seconds": 0.0, "tests": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # setup + call + teardown of every test in this folder: the "systemd step" of CI
    if "tests/systemd/" in report.nodeid:
        _STEP["seconds"] += report.duration
        if report.when == "call":
            _STEP["tests"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT or _STEP["tests"]:
        terminalreporter.section("systemd units")
        for line in REPORT:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"systemd test step: {_STEP['tests']} tests in {_STEP['seconds']:.1f}s"
        )

"""A clean run (no scenario) shared by the scenario tests, to compare their normal traffic with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sim.scenarios.checks import run


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-clean"), [])

"""Every CPU kernel test here runs once per instruction set (tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _each_cpu_isa(cpu_isa: str) -> None:
    pass

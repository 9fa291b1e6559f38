"""The CPU instruction-set switch: reads, sets, rejects unknown names."""

import pytest
import torch

import recis  # noqa: F401


def test_reads_the_isa_set_by_the_fixture(cpu_isa: str) -> None:
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_unknown_isa_is_rejected_and_leaves_the_choice_alone(cpu_isa: str) -> None:
    with pytest.raises(RuntimeError, match="unknown CPU ISA 'sse9'"):
        torch.ops.recis.cpu_isa("sse9")
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_auto_picks_a_known_isa() -> None:
    assert torch.ops.recis.cpu_isa("auto") in ("base", "avx2")

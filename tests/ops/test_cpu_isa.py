"""The CPU instruction-set switch: reads, sets, rejects unknown names; and only the
AVX2 kernels use AVX instructions."""

import platform
import re
import shutil
import subprocess

import pytest
import recis._C
import torch

from tests.conftest import available_isas


def test_reads_the_isa_set_by_the_fixture(cpu_isa: str) -> None:
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_unknown_isa_is_rejected_and_leaves_the_choice_alone(cpu_isa: str) -> None:
    with pytest.raises(RuntimeError, match="unknown CPU ISA 'sse9'"):
        torch.ops.recis.cpu_isa("sse9")
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_auto_picks_the_best_isa_the_cpu_and_build_have() -> None:
    best = available_isas()[-1]
    assert torch.ops.recis.cpu_isa("auto") == best


def _vex_instructions_outside_avx2_kernels() -> dict[str, int]:
    """Functions of the built extension that use AVX (VEX-encoded) instructions although
    they are not in an ``isa_avx2`` namespace, with how many."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", recis._C.__file__],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, int] = {}
    function = ""
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif re.match(r"^\s+[0-9a-f]+:\s+v[a-z0-9]+\s", line) and "isa_avx2::" not in function:
            found[function] = found.get(function, 0) + 1
    return found


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AVX2 kernels exist on x86-64 only")
def test_only_the_avx2_kernels_use_avx_instructions() -> None:
    # Everything else must run on any x86-64 CPU: an AVX instruction outside the
    # isa_avx2 namespaces would crash a CPU without AVX (SIGILL) even with "base".
    assert _vex_instructions_outside_avx2_kernels() == {}

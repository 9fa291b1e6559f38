"""The CPU instruction-set switch: reads, sets, rejects unknown names; and only the
AVX2 and AVX-512 kernels use AVX instructions, only the AVX-512 ones AVX-512's."""

import platform
import re
import shutil
import subprocess

import pytest
import recis._C
import torch

from recis.ops import available_cpu_isas


def test_reads_the_isa_set_by_the_fixture(cpu_isa: str) -> None:
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_unknown_isa_is_rejected_and_leaves_the_choice_alone(cpu_isa: str) -> None:
    with pytest.raises(RuntimeError, match="unknown CPU ISA 'sse9'"):
        torch.ops.recis.cpu_isa("sse9")
    assert torch.ops.recis.cpu_isa() == cpu_isa


def test_auto_picks_the_best_isa_the_cpu_and_build_have() -> None:
    best = available_cpu_isas()[-1]
    assert torch.ops.recis.cpu_isa("auto") == best


def _disassembly() -> list[str]:
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", recis._C.__file__],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()


def _functions_using(instruction: str, allowed: tuple[str, ...]) -> dict[str, int]:
    """Functions of the built extension with instructions matching the regex
    ``instruction`` outside the namespaces ``allowed``, with how many."""
    found: dict[str, int] = {}
    function = ""
    for line in _disassembly():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif re.match(instruction, line) and not any(ns in function for ns in allowed):
            found[function] = found.get(function, 0) + 1
    return found


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AVX kernels exist on x86-64 only")
def test_only_the_avx_kernels_use_avx_instructions() -> None:
    # Everything else must run on any x86-64 CPU: an AVX instruction outside the
    # isa_avx2 / isa_avx512 namespaces would crash a CPU without AVX (SIGILL) even
    # with "base".
    vex = r"^\s+[0-9a-f]+:\s+v[a-z0-9]+\s"
    assert _functions_using(vex, ("isa_avx2::", "isa_avx512::")) == {}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AVX kernels exist on x86-64 only")
def test_only_the_avx512_kernels_use_avx512_registers() -> None:
    # zmm registers, registers 16-31 and mask registers exist only with AVX-512: an AVX2
    # CPU running the "avx2" kernels must never meet one.
    evex = r"^\s+[0-9a-f]+:\s+\S+\s.*%(zmm|[xy]mm(1[6-9]|2[0-9]|3[01])\b|k[1-7]\b)"
    assert _functions_using(evex, ("isa_avx512::",)) == {}

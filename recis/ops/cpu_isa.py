"""Which instruction sets the CPU kernels are built for and this CPU runs."""

from __future__ import annotations

import torch

import recis  # noqa: F401  (loads the kernels)

# In order: each one's kernels need the CPU features of the ones before it.
CPU_ISAS = ("base", "avx2", "avx512")


def available_cpu_isas() -> list[str]:
    """The instruction sets ``torch.ops.recis.cpu_isa`` accepts here, best last; the
    one in use is left unchanged. ``RECIS_CPU_ISA`` picks one for a whole process.

    Example::

        >>> available_cpu_isas()
        ['base', 'avx2', 'avx512']
    """
    active = torch.ops.recis.cpu_isa()
    isas = []
    try:
        for isa in CPU_ISAS:
            torch.ops.recis.cpu_isa(isa)
            isas.append(isa)
    except RuntimeError:
        pass  # this CPU or build has no kernels for it, nor for the ones after it
    finally:
        torch.ops.recis.cpu_isa(active)
    return isas

"""Loads the compiled kernels (recis._C), or says how to build them."""

from __future__ import annotations

import importlib

import torch


def load() -> None:
    """Imports ``recis._C``, which registers the ``torch.ops.recis`` kernels."""
    try:
        importlib.import_module("recis._C")
    except ImportError as err:
        raise ImportError(
            "recis: the compiled extension recis._C is missing or does not load "
            f"({err}). Build it against the installed torch with `make install` "
            "(or `pip install --no-build-isolation -e .`) from the recis source folder."
        ) from err


def has_cuda_kernels() -> bool:
    """True when recis._C was built with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("recis::pooled_lookup", "CUDA")

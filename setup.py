"""Builds recis._C from csrc/ against the torch that is installed.

CPU kernels are always built (unless RECIS_NO_EXTENSION=1). CUDA kernels (csrc/cuda/*.cu and their ATen bindings)
are added only when the installed torch has CUDA and nvcc is on PATH.
"""

import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# libstdc++ is linked as a shared library even where the compiler's own search path
# holds only its static archive (the CXX of the H200 image that the CUDA kernels were
# tested on, a wrapper adding -B/opt/gcc/...): there the extension carried a second,
# static copy beside torch's, whose locale was never set up, and formatting a number
# into any error message segfaulted. Resolved from the shared library first, the
# archive is never pulled in.
LINK_ARGS = ["-fopenmp", "-l:libstdc++.so.6"]


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    if os.environ.get("RECIS_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    with_cuda = torch.version.cuda is not None and shutil.which("nvcc") is not None
    if os.environ.get("RECIS_NO_CUDA", "0") == "1":
        with_cuda = False
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        return CUDAExtension(
            "recis._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("RECIS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            extra_link_args=LINK_ARGS,
        )
    return CppExtension(
        "recis._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=LINK_ARGS,
    )


setup(
    # `make install` builds the extension once, in build/ (where `make build` then
    # rebuilds it incrementally): the editable pip install skips it.
    ext_modules=[] if os.environ.get("RECIS_NO_EXTENSION") == "1" else [_extension()],
    cmdclass={
        "build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    },
)

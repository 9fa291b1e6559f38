import pytest
import torch

import recis  # noqa: F401  (registers torch.ops.recis)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def available_isas() -> list[str]:
    active = torch.ops.recis.cpu_isa()
    isas = ["base"]
    try:
        for isa in ("avx2", "avx512"):
            torch.ops.recis.cpu_isa(isa)
            isas.append(isa)
    except RuntimeError:
        pass  # this CPU or build has no kernels for it (nor for the ones after it)
    finally:
        torch.ops.recis.cpu_isa(active)
    return isas


@pytest.fixture(params=available_isas())
def cpu_isa(request: pytest.FixtureRequest):
    """Runs the test once per instruction set the CPU kernels are built for."""
    if request.node.get_closest_marker("cuda") and request.param != "base":
        pytest.skip("the CPU instruction set does not apply to a CUDA test")
    previous = torch.ops.recis.cpu_isa()
    torch.ops.recis.cpu_isa(request.param)
    yield request.param
    torch.ops.recis.cpu_isa(previous)

import pytest
import torch

from recis.ops import available_cpu_isas


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


@pytest.fixture(params=available_cpu_isas())
def cpu_isa(request: pytest.FixtureRequest):
    """Runs the test once per instruction set the CPU kernels are built for."""
    if request.node.get_closest_marker("cuda") and request.param != "base":
        pytest.skip("the CPU instruction set does not apply to a CUDA test")
    previous = torch.ops.recis.cpu_isa()
    torch.ops.recis.cpu_isa(request.param)
    yield request.param
    torch.ops.recis.cpu_isa(previous)

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def linear():
    from ddpm_lib import NoiseSchedule
    return NoiseSchedule.linear()

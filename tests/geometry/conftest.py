import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The geometry tests use tiny models: one thread is as fast, and immune to an oversubscribed shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run on 2 shared cores: a second intra-op thread made small models up to ten
    times slower there, so every test runs torch single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

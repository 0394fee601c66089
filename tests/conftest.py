import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mnist1d():
    """The MNIST-1D DatasetDict at its package defaults (5000 samples, seed 42)."""
    from star_merge.data import DataArguments, load_task_dataset

    return load_task_dataset(DataArguments())


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (tiny models: on a shared CPU extra threads only contend; measured
    1000x on einsum), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate's state is a per-process singleton fixed at first use; tests changing it start afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)

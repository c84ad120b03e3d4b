"""End-to-end tests on the real engines (CPU): one pool of 4 gloo ranks for the whole session
(starting a process group takes seconds), and JAX's 8 CPU devices (tests/conftest.py sets them)."""
import pytest


@pytest.fixture(scope="session")
def torch_pool():
    """4 torch.distributed ranks (gloo, 127.0.0.1) shared by every test; restarted by the runtime
    after a test makes a rank fail. Also the runtime's default pool, so plain run_torch uses it."""
    from shardc.runtime import torch_launch
    pool = torch_launch.default_pool(4)
    pool.start()
    yield pool
    pool.close()

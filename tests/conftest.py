import numpy as np
import pytest
from helpers import WORKED_LOSSES, WORKED_N, WORKED_SCALES


@pytest.fixture
def worked_domains():
    from mixjax.mixing.runs import DomainData

    return [
        DomainData(name, WORKED_SCALES * WORKED_N, 2 * WORKED_N, np.array(losses))
        for name, losses in WORKED_LOSSES.items()
    ]


@pytest.fixture
def full_f32_matmuls():
    """Float32 matmuls at full precision, for tests whose tolerances assume it: on Hopper and
    Ampere GPUs XLA's default float32 matmul runs as TF32 (10-bit mantissa, ~1e-3 relative),
    which a 1e-6 comparison of two float32 paths would fail. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("full_f32_matmuls")``."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield

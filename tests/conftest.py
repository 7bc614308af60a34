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

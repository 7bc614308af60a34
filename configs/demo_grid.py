"""The demo plus a grid search over the simplex at the validation budget (step 0.2: 21
mixtures, of which those giving code more than its available tokens are skipped), at 2
seeds, which gives the paper's metric and the regret with their spread over seeds. It reuses
the demo's runs (same experiment) and adds the grid's; longer than the demo; not in CI.

    python -m mixjax.run --config configs/demo_grid.py
"""

import dataclasses
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("demo", Path(__file__).with_name("demo.py"))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)

config = dataclasses.replace(
    _demo.config,
    validate=dataclasses.replace(_demo.config.validate, grid_step=0.2, seeds=2),
)

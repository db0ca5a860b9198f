"""pytest-chaos: chaos experiments from pytest markers, applied by a per-node daemon.

The public interface is the ``chaos`` marker and fixture (see ``plugin.py``)
and the objects they hand a test, exported here.
"""

from .errors import ChaosError, ChaosSpecError
from .model import Experiment, ExperimentSpec, Process, Target
from .plugin import ChaosFixture

__all__ = ["ChaosError", "ChaosFixture", "ChaosSpecError", "Experiment", "ExperimentSpec", "Process", "Target"]

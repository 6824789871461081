"""Built-in TrackML-like event simulation, for users without real data.

``simulate_event`` makes one event's hits, particles, truth (and cells) frames; ``simulate_dataset``
writes a folder of events. The modules, one concept each: ``config`` (the knobs), ``kinematics``
(which particles, with what momenta), ``propagation`` (helices through the module planes),
``digitization`` (smearing, inefficiency, noise, cells), ``event`` (putting an event together) and
``detector_conditions`` (dead, inefficient and misaligned modules: the detector as built, not as drawn).
"""

from tb_plugin.simulation.config import SimulationConfig
from tb_plugin.simulation.detector_conditions import (
    DetectorConditions,
    DetectorConditionsConfig,
    read_conditions,
    write_conditions,
)
from tb_plugin.simulation.event import simulate_dataset, simulate_event

__all__ = [
    "SimulationConfig",
    "DetectorConditions",
    "DetectorConditionsConfig",
    "read_conditions",
    "write_conditions",
    "simulate_event",
    "simulate_dataset",
]

"""The synthetic drum line: a seeded, deterministic RGB-D stream of washing-drum stations, no camera needed.

A newcomer reads it in this order:

- ``source``: :class:`SyntheticSource` and its settings, what frame ``i`` shows (:func:`plan`), and how a frame is
  composed (:func:`render_arrays`) with its ground truth;
- ``stations``: the named station presets (``STATIONS``): drum pose, support, design, camera, light, clutter;
- ``drum`` and ``defects``: the drum's design and analytic ray cast, and what can be wrong with it;
- ``supports``: rail, roller conveyor, V-cradle on a pallet on a belt, tilted cradle;
- ``clutter``: what moves around the station (and the guard that keeps it from occluding the drum);
- ``camera``: the RealSense-like camera and the light; ``render``: shading, sensor model, static background;
- ``primitives`` and ``gbuffer``: boxes, rods, balls, floor and wall, and the G-buffer they are cast into.
"""

from drivers.synthetic.source import (
    CLUTTER_LEVELS,
    DEPTH_SCALE,
    PartPlan,
    SyntheticSource,
    SyntheticSourceConfig,
    drum_pose,
    plan,
    render_arrays,
    render_frame,
    stream_spec,
)
from drivers.synthetic.stations import DEFAULT_STATION, STATIONS, Station

__all__ = [
    "CLUTTER_LEVELS",
    "DEFAULT_STATION",
    "DEPTH_SCALE",
    "STATIONS",
    "PartPlan",
    "Station",
    "SyntheticSource",
    "SyntheticSourceConfig",
    "drum_pose",
    "plan",
    "render_arrays",
    "render_frame",
    "stream_spec",
]

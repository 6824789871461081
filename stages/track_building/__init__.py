"""Track building: track candidates from scored graphs, matched to truth in ACORN's three styles."""

from stages.track_building.connected_components import ConnectedComponents, ConnectedComponentsConfig

__all__ = ["ConnectedComponents", "ConnectedComponentsConfig"]

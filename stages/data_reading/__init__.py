"""Data reading: TrackML CSV events (real or simulated) into the PyG feature store."""

from stages.data_reading.trackml_reader import TrackMLReader, TrackMLReaderConfig

__all__ = ["TrackMLReader", "TrackMLReaderConfig"]

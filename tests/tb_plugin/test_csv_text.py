"""The numpy CSV writer (tb_plugin.csv_text) against the text pandas and numpy write, value by value.

numpy's ``astype(str)`` and ``DataFrame.to_csv`` are the reference implementations: the fast writer
must give the same bytes, so files written before and after it are identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tb_plugin.csv_text import csv_bytes, float32_fields, int_fields
from tb_plugin.geometry import Detector
from tb_plugin.simulation import SimulationConfig, simulate_event
from tb_plugin.trackml import PART_COLUMNS, event_prefix, load_event, write_event


@pytest.fixture(scope="module")
def simulated_event_frames() -> dict[str, pd.DataFrame]:
    """The simulated twin of the real-file test: every part, cells included, at pile-up 10."""
    return simulate_event(SimulationConfig(pileup=10.0, seed=5, with_cells=True), Detector.builtin(), 1)


def texts(fields: np.ndarray) -> list[str]:
    """The strings of a [W, N] field matrix (0 bytes dropped)."""
    return [bytes(column[column != 0]).decode() for column in fields.T]


def awkward_float32() -> np.ndarray:
    """Values where shortest-decimal formatting is easy to get wrong: format switches at 1e-4 and
    1e6, carries (9.9999999 -> 10), powers of two (unequal gaps to the neighbours), exact binary
    fractions whose shortest decimal is a rounding tie (602.5, 327.390625), zeros, subnormals, extremes."""
    f32 = np.float32
    base = np.array(
        [1e-4, 1e6, 999999.94, 1e-5, 1.0, 0.5, 0.1, 0.3, 9.9999999, 99999.999, 1502.0, 602.5, 327.390625]
        + [994.078125, 1e-30, 1e-38, 3e-40, 1e-45, 1e16, 3.4028235e38, 2.0**-20, 2.0**23, 2.0**24],
        dtype=f32,
    )
    powers_of_ten = (10.0 ** np.arange(-40, 39)).astype(f32)
    quarters = (np.arange(-20000, 20000) / 64.0).astype(f32)  # exact binary fractions
    around = np.concatenate([base, powers_of_ten])
    with np.errstate(over="ignore"):  # the largest float32's upper neighbour is inf, dropped by the test
        neighbours = [np.nextafter(around, f32(np.inf)), np.nextafter(around, f32(-np.inf))]
    values = np.concatenate([around, *neighbours, quarters, [0.0, -0.0]]).astype(f32)
    return np.concatenate([values, -values])


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(awkward_float32(), id="awkward"),
        pytest.param(
            np.random.default_rng(0).integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            id="any-bit-pattern",
        ),
        pytest.param(
            (np.random.default_rng(1).lognormal(-3, 5, 300_000) * np.random.default_rng(2).choice([-1, 1], 300_000)),
            id="wide-magnitudes",
        ),
        pytest.param(np.random.default_rng(3).uniform(-3000, 3000, 300_000), id="detector-coordinates"),
    ],
)
def test_float32_text_is_numpys(values):
    values = np.asarray(values).astype(np.float32)
    values = values[np.isfinite(values)]
    assert texts(float32_fields(values)) == values.astype(str).tolist()


def test_integer_text_is_pythons():
    rng = np.random.default_rng(4)
    for dtype in (np.int32, np.int64):
        info = np.iinfo(dtype)
        edges = np.array([0, 1, -1, 9, 10, -10, 99, 100, info.min, info.max, info.min + 1], dtype=dtype)
        values = np.concatenate([edges, rng.integers(info.min, info.max, 50_000, dtype=dtype, endpoint=True)])
        assert texts(int_fields(values)) == [str(v) for v in values.tolist()]


def test_csv_bytes_refuses_other_dtypes():
    with pytest.raises(TypeError, match="column x: dtype float64"):
        csv_bytes({"x": np.zeros(3)})


def pandas_text(frame: pd.DataFrame) -> bytes:
    """What write_event wrote before csv_text: pandas' CSV of the frame."""
    return frame.to_csv(index=False, lineterminator="\n").encode()


def typed(frame: pd.DataFrame, part: str) -> pd.DataFrame:
    return pd.DataFrame({name: frame[name].to_numpy().astype(dtype) for name, dtype in PART_COLUMNS[part].items()})


def test_written_files_are_the_bytes_pandas_writes(tmp_path, simulated_event_frames):
    prefix = event_prefix(tmp_path, 1)
    write_event(prefix, **simulated_event_frames)
    for part, frame in simulated_event_frames.items():
        assert (tmp_path / f"event000000001-{part}.csv").read_bytes() == pandas_text(typed(frame, part))
    empty = typed(simulated_event_frames["hits"].iloc[:0], "hits")
    write_event(prefix, hits=empty)
    assert (tmp_path / "event000000001-hits.csv").read_bytes() == pandas_text(empty)


def test_real_files_are_rewritten_byte_for_byte_as_pandas_would(tmp_path, shared_trackml):
    hits, particles = load_event(event_prefix(shared_trackml, 1001), parts=("hits", "particles"))
    write_event(event_prefix(tmp_path, 1001), hits=hits, particles=particles)
    assert (tmp_path / "event000001001-hits.csv").read_bytes() == pandas_text(hits)
    assert (tmp_path / "event000001001-particles.csv").read_bytes() == pandas_text(particles)

"""Tests of the TrackML reader/writer, the phase-1 hit weights and the TrackML score."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tb_plugin.trackml import (
    PART_COLUMNS,
    SubmissionError,
    TrackMLFormatError,
    event_prefix,
    hit_weights,
    list_events,
    load_dataset,
    load_event,
    match_tracks,
    read_part,
    score_event,
    write_event,
)

PROFILE = np.array([10, 8, 6, 5, 3, 3, 3, 5, 6], dtype=float)


# ------------------------------------------------------------------------------------------
# Hand-made events
# ------------------------------------------------------------------------------------------


def small_event(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Three particles and some noise, with values that are not exactly representable in decimal."""
    n = 12
    hits = pd.DataFrame(
        {
            "hit_id": np.arange(1, n + 1),
            "x": rng.normal(0, 300, n),
            "y": rng.normal(0, 300, n),
            "z": rng.normal(0, 1000, n),
            "volume_id": rng.integers(7, 19, n),
            "layer_id": rng.integers(2, 15, n),
            "module_id": rng.integers(1, 3000, n),
        }
    )
    cells = pd.DataFrame(
        {
            "hit_id": np.repeat(np.arange(1, n + 1), 2),
            "ch0": rng.integers(0, 1000, 2 * n),
            "ch1": rng.integers(0, 1000, 2 * n),
            "value": rng.random(2 * n),
        }
    )
    particle_ids = np.array([4503668346847232, 4503737066323968, 22])
    particles = pd.DataFrame(
        {
            "particle_id": particle_ids,
            "vx": rng.normal(size=3),
            "vy": rng.normal(size=3),
            "vz": rng.normal(size=3),
            "px": rng.normal(size=3),
            "py": rng.normal(size=3),
            "pz": rng.normal(size=3),
            "q": [1, -1, 1],
            "nhits": [4, 4, 2],
        }
    )
    truth = pd.DataFrame(
        {
            "hit_id": hits["hit_id"],
            "particle_id": np.r_[np.repeat(particle_ids[:2], 4), [22, 22, 0, 0]],
            "tx": hits["x"],
            "ty": hits["y"],
            "tz": hits["z"],
            "tpx": rng.normal(size=n),
            "tpy": rng.normal(size=n),
            "tpz": rng.normal(size=n),
            "weight": rng.random(n),
        }
    )
    return {"hits": hits, "cells": cells, "particles": particles, "truth": truth}


@pytest.fixture
def event() -> dict[str, pd.DataFrame]:
    return small_event(np.random.default_rng(7))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HITS_HEADER = "hit_id,x,y,z,volume_id,layer_id,module_id\n"


def good_hits_lines() -> list[str]:
    return [f"{i},{i}.5,-{i}.25,100.125,8,2,{i}\n" for i in range(1, 6)]


# ------------------------------------------------------------------------------------------
# Reading and writing
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_keeps_values_dtypes_and_order(tmp_path, event, compress):
    prefix = event_prefix(tmp_path, 42)
    assert prefix == tmp_path / "event000000042"
    paths = write_event(prefix, compress=compress, **event)
    suffix = ".csv.gz" if compress else ".csv"
    assert paths == [Path(f"{prefix}-{part}{suffix}") for part in event]
    assert all(path.is_file() for path in paths)

    loaded = load_event(prefix, parts=tuple(event))
    for part, frame in zip(event, loaded):
        assert list(frame.columns) == list(PART_COLUMNS[part])
        assert frame.dtypes.to_dict() == PART_COLUMNS[part]
        expected = pd.DataFrame({c: event[part][c].to_numpy().astype(d) for c, d in PART_COLUMNS[part].items()})
        pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_float32_values_round_trip_exactly(tmp_path):
    values = (np.random.default_rng(1).standard_normal(5000) * 1e3).astype(np.float32)
    values[:3] = [1e-30, -3.4e38, 0.1]
    particles = pd.DataFrame(
        {
            name: values if dtype.kind == "f" else np.arange(len(values)) + 1
            for name, dtype in PART_COLUMNS["particles"].items()
        }
    )
    write_event(tmp_path / "event000000001", particles=particles)
    (out,) = load_event(tmp_path / "event000000001", parts=("particles",))
    np.testing.assert_array_equal(out["vx"].to_numpy(), values)


def test_particle_type_is_optional_and_kept(tmp_path, event):
    particles = event["particles"].assign(particle_type=[11, -13, 211])
    write_event(tmp_path / "event000000003", particles=particles)
    (loaded,) = load_event(tmp_path / "event000000003", parts=("particles",))
    assert list(loaded.columns) == [*PART_COLUMNS["particles"], "particle_type"]
    assert loaded["particle_type"].dtype == np.int32
    assert loaded["particle_type"].tolist() == [11, -13, 211]


def test_unknown_columns_are_dropped(tmp_path):
    path = write_text(
        tmp_path / "event000000001-hits.csv", "hit_id,x,y,z,volume_id,layer_id,module_id,comment\n1,1,2,3,8,2,1,hello\n"
    )
    frame = read_part(path, "hits")
    assert list(frame.columns) == list(PART_COLUMNS["hits"])


def test_header_only_file_is_an_empty_table(tmp_path):
    frame = read_part(write_text(tmp_path / "event000000001-cells.csv", "hit_id,ch0,ch1,value\n"), "cells")
    assert len(frame) == 0 and frame.dtypes.to_dict() == PART_COLUMNS["cells"]


def test_cells_may_repeat_hit_ids(tmp_path):
    path = write_text(tmp_path / "c.csv", "hit_id,ch0,ch1,value\n1,1,1,0.5\n1,1,2,0.25\n")
    assert read_part(path, "cells")["hit_id"].tolist() == [1, 1]


def test_load_dataset_and_list_events(tmp_path, event):
    for event_id in (5, 3, 11):
        write_event(
            event_prefix(tmp_path, event_id), compress=event_id == 11, hits=event["hits"], particles=event["particles"]
        )
    (tmp_path / "notes.txt").write_text("not an event")
    assert list_events(tmp_path) == [(i, event_prefix(tmp_path, i)) for i in (3, 5, 11)]
    got = list(load_dataset(tmp_path, nevents=2, parts=("particles", "hits"), skip=1))
    assert [item[0] for item in got] == [5, 11]
    assert all(len(item) == 3 and len(item[2]) == 12 and len(item[1]) == 3 for item in got)


def test_list_events_names_a_missing_folder(tmp_path):
    with pytest.raises(TrackMLFormatError, match="nowhere"):
        list_events(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------


def test_missing_file_names_the_paths_tried(tmp_path):
    with pytest.raises(TrackMLFormatError) as info:
        load_event(tmp_path / "event000000009", parts=("hits",))
    assert "event000000009-hits.csv" in str(info.value) and "event000000009-hits.csv.gz" in str(info.value)


def test_empty_file(tmp_path):
    path = write_text(tmp_path / "event000000001-hits.csv", "")
    with pytest.raises(TrackMLFormatError, match=r"event000000001-hits\.csv.*empty"):
        read_part(path, "hits")


def test_missing_column_is_named_with_the_expected_list(tmp_path):
    path = write_text(tmp_path / "event000000001-hits.csv", "hit_id,x,y,volume_id,layer_id,module_id\n1,1,2,8,2,1\n")
    with pytest.raises(TrackMLFormatError) as info:
        read_part(path, "hits")
    message = str(info.value)
    assert "event000000001-hits.csv" in message and "missing column(s) z" in message
    assert "hit_id, x, y, z, volume_id, layer_id, module_id" in message


@pytest.mark.parametrize(
    "line, column, what",
    [
        ("4,abc,-4.25,100.125,8,2,4\n", "column x", "not a number: 'abc'"),
        ("4,4.5,-4.25,100.125,eight,2,4\n", "column volume_id", "not a number: 'eight'"),
        ("4,4.5,-4.25,100.125,8.5,2,4\n", "column volume_id", "not an integer: '8.5'"),
        ("4,4.5,,100.125,8,2,4\n", "column y", "empty value"),
        ("4,4.5,-4.25,nan,8,2,4\n", "column z", "not finite"),
        ("4,4.5,-4.25,100.125,8,2,99999999999\n", "column module_id", "out of range"),
    ],
)
def test_bad_value_names_column_and_line(tmp_path, line, column, what):
    lines = good_hits_lines()
    lines[3] = line  # data line 4 is file line 5
    path = write_text(tmp_path / "event000000001-hits.csv", HITS_HEADER + "".join(lines))
    with pytest.raises(TrackMLFormatError) as info:
        read_part(path, "hits")
    message = str(info.value)
    assert "event000000001-hits.csv" in message and f"{column}, line 5" in message and what in message


@pytest.mark.parametrize("line", ["4,4.5,-4.25\n", "4,4.5,-4.25,100.125,8,2,4,7\n"])
def test_wrong_field_count_names_the_line(tmp_path, line):
    lines = good_hits_lines()
    lines[1] = line  # file line 3
    path = write_text(tmp_path / "event000000001-hits.csv", HITS_HEADER + "".join(lines))
    with pytest.raises(TrackMLFormatError, match=r"event000000001-hits\.csv: line 3 has \d fields, expected 7"):
        read_part(path, "hits")


def test_truncated_last_line(tmp_path):
    text = HITS_HEADER + "".join(good_hits_lines())
    path = write_text(tmp_path / "event000000001-hits.csv", text[: text.rindex(",") - 2])  # ends "...,100.125,8"
    with pytest.raises(TrackMLFormatError, match=r"event000000001-hits\.csv: line 6 has 5 fields, expected 7"):
        read_part(path, "hits")


def test_last_line_without_its_newline_is_refused_as_possibly_truncated(tmp_path):
    # "...,8,2,51" cut to "...,8,2,5": every field still parses, module 5 may exist
    text = HITS_HEADER + "".join(good_hits_lines()[:-1]) + "5,5.5,-5.25,100.125,8,2,51\n"
    path = write_text(tmp_path / "event000000001-hits.csv", text[:-2])
    with pytest.raises(TrackMLFormatError) as err:
        read_part(path, "hits")
    assert str(err.value) == (
        f"{path}: line 6 does not end with a newline, so it may be truncated "
        f"(it reads '5,5.5,-5.25,100.125,8,2,5'); if the file is complete, end it with a newline"
    )
    gz = tmp_path / "event000000002-hits.csv.gz"
    gz.write_bytes(gzip.compress(text[:-2].encode()))
    with pytest.raises(TrackMLFormatError, match=r"event000000002-hits\.csv\.gz: line 6 does not end with a newline"):
        read_part(gz, "hits")
    assert len(read_part(write_text(path, text), "hits")) == 5
    assert len(read_part(write_text(path, HITS_HEADER.rstrip("\n")), "hits")) == 0  # a header alone has no row to cut


def test_truncated_gzip(tmp_path):
    data = gzip.compress((HITS_HEADER + "".join(good_hits_lines()) * 50).encode())
    path = tmp_path / "event000000001-hits.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrackMLFormatError, match=r"event000000001-hits\.csv\.gz: corrupt or truncated gzip"):
        read_part(path, "hits")


@pytest.mark.parametrize("part", ["hits", "truth"])
def test_duplicate_hit_id(tmp_path, event, part):
    write_event(tmp_path / "event000000001", **{part: event[part]})
    path = tmp_path / f"event000000001-{part}.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[7] = "3" + lines[7][lines[7].index(",") :]  # file line 8 now repeats hit_id 3 of line 4
    path.write_text("".join(lines))
    with pytest.raises(TrackMLFormatError) as info:
        read_part(path, part)
    assert f"event000000001-{part}.csv: duplicate hit_id" in str(info.value)
    assert "hit_id=3 (lines 4, 8)" in str(info.value)


def test_duplicate_particle_id(tmp_path):
    path = write_text(
        tmp_path / "p.csv",
        "particle_id,vx,vy,vz,px,py,pz,q,nhits\n7,0,0,0,1,1,1,1,4\n8,0,0,0,1,1,1,1,4\n7,0,0,0,1,1,1,1,4\n",
    )
    with pytest.raises(TrackMLFormatError, match=r"p\.csv: duplicate particle_id.*particle_id=7 \(lines 2, 4\)"):
        read_part(path, "particles")


def test_failed_write_leaves_nothing(tmp_path, event):
    bad_truth = event["truth"].drop(columns="tz")
    with pytest.raises(TrackMLFormatError, match=r"event000000001-truth\.csv.*missing column\(s\) tz"):
        write_event(tmp_path / "event000000001", hits=event["hits"], truth=bad_truth)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_values_that_would_not_read_back(tmp_path, event):
    hits = event["hits"].astype({"volume_id": float})
    hits.loc[2, "volume_id"] = np.nan
    with pytest.raises(TrackMLFormatError, match="column volume_id.*row 2"):
        write_event(tmp_path / "event000000001", hits=hits)
    with pytest.raises(TrackMLFormatError, match="duplicate hit_id"):
        write_event(tmp_path / "event000000001", hits=event["hits"].assign(hit_id=1))
    assert list(tmp_path.iterdir()) == []


def test_rewriting_with_other_compression_replaces_the_part(tmp_path, event):
    prefix = tmp_path / "event000000001"
    write_event(prefix, hits=event["hits"])
    write_event(prefix, compress=True, hits=event["hits"])
    assert [p.name for p in tmp_path.iterdir()] == ["event000000001-hits.csv.gz"]


# ------------------------------------------------------------------------------------------
# Hit weights
# ------------------------------------------------------------------------------------------


def weight_case(nhits: dict[int, int], pt: dict[int, float], noise: int = 0, rng_seed: int = 0):
    """Truth and particles with the given hits per particle (tz = rank + 1 from vz = 0), rows shuffled."""
    ids = np.r_[np.repeat(list(nhits), list(nhits.values())), np.zeros(noise, dtype=int)]
    tz = np.r_[np.concatenate([np.arange(1.0, n + 1) for n in nhits.values()]), np.zeros(noise)]
    order = np.random.default_rng(rng_seed).permutation(len(ids))
    truth = pd.DataFrame({"hit_id": np.arange(1, len(ids) + 1), "particle_id": ids[order], "tz": tz[order]})
    particles = pd.DataFrame({"particle_id": list(pt), "vz": 0.0, "px": list(pt.values()), "py": 0.0})
    return truth, particles


def test_weights_sum_to_one_and_ignore_noise_and_short_particles():
    truth, particles = weight_case({1: 6, 2: 3, 3: 5}, {1: 1.0, 2: 5.0, 3: 0.3}, noise=4)
    weights = hit_weights(truth, particles)
    assert weights.dtype == np.float32 and weights.shape == (len(truth),)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    ids = truth["particle_id"].to_numpy()
    assert (weights[ids == 0] == 0).all() and (weights[ids == 2] == 0).all()
    assert (weights[(ids == 1) | (ids == 3)] > 0).all()


def test_weights_all_zero_when_nothing_weighs():
    truth, particles = weight_case({5: 3}, {5: 10.0}, noise=5)
    assert (hit_weights(truth, particles) == 0).all()


def test_particle_missing_from_particles_weighs_zero():
    truth, particles = weight_case({1: 5, 2: 5}, {1: 1.0})
    weights = hit_weights(truth, particles)
    assert (weights[truth["particle_id"] == 2] == 0).all() and weights.sum() == pytest.approx(1.0)


def test_pt_ramp():
    pts = {1: 0.04, 2: 0.05, 3: 0.2, 4: 0.5, 5: 1.75, 6: 3.0, 7: 30.0}
    truth, particles = weight_case(dict.fromkeys(pts, 5), pts)
    weights = hit_weights(truth, particles)
    per_particle = pd.Series(weights).groupby(truth["particle_id"].to_numpy()).sum()
    relative = per_particle / per_particle[7]
    np.testing.assert_allclose(relative.to_numpy(), [0, 0.2, 0.2, 0.2, 0.6, 1, 1], atol=1e-6)


@pytest.mark.parametrize(
    "nhits, expected",
    [
        (9, PROFILE),
        (17, np.interp(np.arange(17) / 2, np.arange(9), PROFILE)),
        (4, np.interp([0, 8 / 3, 16 / 3, 8], np.arange(9), PROFILE)),
        (25, np.r_[np.interp(np.arange(20) * 8 / 19, np.arange(9), PROFILE), [6.0] * 5]),
    ],
)
def test_order_profile(nhits, expected):
    truth, particles = weight_case({77: nhits}, {77: 4.0}, rng_seed=nhits)
    weights = hit_weights(truth, particles)
    by_rank = weights[np.argsort(truth["tz"].to_numpy())]  # rank = distance from the vertex
    np.testing.assert_allclose(by_rank, expected / expected.sum(), rtol=1e-6)
    assert by_rank[0] > by_rank[nhits // 2] and by_rank[1] > by_rank[nhits // 2]


# ------------------------------------------------------------------------------------------
# Score
# ------------------------------------------------------------------------------------------


def score_truth(groups: dict[int, int], weights: dict[int, float] | None = None) -> pd.DataFrame:
    """Truth with the given number of hits per particle (hit_ids consecutive in dict order);
    each particle's hits share `weights[pid]` equally (default: equal per hit, normalised)."""
    ids = np.repeat(list(groups), list(groups.values()))
    if weights is None:
        weight = np.where(ids == 0, 0.0, 1.0)
    else:
        weight = np.array([weights[pid] / groups[pid] for pid in ids])
    return pd.DataFrame({"hit_id": np.arange(1, len(ids) + 1), "particle_id": ids, "weight": weight / weight.sum()})


def submit(*tracks: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hit_id": np.concatenate(tracks),
            "track_id": np.repeat(np.arange(len(tracks)) + 100, [len(t) for t in tracks]),
        }
    )


def hits_of(truth: pd.DataFrame, pid: int) -> list[int]:
    return truth.loc[truth["particle_id"] == pid, "hit_id"].tolist()


def test_perfect_submission_scores_one():
    truth = score_truth({3: 5, 1: 4, 0: 3, 2: 6})
    perfect = submit(*(hits_of(truth, pid) for pid in (0, 1, 2, 3)))
    assert score_event(truth, perfect) == pytest.approx(1.0)
    shuffled = perfect.sample(frac=1, random_state=1).assign(track_id=lambda s: s["track_id"].astype(str))
    assert score_event(truth, shuffled) == pytest.approx(1.0)


def test_one_track_with_every_hit():
    truth = score_truth({1: 4, 2: 4, 0: 2})
    assert score_event(truth, submit(truth["hit_id"].tolist())) == 0.0
    dominant = score_truth({1: 6, 2: 2, 0: 1})  # particle 1: 6 of 9 hits in the track, all its hits
    assert score_event(dominant, submit(dominant["hit_id"].tolist())) == pytest.approx(6 / 8)


def test_tie_in_majority_goes_to_smaller_particle_id():
    truth = score_truth({9: 2, 4: 2, 6: 1})
    matched = match_tracks(truth, submit([1, 3, 2, 4], [5]))
    assert matched["particle_id"].tolist() == [4, 6]
    assert matched["good"].tolist() == [False, True]  # a tie can never be a strict majority


def test_exactly_half_purity_is_not_good():
    truth = score_truth({1: 3, 2: 1, 3: 1})
    # track 100: two hits of particle 1 (2/3 of it) but only half of the track
    matched = match_tracks(truth, submit([1, 2, 4, 5], [3]))
    assert matched.loc[0, ["particle_id", "shared_nhits", "track_nhits"]].tolist() == [1, 2, 4]
    assert not matched.loc[0, "good"]
    assert score_event(truth, submit([1, 2, 4, 5], [3])) == 0.0


def test_track_with_exactly_half_of_a_particle_is_not_good():
    truth = score_truth({1: 4, 2: 4})
    halves = submit([1, 2], [3, 4], hits_of(truth, 2))
    assert score_event(truth, halves) == pytest.approx(0.5)


def test_split_track_scores_the_larger_piece():
    truth = score_truth({1: 6, 2: 4}, weights={1: 0.6, 2: 0.4})
    split = submit([1, 2, 3, 4], [5, 6], hits_of(truth, 2))
    assert score_event(truth, split) == pytest.approx(0.4 + 0.6 * 4 / 6)


def test_noise_majority_track():
    truth = score_truth({1: 4, 0: 3})
    noise_track = submit([1, 2, 3], [4, 5, 6, 7])  # hits 5-7 noise, 4 is particle 1's last
    matched = match_tracks(truth, noise_track)
    assert matched.loc[1, ["particle_id", "good"]].tolist() == [0, True]
    assert score_event(truth, noise_track) == pytest.approx(0.75)
    weighted_noise = truth.assign(weight=[0.1] * 4 + [0.2] * 3)  # noise counts like any particle
    assert score_event(weighted_noise, noise_track) == pytest.approx(0.3 + 0.6)


def test_submission_errors():
    truth = score_truth({1: 4, 2: 4})
    with pytest.raises(SubmissionError, match="track_id"):
        score_event(truth, submit([1, 2, 3, 4, 5, 6, 7, 8]).drop(columns="track_id"))
    with pytest.raises(SubmissionError, match=r"1 truth hit_id\(s\) missing from the submission: 8"):
        score_event(truth, submit([1, 2, 3, 4], [5, 6, 7]))
    with pytest.raises(SubmissionError, match=r"1 hit_id\(s\) assigned more than once: 3"):
        score_event(truth, submit([1, 2, 3, 4], [3, 5, 6, 7, 8]))
    with pytest.raises(SubmissionError, match=r"not in the truth: 99"):
        score_event(truth, submit([1, 2, 3, 4], [5, 6, 7, 8, 99]))


# ------------------------------------------------------------------------------------------
# Real files
# ------------------------------------------------------------------------------------------


def test_real_event_1001(shared_trackml):
    hits, particles = load_event(event_prefix(shared_trackml, 1001), parts=("hits", "particles"))
    assert len(hits) == 93_680 and len(particles) == 8_915
    assert hits.dtypes.to_dict() == PART_COLUMNS["hits"]
    assert particles.dtypes.to_dict() == PART_COLUMNS["particles"]
    assert hits["hit_id"].tolist() == list(range(1, 93_681))
    assert set(hits["volume_id"].unique()) == {7, 8, 9, 12, 13, 14, 16, 17, 18}


def test_real_folder_lists_only_the_event_with_hits(shared_trackml):
    assert list_events(shared_trackml) == [(1001, shared_trackml / "event000001001")]

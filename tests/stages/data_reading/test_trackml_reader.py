import json

import numpy as np
import pytest
import torch

from stages.data_reading.event_features import EventContentError
from stages.data_reading.trackml_reader import assign_splits
from tb_plugin.config import ConfigError
from tb_plugin.event_store import SplitError, list_event_files, load_event
from tb_plugin.pipeline import stage_from_mapping
from tb_plugin.trackml import TrackMLFormatError, event_prefix, write_event


def reader(input_dir, stage_dir, **overrides):
    values = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(input_dir),
        "stage_dir": str(stage_dir),
        "data_split": [4, 1, 1],
        **overrides,
    }
    return stage_from_mapping(values, "reader.yaml")


def only_event(stage_dir):
    files = [f for split in ("trainset", "valset", "testset") for f in list_event_files(stage_dir, split)]
    return load_event(files[0])


def test_writes_every_event_into_its_split(tiny_trackml_folder, tmp_path):
    reader(tiny_trackml_folder, tmp_path / "fs").infer()
    counts = [len(list_event_files(tmp_path / "fs", s)) for s in ("trainset", "valset", "testset")]
    assert counts == [4, 1, 1]


def test_hit_features_truth_edges_and_particle_features(tiny_trackml_folder, tmp_path):
    reader(tiny_trackml_folder, tmp_path / "fs", data_split=[0, 0, 1]).infer()
    data = only_event(tmp_path / "fs")
    assert data.num_nodes == 8
    assert data.hit_id.tolist() == list(range(1, 9))
    assert torch.allclose(data.hit_r, torch.hypot(data.hit_x, data.hit_y))
    assert torch.allclose(data.hit_phi, torch.atan2(data.hit_y, data.hit_x))
    # tiny detector: modules (8,2,1), (8,4,1), (8,6,1), (8,8,1) get dense indices 0..3
    layer_to_index = {2: 0, 4: 1, 6: 2, 8: 3}
    assert data.hit_module_index.tolist() == [layer_to_index[lay] for lay in data.hit_layer_id.tolist()]
    # A: hit_ids 5,3,8,1 from its vertex (node indices 4,2,7,0); B: 2,7,4 from its vertex at
    # x = 200 mm (nodes 1,6,3), each edge then oriented inner to outer.
    assert data.track_edges.tolist() == [[4, 2, 7, 6, 3], [2, 7, 0, 1, 6]]
    assert data.track_particle_pt.tolist() == pytest.approx([5000.0] * 3 + [1000.0] * 2)
    assert data.track_particle_radius.tolist() == pytest.approx([0.0] * 3 + [200.0] * 2)
    assert data.track_particle_nhits.tolist() == [4, 4, 4, 3, 3]
    assert (data.hit_particle_id == 0).sum() == 1
    assert data.event_id in {f"{i:09d}" for i in range(100, 106)}
    assert data.config[-1]["stage"] == "data_reading"
    assert data.config[-1]["data_split"] == [0, 0, 1]


def test_hard_cuts_drop_truth_edges_of_failing_particles(tiny_trackml_folder, tmp_path):
    reader(tiny_trackml_folder, tmp_path / "fs", data_split=[0, 0, 1], hard_cuts={"pt": [2000, float("inf")]}).infer()
    data = only_event(tmp_path / "fs")
    assert data.track_edges.tolist() == [[4, 2, 7], [2, 7, 0]]
    assert data.track_particle_pt.min() >= 2000
    assert data.num_nodes == 8  # hits are kept


def test_split_is_deterministic_and_checked():
    ids = list(range(1000, 1020))
    first = assign_splits(ids, [10, 5, 5], seed=3, source="x")
    assert first == assign_splits(list(reversed(ids)), [10, 5, 5], seed=3, source="x")
    assert first != assign_splits(ids, [10, 5, 5], seed=4, source="x")
    assert sorted(sum(first.values(), [])) == ids
    with pytest.raises(
        ConfigError, match=r"key 'data_split' \[10, 10, 10\] asks for 30 events but the input folder has 20"
    ):
        assign_splits(ids, [10, 10, 10], seed=0, source="x")


def test_resume_skips_written_events_and_overwrite_rewrites(tiny_trackml_folder, tmp_path):
    stage = reader(tiny_trackml_folder, tmp_path / "fs")
    stage.infer()
    files = list_event_files(tmp_path / "fs", "trainset")
    for f in files:
        f.write_bytes(b"marker")  # a finished file must not be touched by a resumed run
    stage.infer()
    assert all(f.read_bytes() == b"marker" for f in files)
    stage.infer(overwrite=True)
    assert all(load_event(f).num_nodes == 8 for f in files)


def test_unknown_module_names_file_and_module(tiny_trackml_folder, tmp_path, make_tiny_event):
    hits, particles, truth = make_tiny_event(200)
    hits.loc[0, "module_id"] = 77
    write_event(event_prefix(tiny_trackml_folder, 200), hits=hits, particles=particles, truth=truth)
    stage = reader(tiny_trackml_folder, tmp_path / "fs", data_split=[7, 0, 0])
    with pytest.raises(EventContentError, match=r"event000000200-hits: 1 hits lie on 1 modules .*\(8, 8, 77\)"):
        stage.infer()


def test_missing_column_names_the_file(tiny_trackml_folder, tmp_path):
    path = tiny_trackml_folder / "event000000100-hits.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
    with pytest.raises(TrackMLFormatError, match=r"event000000100-hits\.csv.*module_id"):
        reader(tiny_trackml_folder, tmp_path / "fs", data_split=[6, 0, 0]).infer()


def test_evaluate_writes_metrics_with_config_and_plot(tiny_trackml_folder, tmp_path):
    stage = reader(tiny_trackml_folder, tmp_path / "fs")
    stage.infer()
    metrics = stage.evaluate()
    saved = json.loads((tmp_path / "fs" / "eval" / "metrics.json").read_text())
    assert saved["trainset"]["events"] == 4 and saved["trainset"]["mean_hits"] == 8
    assert saved["trainset"]["mean_noise_fraction"] == pytest.approx(1 / 8)
    assert saved["config"]["input_dir"] == str(tiny_trackml_folder)
    assert metrics["testset"]["mean_track_edges"] == 5
    assert (tmp_path / "fs" / "eval" / "summary.png").stat().st_size > 1000


def test_real_trackml_hits_without_truth(shared_trackml, tmp_path):
    stage = reader(
        shared_trackml, tmp_path / "fs", data_split=[0, 0, 1], detector=str(shared_trackml / "detectors.csv")
    )
    stage.infer()
    data = only_event(tmp_path / "fs")
    assert data.event_id == "000001001"
    assert data.num_nodes == 93680
    assert "track_edges" not in data
    assert int(data.hit_module_index.min()) >= 0
    volumes, counts = np.unique(data.hit_volume_id.numpy(), return_counts=True)
    assert dict(zip(volumes.tolist(), counts.tolist()))[8] == 21941


def split_of_each_event(stage_dir):
    """event id -> the splits it sits in."""
    where = {}
    for split in ("trainset", "valset", "testset"):
        for path in (stage_dir / split).glob("event*.pyg"):
            where.setdefault(path.name, []).append(split)
    return where


def test_another_seed_is_refused_without_overwrite_and_moves_events_with_it(tiny_trackml_folder, tmp_path):
    fs = tmp_path / "fs"
    reader(tiny_trackml_folder, fs, seed=0).infer()
    before = split_of_each_event(fs)
    with pytest.raises(SplitError) as err:
        reader(tiny_trackml_folder, fs, seed=1).infer()
    message = str(err.value)
    assert message.startswith(f"{fs}: ") and "seed, data_split or input_dir changed" in message
    assert message.endswith(f"Rerun with --overwrite to remove them, or delete {fs}") and "\n" not in message
    assert split_of_each_event(fs) == before  # refused before anything moved
    reader(tiny_trackml_folder, fs, seed=1).infer(overwrite=True)
    after = split_of_each_event(fs)
    assert after != before and all(len(splits) == 1 for splits in after.values()) and len(after) == 6
    record = json.loads((fs / "splits.json").read_text())
    assert record["seed"] == 1 and record["data_split"] == [4, 1, 1] and record["input_dir"] == str(tiny_trackml_folder)
    assert {f"event{e:09d}.pyg": [s] for s, ids in record["splits"].items() for e in ids} == after
    assert [len(list_event_files(fs, s)) for s in ("trainset", "valset", "testset")] == [4, 1, 1]


def test_more_input_events_or_a_smaller_split_leave_each_event_in_one_split(
    tiny_trackml_folder, tmp_path, make_tiny_event
):
    fs = tmp_path / "fs"
    reader(tiny_trackml_folder, fs).infer()
    for event_id in (106, 107):
        hits, particles, truth = make_tiny_event(event_id)
        write_event(event_prefix(tiny_trackml_folder, event_id), hits=hits, particles=particles, truth=truth)
    reader(tiny_trackml_folder, fs, data_split=[6, 1, 1]).infer(overwrite=True)
    assert all(len(s) == 1 for s in split_of_each_event(fs).values()) and len(split_of_each_event(fs)) == 8
    reader(tiny_trackml_folder, fs, data_split=[2, 1, 1]).infer(overwrite=True)
    assert len(split_of_each_event(fs)) == 4  # the events no split holds any more are gone
    assert [len(list_event_files(fs, s)) for s in ("trainset", "valset", "testset")] == [2, 1, 1]


def test_the_config_is_checked_before_anything_is_written(tiny_trackml_folder, tmp_path):
    with pytest.raises(
        ConfigError, match=r"key 'data_split' \[10, 0, 0\] asks for 10 events but the input folder has 6"
    ):
        reader(tiny_trackml_folder, tmp_path / "fs", data_split=[10, 0, 0]).infer()
    assert not (tmp_path / "fs").exists()  # no detectors.csv, no splits.json


def test_a_killed_runs_temporaries_are_removed_and_nothing_else(tiny_trackml_folder, tmp_path):
    fs = tmp_path / "fs"
    (fs / "trainset").mkdir(parents=True)
    orphan = fs / "trainset" / ".event000000100.pyg.k2j4x9.tmp"
    orphan.write_bytes(b"half an event")
    mine = fs / "trainset" / "notes.tmp"
    mine.write_text("not ours")
    reader(tiny_trackml_folder, fs).infer()
    assert not orphan.exists() and mine.exists()


def test_an_unreadable_first_event_leaves_no_store_behind(tiny_trackml_folder, tmp_path):
    hits = tiny_trackml_folder / "event000000100-hits.csv"
    hits.write_text(hits.read_text()[:-1])  # the last row, "...,8,8,1", may have been "...,8,8,17"
    stage = reader(tiny_trackml_folder, tmp_path / "fs", data_split=[6, 0, 0], seed=0)
    with pytest.raises(TrackMLFormatError, match=r"event000000100-hits\.csv: line 9 does not end with a newline"):
        stage.infer()
    assert not (tmp_path / "fs").exists()  # no splits.json, no detectors.csv for a store without events

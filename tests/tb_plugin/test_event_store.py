import os

import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import (
    EventFileError,
    MissingFieldError,
    SplitError,
    append_config,
    event_file,
    list_event_files,
    load_event,
    remove_stale_temporaries,
    require_field,
    save_event,
    write_split_record,
)


def test_round_trip_keeps_fields_event_id_and_config(tmp_path):
    data = Data(hit_r=torch.arange(4.0), edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=4)
    data.event_id = "000000042"
    append_config(data, {"stage": "a"})
    append_config(data, {"stage": "b", "cut": [1000.0, float("inf")]})
    path = event_file(tmp_path, "trainset", 42)
    save_event(data, path)
    loaded = load_event(path)
    assert path.name == "event000000042.pyg"
    assert torch.equal(loaded.hit_r, data.hit_r)
    assert loaded.event_id == "000000042"
    assert [c["stage"] for c in loaded.config] == ["a", "b"]
    assert list_event_files(tmp_path, "trainset") == [path]
    assert list_event_files(tmp_path, "valset") == []


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_refuses_a_file_that_would_run_code(tmp_path):
    path = tmp_path / "event000000001.pyg"
    torch.save({"payload": _RunsCode()}, path)
    with pytest.raises(EventFileError, match=r"event000000001\.pyg: refused to load") as err:
        load_event(path)
    assert not (tmp_path / "pwned").exists()
    assert str(err.value).endswith("(it needs posix.system)")  # not torch's advice to load with weights_only=False


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "event000000002.pyg"
    save_event(Data(hit_r=torch.arange(1000.0)), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EventFileError, match=r"event000000002\.pyg: not a readable event file"):
        load_event(path)
    with pytest.raises(EventFileError, match="event file not found"):
        load_event(tmp_path / "event000000003.pyg")
    path.write_bytes(b"half a checkpoint")  # torch's unpickler fails on these bytes with a KeyError
    with pytest.raises(
        EventFileError, match=r"^\S*event000000002\.pyg: not a readable event file \(truncated or corrupt\?\): KeyError"
    ):
        load_event(path)


def test_not_a_data_object(tmp_path):
    path = tmp_path / "event000000004.pyg"
    torch.save({"hit_r": torch.zeros(3)}, path)
    with pytest.raises(EventFileError, match="expected a torch_geometric Data object, found dict"):
        load_event(path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = event_file(tmp_path, "trainset", 5)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_event(Data(hit_r=torch.zeros(2)), path)
    assert list(path.parent.iterdir()) == []


def test_require_field_names_field_and_file():
    data = Data(hit_r=torch.zeros(2))
    assert torch.equal(require_field(data, "hit_r", "e.pyg"), torch.zeros(2))
    with pytest.raises(MissingFieldError, match=r"e\.pyg: the event has no field 'hit_tb_emb'. Available: hit_r"):
        require_field(data, "hit_tb_emb", "e.pyg")


def tiny_event(event_id):
    data = Data(hit_r=torch.arange(3.0), num_nodes=3)
    data.event_id = f"{event_id:09d}"
    return data


def test_an_event_in_two_splits_is_refused_naming_both_files(tmp_path):
    save_event(tiny_event(7), event_file(tmp_path, "trainset", 7))
    save_event(tiny_event(8), event_file(tmp_path, "valset", 8))
    assert list_event_files(tmp_path, "trainset") == [event_file(tmp_path, "trainset", 7)]
    save_event(tiny_event(7), event_file(tmp_path, "testset", 7))
    for split in ("trainset", "valset", "testset"):  # whichever split a stage reads
        with pytest.raises(SplitError) as err:
            list_event_files(tmp_path, split)
        assert str(err.value) == (
            f"{tmp_path}/trainset/event000000007.pyg and {tmp_path}/testset/event000000007.pyg: event 000000007 sits in two "
            f"splits of {tmp_path}; rerun the stage that wrote {tmp_path} with --overwrite, or delete the folder and run it again"
        )


def test_split_folders_must_agree_with_the_split_record(tmp_path):
    write_split_record(tmp_path, {"trainset": [7], "valset": [], "testset": [8]}, {"seed": 0})
    save_event(tiny_event(7), event_file(tmp_path, "trainset", 7))
    save_event(tiny_event(8), event_file(tmp_path, "testset", 8))
    assert len(list_event_files(tmp_path, "testset")) == 1
    moved = event_file(tmp_path, "valset", 8)
    moved.parent.mkdir()
    event_file(tmp_path, "testset", 8).rename(moved)  # by hand, behind the record's back
    with pytest.raises(
        SplitError, match=rf"^{moved}: {tmp_path}/splits.json puts event 000000008 in testset; rerun data reading"
    ):
        list_event_files(tmp_path, "trainset")
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(SplitError, match=r"splits\.json: not a split record"):
        list_event_files(tmp_path, "trainset")


def test_only_temporaries_of_event_files_are_removed(tmp_path):
    (tmp_path / "valset").mkdir()
    ours = [
        tmp_path / "valset" / ".event000000001.pyg.x1y2.tmp",
        tmp_path / "valset" / ".event000000002-graph.pyg.ab.tmp",
    ]
    others = [
        tmp_path / "valset" / "event000000003.pyg",
        tmp_path / "valset" / ".notes.tmp",
        tmp_path / ".event000000001.pyg.x.tmp",
    ]
    for path in ours + others:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in others) and not any(p.exists() for p in ours)

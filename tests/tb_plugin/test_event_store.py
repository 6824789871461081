import os
import pickle

import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import (
    EventFileError,
    MissingFieldError,
    append_config,
    event_file,
    list_event_files,
    load_event,
    require_field,
    save_event,
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
    with pytest.raises(EventFileError, match=r"event000000001\.pyg: refused to load"):
        load_event(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "event000000002.pyg"
    save_event(Data(hit_r=torch.arange(1000.0)), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EventFileError, match=r"event000000002\.pyg: not a readable event file"):
        load_event(path)
    with pytest.raises(EventFileError, match="event file not found"):
        load_event(tmp_path / "event000000003.pyg")


def test_not_a_data_object(tmp_path):
    path = tmp_path / "event000000004.pyg"
    torch.save({"hit_r": torch.zeros(3)}, path)
    with pytest.raises(EventFileError, match="expected a torch_geometric Data object, found dict"):
        load_event(path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = event_file(tmp_path, "trainset", 5)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
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

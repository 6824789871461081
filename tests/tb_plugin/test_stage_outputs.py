"""A stage that rewrites events keeps its splits those of its input: stale outputs, temporaries."""

import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import SplitError, event_file, list_event_files, save_event
from tb_plugin.stage import Stage, StageConfig


class Copy(Stage):
    """The smallest event-rewriting stage: every input event copied as it is."""

    def infer(self, overwrite: bool = False) -> None:
        self.rewrite_events(lambda data, source: data, overwrite)


def store(root, layout):
    """An input store with events {split: [ids]}."""
    for split, ids in layout.items():
        for event_id in ids:
            data = Data(hit_r=torch.arange(2.0), num_nodes=2)
            data.event_id = f"{event_id:09d}"
            save_event(data, event_file(root, split, event_id))
    return root


def copy_stage(input_dir, stage_dir):
    return Copy(StageConfig(stage="copy", model="Copy", input_dir=input_dir, stage_dir=stage_dir))


def layout(stage_dir):
    return {split: [p.name for p in list_event_files(stage_dir, split)] for split in ("trainset", "valset", "testset")}


def test_an_event_that_moved_upstream_is_refused_without_overwrite_and_moved_with_it(tmp_path):
    fs = store(tmp_path / "fs", {"trainset": [1, 2], "valset": [3], "testset": [4]})
    out = tmp_path / "out"
    copy_stage(fs, out).infer()
    (fs / "trainset" / "event000000002.pyg").rename(fs / "testset" / "event000000002.pyg")  # data reading, another seed
    (fs / "valset" / "event000000003.pyg").unlink()  # ... and a smaller data_split
    before = layout(out)
    with pytest.raises(SplitError) as err:
        copy_stage(fs, out).infer()
    assert str(err.value) == (
        f"{out}: 2 event file(s) do not match the splits of the input (e.g. trainset/event000000002.pyg: "
        f"{fs} now has it in testset); rerun with --overwrite to rewrite this stage, or delete {out}"
    )
    assert layout(out) == before
    copy_stage(fs, out).infer(overwrite=True)
    assert (
        layout(out)
        == layout(fs)
        == {"trainset": ["event000000001.pyg"], "valset": [], "testset": ["event000000002.pyg", "event000000004.pyg"]}
    )


def test_a_resumed_run_removes_only_its_own_temporaries(tmp_path):
    fs = store(tmp_path / "fs", {"trainset": [1]})
    (tmp_path / "out" / "trainset").mkdir(parents=True)
    orphan = tmp_path / "out" / "trainset" / ".event000000001.pyg.q8r7.tmp"
    orphan.write_bytes(b"half")
    copy_stage(fs, tmp_path / "out").infer()
    assert not orphan.exists() and layout(tmp_path / "out")["trainset"] == ["event000000001.pyg"]

"""The runner from the command line: `tb run`, `tb infer`, `tb eval`, resume, atomic writes, config errors."""

import pytest
import yaml

from tb_plugin import event_store
from tb_plugin.cli import main
from tb_plugin.event_store import list_event_files, load_event


def write_configs(tmp_path, folder, **overrides):
    reading = {
        "stage": "data_reading",
        "model": "TrackMLReader",
        "input_dir": str(folder),
        "stage_dir": str(tmp_path / "fs"),
        "data_split": [4, 1, 1],
        **overrides,
    }
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "reading.yaml").write_text(yaml.safe_dump(reading))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"stages": ["configs/reading.yaml"]}))
    return tmp_path / "configs" / "reading.yaml", tmp_path / "pipeline.yaml"


def all_files(stage_dir):
    return [f for s in ("trainset", "valset", "testset") for f in list_event_files(stage_dir, s)]


def test_run_writes_events_and_metrics(tiny_trackml_folder, tmp_path):
    _, pipeline = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "run", str(pipeline)]) == 0
    assert len(all_files(tmp_path / "fs")) == 6
    assert (tmp_path / "fs" / "eval" / "metrics.json").is_file()


def test_interrupted_run_leaves_no_partial_file_and_resumes(tiny_trackml_folder, tmp_path, monkeypatch):
    _, pipeline = write_configs(tmp_path, tiny_trackml_folder)
    real_save = event_store.torch.save
    calls = {"n": 0}

    def save_then_die(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third event dies half-way through its write
            f.write(b"half an event")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(event_store.torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(["-q", "run", str(pipeline)])
    files = all_files(tmp_path / "fs")
    assert len(files) == 2
    assert all(load_event(f).num_nodes == 8 for f in files)
    leftovers = [p.name for p in (tmp_path / "fs").rglob("*") if p.is_file() and p.suffix != ".pyg"]
    assert sorted(leftovers) == [
        "detectors.csv",
        "splits.json",
        "stage_record.json",
    ]  # geometry, split record and the stage record (inference begun, not finished), each written whole

    monkeypatch.setattr(event_store.torch, "save", real_save)
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(["-q", "run", str(pipeline)]) == 0
    assert len(all_files(tmp_path / "fs")) == 6
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())  # finished events were skipped


def test_infer_and_eval_commands(tiny_trackml_folder, tmp_path):
    config, _ = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "infer", str(config)]) == 0
    assert main(["-q", "eval", str(config)]) == 0
    assert (tmp_path / "fs" / "eval" / "summary.png").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage_dri": "x"}, "unknown key 'stage_dri'; did you mean 'stage_dir'?"),
        ({"data_split": "4,1,1"}, "key 'data_split' must be list of int, got '4,1,1'"),
        (
            {"model": "TrackMLRead"},
            "unknown model for stage 'data_reading' 'TrackMLRead'; did you mean 'TrackMLReader'?",
        ),
        ({"hard_cuts": {"pt": ["above", 1]}}, "key 'hard_cuts'.pt: unknown operator 'above'"),
    ],
)
def test_config_errors_are_one_message_naming_file_and_key(tiny_trackml_folder, tmp_path, capsys, overrides, message):
    config, pipeline = write_configs(tmp_path, tiny_trackml_folder, **overrides)
    assert main(["-q", "infer", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tb: error: ") and str(config) in err and message in err
    assert "Traceback" not in err
    assert main(["-q", "run", str(pipeline)]) == 2
    assert not (tmp_path / "fs").exists()  # nothing runs before every config is valid


def test_missing_required_key_and_train_on_a_stage_that_does_not_train(tiny_trackml_folder, tmp_path, capsys):
    config, _ = write_configs(tmp_path, tiny_trackml_folder)
    assert main(["-q", "train", str(config)]) == 2
    assert "has nothing to train" in capsys.readouterr().err
    values = yaml.safe_load(config.read_text())
    del values["input_dir"]
    config.write_text(yaml.safe_dump(values))
    assert main(["-q", "infer", str(config)]) == 2
    assert f"{config}: missing required key 'input_dir'" in capsys.readouterr().err


def test_pipeline_entry_with_overrides_and_unknown_pipeline_key(tiny_trackml_folder, tmp_path, capsys):
    config, pipeline = write_configs(tmp_path, tiny_trackml_folder)
    pipeline.write_text(yaml.safe_dump({"stages": [{"config": "configs/reading.yaml", "data_split": [1, 1, 1]}]}))
    assert main(["-q", "run", str(pipeline)]) == 0
    assert len(all_files(tmp_path / "fs")) == 3
    pipeline.write_text(yaml.safe_dump({"stage": ["configs/reading.yaml"]}))
    assert main(["-q", "run", str(pipeline)]) == 2
    assert "unknown key 'stage'; did you mean 'stages'?" in capsys.readouterr().err

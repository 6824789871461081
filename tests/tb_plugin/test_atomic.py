"""Write errors: disk full, no permission, a read-only filesystem or a folder removed while writing give
one line naming the file and the reason, exit status 2, and leave no partial file."""

import errno
import os
import re
import shutil

import pandas as pd
import pytest
import torch
import yaml

from tb_plugin import event_store
from tb_plugin.atomic import WriteError, atomic_path
from tb_plugin.cli import main


def reading_config(tmp_path, folder):
    config = tmp_path / "reading.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stage": "data_reading",
                "model": "TrackMLReader",
                "input_dir": str(folder),
                "stage_dir": str(tmp_path / "fs"),
                "data_split": [4, 1, 1],
            }
        )
    )
    return config


def one_line(capsys) -> str:
    err = re.sub(r"[^\n]*\r", "", capsys.readouterr().err)
    assert err.startswith("tb: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=["ENOSPC", "EACCES", "EROFS"])
def test_a_refused_event_write_is_one_line_and_leaves_nothing(tiny_trackml_folder, tmp_path, capsys, monkeypatch, code):
    config = reading_config(tmp_path, tiny_trackml_folder)

    def refused(obj, f, *args, **kwargs):
        f.write(b"half an event")  # the filesystem took part of it
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(event_store.torch, "save", refused)
    assert main(["-q", "infer", str(config)]) == 2
    err = one_line(capsys)
    assert re.search(rf"{tmp_path / 'fs'}/trainset/event\d+\.pyg: cannot write: {os.strerror(code)}", err), err
    assert errno.errorcode[code] in err
    assert not [p for p in (tmp_path / "fs").rglob("*") if p.is_file() and p.suffix in (".pyg", ".tmp")]


def test_a_folder_removed_while_writing_is_one_line(tiny_trackml_folder, tmp_path, capsys, monkeypatch):
    config = reading_config(tmp_path, tiny_trackml_folder)
    real_save = torch.save

    def vanish(obj, f, *args, **kwargs):
        shutil.rmtree(tmp_path / "fs" / "trainset")  # e.g. a cleanup job, or another user's rm -r
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(event_store.torch, "save", vanish)
    assert main(["-q", "infer", str(config)]) == 2
    assert "cannot write: No such file or directory [ENOENT] (the folder was removed while writing?)" in one_line(
        capsys
    )


def test_a_full_disk_under_the_geometry_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, path, *args, **kwargs):
        with open(path, "w") as handle:
            handle.write("volume_id,layer")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "sim"
    assert main(["-q", "simulate", "--events", "1", "--pileup", "1", "--out", str(out)]) == 2
    assert f"{out / 'detectors.csv'}: cannot write: No space left on device [ENOSPC]" in one_line(capsys)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_other_errors_pass_through_and_a_write_error_keeps_its_message(tmp_path):
    # not a disk's answer: left as it is
    with pytest.raises(OSError, match="Bad file descriptor"), atomic_path(tmp_path / "x.txt"):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    quota = r"x\.txt: cannot write: Disk quota exceeded \[EDQUOT\]"
    with pytest.raises(WriteError, match=quota), atomic_path(tmp_path / "x.txt"):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert list(tmp_path.iterdir()) == []


def test_a_lightning_style_direct_write_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    """Writes that do not go through atomic_path (Lightning saves its checkpoints itself) still give
    one line naming the file."""

    def checkpoint_write(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "artifacts" / "last.ckpt"))

    monkeypatch.setattr("tb_plugin.cli.cmd_train", checkpoint_write)
    assert main(["-q", "train", "unused.yaml"]) == 2
    assert f"{tmp_path / 'artifacts' / 'last.ckpt'}: cannot write: No space left on device" in one_line(capsys)

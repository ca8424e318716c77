"""--backup-dir: per-epoch checkpoints in a folder of their own, which --resume reads."""

from __future__ import annotations

import json

import cnnlab
from cnnlab.run_folder import read_history


def test_backup_dir_holds_the_checkpoints_and_resume_continues_from_it(tmp_path):
    backup = tmp_path / "shared-backup"
    common = dict(
        data="builtin:digits",
        model="simple_cnn",
        tensorboard=False,
        verbose=0,
        batch_size=128,
        model_kwargs={"filters": [8, 16], "dense": [32]},
    )
    first = cnnlab.train(
        epochs=1, runs_dir=str(tmp_path / "runs"), name="b", backup_dir=str(backup), **common
    )
    saved = backup / "b"
    assert sorted(p.name for p in saved.iterdir()) == ["best.keras", "last.keras", "state.json"]
    assert not any((first.run_dir / "checkpoints").iterdir())
    # As if killed after epoch 1: the run folder has no final model.
    (first.run_dir / "model.keras").unlink()
    resumed = cnnlab.train(resume=first.run_dir, epochs=2, verbose=0)
    assert json.loads((saved / "state.json").read_text())["epochs_done"] == 2
    assert read_history(resumed.run_dir / "history.csv")["epoch"] == [0.0, 1.0]
    assert (resumed.run_dir / "model.keras").is_file()

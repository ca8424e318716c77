"""Each worker reads its own shard of the training files: disjoint, equal, covering the split.

The pipelines checked are the ones the multi-worker loop builds
(``worker_dataset``): decoded, cached, shuffled and batched per worker, for
image folders, in-memory arrays and packed TFRecords. Images are identified by
their pixels (every test image is distinct).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cnnlab.data import load_data
from cnnlab.errors import ConfigError
from cnnlab.training.distribute import cluster_resolver, shard_rows, worker_dataset
from cnnlab.training.launch import tf_config, worker_args
from tests.conftest import make_image_folder


def _seen(ds) -> list[str]:
    """One digest per image the pipeline yields in one epoch (a pass over it)."""
    out = []
    for x, *_ in ds:
        for image in x.numpy().astype(np.uint8):
            out.append(hashlib.sha1(image.tobytes()).hexdigest())
    return out


def _all_images(bundle) -> set[str]:
    ds = bundle.subset("train", batch_size=64)
    seen = _seen(ds)
    assert len(set(seen)) == len(seen), "test images must be distinct"
    return set(seen)


def _check_disjoint(bundle, workers: int, batch: int, expect_each: int):
    every = _all_images(bundle)
    seen = []
    for i in range(workers):
        ds, batches, images = worker_dataset(bundle, "train", workers, i, batch, training=True)
        first, second = _seen(ds), _seen(ds)
        assert len(first) == len(set(first)) == images == expect_each  # no image twice
        assert sorted(first) == sorted(second)  # the same shard every epoch, reshuffled
        assert batches == -(-images // batch) or batches == images // batch
        seen.append(set(first))
    for i in range(workers):
        for j in range(i + 1, workers):
            assert not seen[i] & seen[j], f"workers {i} and {j} read the same image"
    union = set().union(*seen)
    assert union <= every
    return len(every - union)


def test_folder_shards_are_disjoint_and_cover_all_but_the_remainder(tmp_path):
    root = make_image_folder(tmp_path / "img", classes=("a", "b", "c"), per_class=15, size=12)
    bundle = load_data(
        f"folder:{root}", val_split=0.0, test_split=0.0, augment="none", batch_size=8, seed=3
    )
    n = len(bundle.examples("train")["labels"])
    assert n == 45
    # Batches that divide each shard: training drops a last batch of under 8 images.
    left_out = _check_disjoint(bundle, 2, 11, expect_each=22)
    assert left_out == 1  # 45 images, 2 workers: one sits out so both take 2 steps
    assert _check_disjoint(bundle, 3, 5, expect_each=15) == 0


def test_tfrecord_shards_are_disjoint_and_equal_in_steps(tmp_path):
    from cnnlab.data.tfrecord import pack

    root = make_image_folder(tmp_path / "img", classes=("a", "b"), per_class=20, size=12)
    pack(
        f"folder:{root}",
        tmp_path / "packed",
        shards=4,
        val_split=0.0,
        test_split=0.0,
        seed=3,
        quiet=True,
    )
    bundle = load_data(f"tfrecord:{tmp_path / 'packed'}", augment="none", batch_size=8)
    n = len(bundle.examples("train")["labels"])
    every = _all_images(bundle)
    seen = []
    for i in range(2):
        ds, batches, images = worker_dataset(bundle, "train", 2, i, 4, training=True)
        first = _seen(ds)
        assert len(first) == len(set(first)) == images == batches * 4
        seen.append(set(first))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] <= every and len(seen[0] | seen[1]) > n - 2 * 4 * 2


def test_shard_rows_are_a_partition_of_a_seeded_permutation():
    rows = [shard_rows(1437, 2, i, seed=5) for i in range(2)]
    assert [len(r) for r in rows] == [718, 718]
    assert not set(rows[0]) & set(rows[1])
    assert np.array_equal(rows[0], shard_rows(1437, 2, 0, seed=5))  # every worker agrees
    full = [shard_rows(10, 3, i, seed=5, equal=False) for i in range(3)]
    assert sorted(np.concatenate(full).tolist()) == list(range(10))


def test_launch_refuses_commands_and_strategies_it_cannot_run():
    assert worker_args(["train", "--epochs", "2"])[-2:] == ["--strategy", "multiworker"]
    assert worker_args(["train", "--resume", "runs/x"]) == ["train", "--resume", "runs/x"]
    with pytest.raises(ConfigError, match="needs --strategy multiworker, got --strategy mirrored"):
        worker_args(["train", "--strategy", "mirrored"])
    with pytest.raises(ConfigError, match="runs a cnnlab command on every worker, got 'evaluate'"):
        worker_args(["evaluate", "runs/x"])
    conf = json.loads(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert conf == {
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 1},
    }


def test_a_missing_or_broken_tf_config_is_explained(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    with pytest.raises(ConfigError, match="needs a cluster, but TF_CONFIG is not set") as e:
        cluster_resolver()
    assert "cnnlab launch --workers 2" in str(e.value)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not a tf.distribute cluster"):
        cluster_resolver()
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}})
    )
    with pytest.raises(ConfigError, match="parameter-server clusters are not supported"):
        cluster_resolver()


def test_commands_without_the_multiworker_loop_refuse_it_with_a_reason():
    from cnnlab.training.fit import get_strategy

    with pytest.raises(ConfigError, match="only `cnnlab train` has cnnlab's own multi-worker"):
        get_strategy("multiworker")  # as fine-tuning asks for it


def test_the_launcher_does_not_import_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, cnnlab.cli.launch, cnnlab.training.launch; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"

"""Multi-worker training: ``--strategy multiworker`` on ``tf.distribute.MultiWorkerMirroredStrategy``.

The cluster comes from ``TF_CONFIG`` (what Kubeflow's TFJob, Ray Train and
``cnnlab launch`` set on every worker), or from Slurm's variables when the job
runs under Slurm without ``TF_CONFIG``. Every worker runs the same command;
worker 0 (or the ``chief`` task) is the chief.

Why cnnlab runs its own epoch loop here instead of ``model.fit``
-----------------------------------------------------------------
With TensorFlow 2.21 / Keras 3.15, ``model.fit`` under this strategy fails
twice (checked on two local processes): Keras' ``_maybe_symbolic_build`` calls
``strategy.reduce("MEAN", batch)`` on the input batch ("Attempt to convert a
value (PerReplica...)", keras-team/keras#20585, open), and
``reduce_per_replica`` reduces scalar metric values along axis 0 ("Invalid
reduction dimension 0"); keras-nightly has both code paths unchanged.
Patching those private functions would tie cnnlab to one Keras release and
break silently on the next. Instead :func:`fit_multiworker` uses only public,
stable API: ``strategy.distribute_datasets_from_function`` (each worker builds
its own shard, explicitly), ``strategy.run`` of a gradient step (the Keras
optimizer sums the replicas' gradients, as in ``fit``), and Keras'
``CallbackList`` so that the run's own callbacks (history.csv, checkpoints,
TensorBoard, the fast recipe's lookahead, early stopping) run unchanged. The
logs have ``fit``'s names and meaning (loss with regularisation, accuracy,
top-k, ``val_*``), summed over the whole cluster before any callback sees them,
so every worker takes the same decisions (early stopping, best checkpoint).

Data: the training split is drawn and permuted from the seed identically on
every worker, and worker ``i`` of ``W`` keeps rows ``perm[i::W]``, cut to
``n // W`` so that every worker runs the same number of steps (up to ``W - 1``
images, chosen by the seed, sit out: < 0.1 % for any real split). Each worker
builds its pipeline (decode, cache, shuffle, augment, batch) over its own rows
only, so ``tf.data``'s auto-sharding (which would see an already batched,
cached pipeline) is switched off by construction. Packed TFRecords are
sharded by file (``RecordSplit.shard``) and every worker stops after the
smallest worker's number of full batches. Validation rows are split the same
way (none left out); each worker sums loss and hits over its rows and one
all-reduce makes the cluster's numbers.

Batch size and learning rate: ``batch_size`` is the *global* batch, split
evenly over all replicas (it must divide by their number), so a run on W
workers takes the same steps as one process with that batch and the
config's learning rate applies unchanged. When you grow the global batch with
the cluster (k times the batch), scale the learning rate linearly (k times,
Goyal et al. 2017) with a warm-up (``--warmup-epochs``); cnnlab does not
scale it behind your back.

BatchNorm: each worker's BatchNorm layers update their moving statistics from
their own batches, so the copies drift apart. At every epoch's end, before
validation and the checkpoint, :func:`average_batchnorm` replaces them on every
worker by the mean over workers (one all-reduce per epoch, instead of
synchronised BatchNorm's two per layer per step). Trainable weights never
drift: every replica applies the same summed gradients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

MULTIWORKER = "multiworker"
_STRATEGY = None


# ---------------------------------------------------------------- the cluster


def cluster_resolver():
    """The cluster of this process: ``TF_CONFIG``, else Slurm's, else a clear error."""
    import tensorflow as tf

    raw = os.environ.get("TF_CONFIG", "").strip()
    if raw:
        try:
            conf = json.loads(raw)
            workers = conf["cluster"].get("worker", []) + conf["cluster"].get("chief", [])
            task = conf["task"]["type"], int(conf["task"]["index"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"TF_CONFIG is not a tf.distribute cluster description: {raw[:200]!r}",
                expected='JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}',
                fix="Set TF_CONFIG on each host as the README's Multi-worker training shows, "
                "or use `cnnlab launch --workers N -- train ...` on one machine",
            ) from None
        if not workers or task[0] not in ("worker", "chief"):
            raise ConfigError(
                f"TF_CONFIG names no workers, or a task of type {task[0]!r}",
                expected="a cluster with 'worker' (and optionally 'chief') tasks, and this "
                "process's task of type worker or chief",
                fix="Fix TF_CONFIG (parameter-server clusters are not supported)",
            )
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=int(os.environ.get("CNNLAB_SLURM_PORT", "8888"))
        )
    raise ConfigError(
        "--strategy multiworker needs a cluster, but TF_CONFIG is not set (and this is "
        "not a Slurm job with several tasks)",
        expected="TF_CONFIG on every worker, as Kubeflow's TFJob, Ray Train or cnnlab "
        "launch set it; or srun with --ntasks 2 or more",
        fix="On one machine: `cnnlab launch --workers 2 -- train --strategy multiworker ...`; "
        "on several: set TF_CONFIG per host (README, Multi-worker training)",
    )


def multiworker_strategy():
    """The process's ``MultiWorkerMirroredStrategy`` (made once: TensorFlow allows one
    cluster per process, and it must exist before any other TensorFlow op runs)."""
    global _STRATEGY
    if _STRATEGY is None:
        import tensorflow as tf

        resolver = cluster_resolver()
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    return _STRATEGY


def is_multiworker(strategy) -> bool:
    return type(strategy).__name__.startswith("MultiWorkerMirroredStrategy") or (
        type(strategy).__name__ == "CollectiveAllReduceStrategy"
    )


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster."""

    index: int  # 0 is the chief
    count: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def worker_role(strategy=None) -> WorkerRole:
    """Which worker this process is (one-process strategies: worker 0 of 1)."""
    if strategy is None or not is_multiworker(strategy):
        return WorkerRole(0, 1)
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    has_chief = bool(spec.get("chief"))
    count = len(spec.get("chief", [])) + len(spec.get("worker", []))
    index = int(resolver.task_id) + (1 if has_chief and resolver.task_type == "worker" else 0)
    return WorkerRole(index, count)


def replica_batch_size(batch_size: int, strategy) -> int:
    """The per-replica batch of a global ``batch_size`` (which must split evenly)."""
    n = strategy.num_replicas_in_sync
    if batch_size % n:
        raise ConfigError(
            f"batch_size {batch_size} does not split over {n} replicas",
            expected=f"a global batch size divisible by {n} (the workers times their devices)",
            fix=f"Pass --batch-size {max(n, batch_size // n * n)} or {(batch_size // n + 1) * n}",
        )
    return batch_size // n


# ---------------------------------------------------------------- each worker's shard


def shard_rows(n: int, num_workers: int, index: int, seed: int, *, equal: bool = True):
    """Worker ``index``'s rows of a split of ``n``: every ``num_workers``-th row of a seeded
    permutation, sorted; ``equal`` cuts every worker to ``n // num_workers`` rows (the
    same number of steps everywhere). The workers' rows are disjoint."""
    if not 0 <= index < num_workers:
        raise ConfigError(f"Worker {index} of {num_workers} does not exist")
    rows = np.random.default_rng(seed).permutation(n)[index::num_workers]
    if equal:
        rows = rows[: n // num_workers]
    return np.sort(rows)


def worker_dataset(
    bundle, split: str, num_workers: int, index: int, batch_size: int, *, training: bool
):
    """Worker ``index``'s pipeline of ``split`` (its own rows only) and its batch count.

    Training pipelines are augmented and reshuffled as one-process ones; the
    shuffle and augmentation seeds differ per worker. Returns ``(dataset, batches,
    images)``; ``dataset`` is None when the worker has no rows.
    """
    from cnnlab.data.augment import Augmenter
    from cnnlab.data.pipeline import make_dataset, training_batches

    seed = bundle.seed + 1009 * index
    augmenter = None
    if training and bundle.augment.active():
        augmenter = Augmenter(bundle.augment, bundle.image_size, bundle.channels, seed)
    common = dict(
        num_classes=bundle.num_classes,
        image_size=bundle.image_size,
        channels=bundle.channels,
        batch_size=batch_size,
        training=training,
        augmenter=augmenter,
        resize=bundle.resize,
        cache=bundle.cache,
        seed=seed,
        class_weights=bundle.class_weights() if training else None,
    )
    records = bundle.records(split)
    if records is not None:
        mine = records.shard(num_workers, index)
        if mine.count == 0:
            return None, 0, 0
        ds = make_dataset(np.zeros(mine.count, np.int64), records=mine, **common)
        if not training:
            return ds, -(-mine.count // batch_size), mine.count
        fewest = min(records.shard(num_workers, j).count for j in range(num_workers))
        batches = fewest // batch_size
        if batches == 0:
            raise ConfigError(
                f"The smallest worker's training shard holds {fewest} images, fewer than "
                f"one batch of {batch_size} per replica",
                fix="Pack the data into more shards (cnnlab data pack --shards), or use "
                "fewer workers or a smaller --batch-size",
            )
        return ds.take(batches), batches, batches * batch_size
    ex = bundle.examples(split)
    rows = shard_rows(len(ex["labels"]), num_workers, index, bundle.seed, equal=training)
    if len(rows) == 0:
        if training:
            raise ConfigError(
                f"The training split has {len(ex['labels'])} images, fewer than the "
                f"{num_workers} workers",
                fix="Use fewer workers",
            )
        return None, 0, 0
    ds = make_dataset(
        ex["labels"][rows],
        images=None if "images" not in ex else ex["images"][rows],
        paths=None if "paths" not in ex else ex["paths"][rows],
        **common,
    )
    if training:
        return ds, training_batches(len(rows), batch_size)[0], len(rows)
    return ds, -(-len(rows) // batch_size), len(rows)


# ---------------------------------------------------------------- collectives


def all_reduce(strategy, values, *, mean: bool = False) -> np.ndarray:
    """Sum (or average) a float64 vector over the workers; every worker gets the result."""
    import tensorflow as tf

    local = np.asarray(values, np.float64).ravel()
    replicas_here = len(strategy.extended.worker_devices)
    share = tf.constant(local / replicas_here)
    dist = strategy.experimental_distribute_values_from_function(lambda _ctx: share)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, dist, axis=None).numpy()
    return total / worker_role(strategy).count if mean else total


def batchnorm_statistics(model) -> list:
    """The moving mean and variance variables of every BatchNormalization layer."""
    import keras

    out = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            out += [layer.moving_mean, layer.moving_variance]
    return out


def _all_layers(model):
    layers = list(getattr(model, "layers", []))
    for layer in list(layers):
        layers += [x for x in _all_layers(layer) if x not in layers]
    return layers


def average_batchnorm(model, strategy) -> int:
    """Set every BatchNorm moving statistic to its mean over the workers; returns how
    many values were averaged (the same on every worker, so the call is collective)."""
    variables = batchnorm_statistics(model)
    if not variables:
        return 0
    local = [np.asarray(v.numpy(), np.float64) for v in variables]
    flat = all_reduce(strategy, np.concatenate([x.ravel() for x in local]), mean=True)
    start = 0
    for v, x in zip(variables, local):
        v.assign(flat[start : start + x.size].reshape(x.shape).astype(v.dtype))
        start += x.size
    return start


def weights_fingerprint(model) -> str:
    """A short SHA-256 of the trainable weights' bytes: equal on two workers exactly when
    their weights are bit-for-bit equal."""
    digest = hashlib.sha256()
    for v in model.trainable_weights:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()[:16]


def communication_seconds(strategy, model, repeats: int = 10) -> float:
    """Median seconds of one all-reduce of a gradient-sized float32 tensor across the
    cluster (what each training step adds to the compute)."""
    import tensorflow as tf

    n = int(sum(np.prod(v.shape) for v in model.trainable_weights))

    def replica_fn():
        x = tf.ones([n], tf.float32)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)

    @tf.function
    def reduce_once():
        return strategy.experimental_local_results(strategy.run(replica_fn))[0][:1]

    reduce_once().numpy()  # trace and connect
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reduce_once().numpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------- the epoch loop


@dataclass
class ShardedData:
    """This worker's training and validation pipelines, distributed over its replicas."""

    train: object
    val: object  # a local dataset (or None): validated outside the strategy
    has_val: bool  # the split has validation rows (on some worker)
    steps: int
    images: int  # this worker's training images per epoch


def shard_bundle(bundle, strategy, batch_size: int) -> ShardedData:
    """This worker's shards of ``bundle``'s training and validation splits."""
    per_replica = replica_batch_size(batch_size, strategy)
    role = worker_role(strategy)
    info = {}

    def train_fn(context):
        ds, steps, images = worker_dataset(
            bundle,
            "train",
            context.num_input_pipelines,
            context.input_pipeline_id,
            per_replica,
            training=True,
        )
        info.update(steps=steps, images=images)
        return ds

    train = strategy.distribute_datasets_from_function(train_fn)
    local_batch = per_replica * len(strategy.extended.worker_devices)
    val, _, _ = worker_dataset(bundle, "val", role.count, role.index, local_batch, training=False)
    steps = -(-info["steps"] // len(strategy.extended.worker_devices))
    has_val = len(bundle.examples("val")["labels"]) > 0
    return ShardedData(train, val, has_val, steps, info["images"])


def _make_steps(model, strategy, top_k: int):
    """The distributed training step and the local evaluation step."""
    import keras
    import tensorflow as tf

    loss_fn = model.loss
    replicas = strategy.num_replicas_in_sync

    def stats(y, pred, per_example, weight):
        hits = tf.cast(tf.equal(tf.argmax(pred, -1), tf.argmax(y, -1)), tf.float64)
        in_top = tf.cast(
            tf.math.in_top_k(tf.argmax(y, -1), tf.cast(pred, tf.float32), top_k), tf.float64
        )
        n = tf.cast(tf.shape(y)[0], tf.float64)
        return tf.stack(
            [
                tf.reduce_sum(tf.cast(per_example * weight, tf.float64)),
                tf.reduce_sum(hits),
                tf.reduce_sum(in_top),
                n,
            ]
        )

    def replica_step(batch):
        x, y = batch[0], batch[1]
        weight = batch[2] if len(batch) > 2 else tf.ones(tf.shape(y)[:1])
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_example = loss_fn.call(y, pred)
            mean = tf.reduce_mean(per_example * tf.cast(weight, per_example.dtype))
            extra = tf.add_n(model.losses) if model.losses else 0.0
            # The optimizer sums the replicas' gradients: each contributes 1/replicas.
            loss = (mean + extra) / replicas
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        out = stats(y, pred, per_example, tf.cast(weight, per_example.dtype))
        return out + tf.stack([tf.cast(extra, tf.float64) * out[3], 0.0, 0.0, 0.0])

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return tf.add_n(strategy.experimental_local_results(per_replica))

    @tf.function
    def eval_step(x, y):
        pred = model(x, training=False)
        per_example = loss_fn.call(y, pred)
        extra = tf.add_n(model.losses) if model.losses else 0.0
        out = stats(y, pred, per_example, tf.ones_like(per_example))
        return out + tf.stack([tf.cast(extra, tf.float64) * out[3], 0.0, 0.0, 0.0])

    del keras
    return train_step, eval_step


def _logs(totals: np.ndarray, top_k: int, prefix: str = "") -> dict[str, float]:
    loss, hits, in_top, n = totals
    n = max(n, 1.0)
    return {
        f"{prefix}loss": loss / n,
        f"{prefix}accuracy": hits / n,
        f"{prefix}top{top_k}": in_top / n,
    }


def fit_multiworker(
    model,
    bundle,
    *,
    strategy,
    batch_size: int,
    epochs: int,
    initial_epoch: int,
    callbacks: list,
    verbose: int,
    top_k: int,
) -> dict:
    """Train ``model`` from ``initial_epoch`` to ``epochs`` across the cluster.

    Every worker must call this with the same arguments. ``callbacks`` are Keras
    callbacks, called as ``fit`` calls them (epoch and training-batch hooks) with
    the cluster's logs. Returns this worker's summary: its shard, the weights'
    fingerprint and the communication share of a step.
    """
    import keras

    k = min(top_k, bundle.num_classes)
    data = shard_bundle(bundle, strategy, batch_size)
    role = worker_role(strategy)
    log.info(
        "Worker %d of %d: %d training images per epoch in %d steps (global batch %d)",
        role.index,
        role.count,
        data.images,
        data.steps,
        batch_size,
    )
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    train_step, eval_step = _make_steps(model, strategy, k)
    cbs = keras.callbacks.CallbackList(
        callbacks, model=model, epochs=epochs, steps=data.steps, verbose=0
    )
    model.stop_training = False
    cbs.on_train_begin()
    step_seconds = []
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        totals = np.zeros(4)
        t0 = time.perf_counter()
        for step, batch in enumerate(data.train):
            cbs.on_train_batch_begin(step)
            t1 = time.perf_counter()
            totals += train_step(batch).numpy()
            step_seconds.append(time.perf_counter() - t1)
            cbs.on_train_batch_end(step, {})
        logs = _logs(all_reduce(strategy, totals), k)
        average_batchnorm(model, strategy)
        if data.has_val:  # the same on every worker: the all-reduce is collective
            val = np.zeros(4)
            for x, y, *_ in data.val if data.val is not None else []:
                val += eval_step(x, y).numpy()
            val = all_reduce(strategy, val)
            if val[3] > 0:
                logs.update(_logs(val, k, "val_"))
        cbs.on_epoch_end(epoch, logs)
        if verbose and role.is_chief:
            shown = " - ".join(
                f"{key}: {value:.4f}"
                for key, value in logs.items()
                if key in ("loss", "accuracy", "val_loss", "val_accuracy")
            )
            print(
                f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - t0:.1f}s - {shown}",
                flush=True,
            )
        stop = all_reduce(strategy, [float(bool(model.stop_training))])[0] > 0
        if stop:
            break
    cbs.on_train_end()
    return _summary(model, strategy, role, data, step_seconds)


def _summary(model, strategy, role: WorkerRole, data: ShardedData, step_seconds) -> dict:
    """What the run records about the cluster (collective: every worker calls it)."""
    comm = communication_seconds(strategy, model)
    step = float(np.median(step_seconds[1:] or step_seconds)) if step_seconds else 0.0
    fingerprint = weights_fingerprint(model)
    log.info("Worker %d of %d finished: trainable weights %s", role.index, role.count, fingerprint)
    return {
        "workers": role.count,
        "worker": role.index,
        "images_per_epoch_this_worker": data.images,
        "steps_per_epoch": data.steps,
        "median_step_seconds": round(step, 5),
        "allreduce_seconds": round(comm, 5),
        "communication_share": round(min(1.0, comm / step), 4) if step else None,
        "weights_fingerprint": fingerprint,
    }


def refuse_keras_fit(model) -> None:
    """A clear error instead of Keras' own when ``model.fit`` would run multi-worker
    (see the module docstring): only ``cnnlab train`` has the multi-worker loop."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and is_multiworker(strategy):
        refuse_multiworker()


def refuse_multiworker() -> None:
    """The error of commands that cannot train under ``--strategy multiworker``."""
    raise ConfigError(
        "This command cannot train under --strategy multiworker: Keras 3's model.fit "
        "fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), and only "
        "`cnnlab train` has cnnlab's own multi-worker loop (fine-tuning's stages and its "
        "feature path are not ported to it yet)",
        expected="--strategy default or mirrored for this command",
        fix="Fine-tune on one machine with --strategy mirrored, or train from scratch "
        "across machines with `cnnlab train --strategy multiworker`",
    )

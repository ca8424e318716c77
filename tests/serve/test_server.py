"""The served probabilities are `cnnlab predict`'s; the process holds no TensorFlow; it
holds under a bounded load; its queue and timeout answer 503 and 504."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.export._models import learnable_arrays
from tests.serve._server import running_server


def photo_files(folder):
    """A JPEG (4:2:0, larger than the model's input), a PNG of another aspect, a gray PNG."""
    x, _ = learnable_arrays(1, size=16)
    rng = np.random.default_rng(5)
    big = np.asarray(Image.fromarray(x[0]).resize((61, 47), Image.BILINEAR)).astype(np.int16)
    big = np.clip(big + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
    files = {
        "photo.jpg": ("JPEG", big, {"quality": 85}),
        "wide.png": ("PNG", big[:20], {}),
        "gray.png": ("PNG", big[..., 1], {}),
    }
    paths = []
    for name, (fmt, arr, kw) in files.items():
        Image.fromarray(arr).save(folder / name, fmt, **kw)
        paths.append(folder / name)
    return paths


def test_served_probabilities_match_cnnlab_predict(server, export_run, tmp_path):
    import cnnlab

    paths = photo_files(tmp_path)
    expected = cnnlab.predict(export_run, [str(p) for p in paths], top_k=3)
    for path, row in zip(paths, expected):
        got = httpx.post(f"{server}/predict?top_k=3", content=path.read_bytes(), timeout=30).json()
        served = {t["label"]: t["probability"] for t in got["top"]}
        local = {t["label"]: t["probability"] for t in row["top"]}
        assert served.keys() == local.keys(), path.name
        for label, p in local.items():
            assert abs(served[label] - p) <= 1e-5, (path.name, label, served[label], p)


def test_health_metadata_and_no_tensorflow_in_the_process(server, export_run):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["tensorflow_loaded"] is False
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["class_names"] == ["circle", "square", "star"]
    assert meta["input"] == {
        "height": 16,
        "width": 16,
        "channels": 3,
        "resize": "stretch",
        "range": [0, 255],
    }
    assert meta["model"] == "simple_cnn" and meta["format"] == "onnx"
    assert meta["source_run"] == str(export_run.resolve())
    assert 0 <= meta["test_metrics"]["accuracy"] <= 1 and meta["parity"]["passed"] is True


def test_eight_clients_fifty_requests_each_get_correct_answers(server, tmp_path):
    paths = photo_files(tmp_path)
    bodies = [p.read_bytes() for p in paths]
    truth = [httpx.post(f"{server}/predict", content=b).json()["top"][0]["label"] for b in bodies]
    bad: list = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            for j in range(50):
                k = (i + j) % len(bodies)
                r = c.post("/predict", content=bodies[k])
                if r.status_code != 200 or r.json()["top"][0]["label"] != truth[k]:
                    bad.append((i, j, r.status_code, r.text[:200]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert httpx.get(f"{server}/health").json()["served"] >= 400


def test_a_full_queue_answers_503_with_retry_after_and_slow_requests_504(export_run):
    big = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, "PNG", compress_level=1)  # ~60 ms to decode and resize
    body = big.getvalue()
    model = export_run / "export" / "model_int8.tflite"
    with running_server(model, "--queue", "1", "--timeout", "30") as url:
        statuses: list = []

        def send():
            r = httpx.post(f"{url}/predict", content=body, timeout=60)
            statuses.append((r.status_code, r.headers.get("retry-after"), r.json()))

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(s[0] for s in statuses)
        assert 200 in codes and 503 in codes, codes
        busy = [s for s in statuses if s[0] == 503][0]
        assert busy[1] == "1" and busy[2]["error"] == "busy"
        assert httpx.get(f"{url}/metadata").json()["format"] == "tflite-int8"
    with running_server(model, "--timeout", "0.001") as url:
        r = httpx.post(f"{url}/predict", content=body, timeout=60)
        assert r.status_code == 504
        assert r.json() == {"error": "timeout", "detail": "the request took more than 0.001 s"}
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_run_folder_is_served_through_its_onnx_export(export_run):
    with running_server(export_run) as url:
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["file"] == "model.onnx" and meta["format"] == "onnx"


def test_serving_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.main", "serve", str(tmp_path / "notes.txt")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "notes.txt is neither an exported model nor a run folder" in done.stderr
    assert "Export a run with `cnnlab export RUN`" in done.stderr


@pytest.mark.slow
def test_a_run_without_an_export_is_exported_to_onnx_first(export_run, tmp_path):
    """The child `cnnlab export --format onnx` runs; the server itself stays TF-free."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(export_run, run, ignore=shutil.ignore_patterns("export"))
    with running_server(run, timeout=300) as url:
        assert httpx.get(f"{url}/metadata").json()["file"] == "model.onnx"
        assert httpx.get(f"{url}/health").json()["tensorflow_loaded"] is False
    assert (run / "export" / "model.onnx").is_file() and (run / "export" / "export.json").is_file()


@pytest.mark.parametrize(
    "flag,value,shown",
    [("--queue", "0", "0"), ("--timeout", "-1", "-1.0"), ("--max-bytes", "0", "0")],
)
def test_limits_must_be_positive(export_run, flag, value, shown):
    model = str(export_run / "export" / "model.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.main", "serve", model, flag, value],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"cnnlab: error: {flag} must be positive; received {shown}." in done.stderr


def test_connections_are_accepted_without_nagle_delaying_the_response_body():
    import socket

    from cnnlab.serve.server import listening_socket

    # With Nagle on, uvicorn's separately written body waited for the client's
    # delayed ACK: 40 ms on every keep-alive request.
    server = listening_socket("127.0.0.1", 0)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for s in (accepted, client, server):
            s.close()


def test_the_server_states_its_memory_and_refuses_a_budget_it_cannot_keep(export_run, monkeypatch):
    from cnnlab.runtime.artifact import load_artifact
    from cnnlab.serve.app import ServeOptions
    from cnnlab.serve.server import plan_serving

    artifact = load_artifact(export_run / "export" / "model.onnx")
    recorded = artifact.manifest["memory"]  # the source model's numbers, written by export
    assert recorded["parameters"] > 0 and recorded["inference_bytes_per_image"] > 0
    assert artifact.footprint() == (
        4.0 * recorded["parameters"],
        float(recorded["inference_bytes_per_image"]),
    )
    monkeypatch.setenv("CNNLAB_MEMORY_BUDGET", "2GB")
    est = plan_serving(artifact, ServeOptions())
    # 32 queued bodies of 10 MB, two decoders of 40 Mpixel images: the limits bound it.
    assert est.parts["requests"] == 320e6 and est.parts["decoding"] == 240e6
    assert (
        est.line()
        == f"Memory: ~{est.total / 1e9:.1f} GB estimated peak (serving, batch 1; budget 2.0 GB)"
    )
    model = str(export_run / "export" / "model.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.main", "serve", model],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CNNLAB_MEMORY_BUDGET": "0.5GB"},
    )
    assert done.returncode == 2
    assert (
        "cnnlab: error: Serving needs ~0.8" in done.stderr
        and "over the memory budget of 0.50 GB ($CNNLAB_MEMORY_BUDGET)" in done.stderr
        and "Pass a smaller --queue, --max-bytes or --max-pixels" in done.stderr
    ), done.stderr

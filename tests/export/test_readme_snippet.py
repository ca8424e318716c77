"""README's Deploy snippet runs the .onnx and .tflite files with their runtimes alone
(TensorFlow and Keras blocked), and says what cnnlab's own runtime says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.runtime import load_artifact
from tests.export._models import learnable_arrays

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = """
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "cnnlab"):
            raise ImportError(f"the snippet imported {name}")
sys.meta_path.insert(0, _NoTensorFlow())
"""


def snippet() -> str:
    text = README.read_text()
    m = re.search(r"<!-- deploy-snippet -->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its deploy snippet"
    return m.group(1)


def test_readme_snippet_runs_onnx_and_tflite_with_their_runtimes_alone(export_run, tmp_path):
    export = export_run / "export"
    x, _ = learnable_arrays(1)
    Image.fromarray(x[0]).save(tmp_path / "photo.png")
    code = snippet().replace("export/", f"{export}/").replace("(224, 224)", "(16, 16)")
    done = subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    onnx = load_artifact(export / "model.onnx").predict(x[:1])[0]
    int8 = load_artifact(export / "model_int8.tflite").predict(x[:1])[0]
    names = ["circle", "square", "star"]
    assert lines == [
        f"onnx: {names[onnx.argmax()]} {round(float(onnx.max()), 3)}",
        f"tflite int8: {names[int8.argmax()]} {round(float(int8.max()), 3)}",
    ]
    assert np.isclose(onnx.max(), float(lines[0].split()[-1]), atol=1e-3)

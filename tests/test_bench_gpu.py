"""benchmarks/bench_gpu.py runs end to end in its --tiny mode (CPU, tiny shapes) and prints every section."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_same_partition_ignores_numbering_and_catches_merges():
    same_partition = _module().same_partition
    a = np.array([[[1, 1, 0, 2, 2, 0, 3]]])
    assert same_partition(a, np.array([[[7, 7, 0, 5, 5, 0, 9]]]))[0]  # renumbered: same partition
    assert not same_partition(a, np.array([[[1, 1, 0, 1, 1, 0, 3]]]))[0]  # two components merged
    assert not same_partition(a, np.array([[[1, 2, 0, 3, 3, 0, 4]]]))[0]  # one component split
    assert not same_partition(a, np.array([[[1, 1, 0, 2, 0, 0, 3]]]))[0]  # foreground differs


def test_tiny_run_prints_every_section(tmp_path):
    out = tmp_path / "records.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--force", "--rounds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for heading in ("# bench_gpu --tiny", "### 1.", "### 2.", "### 3.", "### 4.", "bench_gpu done"):
        assert heading in text, heading
    for title in ("bench_gpu 1:", "bench_gpu 2:", "bench_gpu 3:", "bench_gpu 4:"):
        assert f"## {title}" in text, title  # the protocol's table
        assert f'{{"benchmark": "{title}' in text, title  # and its JSON record
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["section"] for r in records] == [1, 2, 3, 4]
    assert all(r["busy"] in (True, False) and r["figures"] for r in records)
    assert all(c["same_partition_as_scipy"] for c in records[3]["derived"]["checks"].values())
    assert set(records[0]["derived"]["mask_voxels_differing_from_float32_same_strategy"]) >= {"vmap tf32", "vmap bf16"}

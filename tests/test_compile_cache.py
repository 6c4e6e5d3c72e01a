"""The persistent compilation cache: where it lives, off when asked, and a second process loads what the
first compiled (files appear on the first run and are not rewritten by the second)."""

import os
import subprocess
import sys
from pathlib import Path

from agatax import compile_cache

REPO = Path(__file__).resolve().parents[1]


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGATAX_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("AGATAX_CACHE_DIR", "")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.delenv("AGATAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "agatax" / "xla"


def test_an_unwritable_cache_folder_turns_caching_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert compile_cache.enable(blocker / "xla") is None


def test_a_second_process_loads_the_compiled_pipeline(tmp_path):
    script = (
        "import sys, numpy as np, agatax\n"
        "from agatax import compile_cache\n"
        "from agatax.ensemble import init_ensemble\n"
        "compile_cache.enable(sys.argv[1])\n"
        "import jax; jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))\n"
        "ens = init_ensemble(jax.random.key(0), agatax.UNetConfig.tiny(), members=2)\n"
        "hu = np.full((8, 32, 32), -50.0, np.float32); hu[3:5, 10:14, 10:14] = 400.0\n"
        "print(int(np.asarray(agatax.segment(ens, agatax.Volume(hu, (3.0, 1.0, 1.0)), localise=False)[1]).sum()))\n"
        "print(hits.count('/jax/compilation_cache/cache_hits'))\n"
    )
    cache = tmp_path / "xla"
    runs = [subprocess.run([sys.executable, "-c", script, str(cache)], capture_output=True, text=True, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    (votes0, hits0), (votes1, hits1) = (run.stdout.split() for run in runs)
    assert votes0 == votes1
    assert hits0 == "0" and int(hits1) >= 1  # the first process compiled, the second loaded from the cache
    assert [p for p in cache.iterdir() if p.name.startswith("jit__pipeline_kernel")]

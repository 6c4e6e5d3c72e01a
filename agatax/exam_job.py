"""One exam of a ``score`` batch, read, scored and written: the functions every batch runs, here or on a cluster.

    job = ExamJob.from_scorer(scorer, weights_path=None, weights=identity, device="auto", report_dir="out/")
    result, row = job.process(task, provenance)          # read + score + write, as a Dask worker does

The local batch (``agatax.batch.run_batch`` without an executor) calls ``job.read`` in its read-ahead
threads, ``job.score`` on the calling thread and ``job.finish`` on its writer thread; a cluster batch
(``agatax.cluster``) sends the job to the workers, where ``job.process`` calls the same three. A job pickles
small: its scorer (and the ensemble's weights) stay behind, and each worker process builds its own scorer
once per set of options (the weights loaded once, each grid shape compiled once per process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["ExamJob", "loaded_scorers"]

_SCORERS: dict[str, Any] = {}
_SCORERS_LOCK = threading.Lock()


def loaded_scorers() -> int:
    """How many scorers (ensembles loaded) this process holds: one per set of options a worker has seen."""
    return len(_SCORERS)


@dataclasses.dataclass
class ExamJob:
    """The ``score`` command's per-exam work with one set of options.

    Attributes:
        options: ``ExamScorer`` keyword arguments (``ExamScorer.init_options``: mask, series, conventions,
            relaxations, thin_slices, localise).
        weights_path: ensemble file (None: the shipped default; unused with a mask).
        weights: the weights' identity as reported (``weights_identity``; None with a mask).
        device: "cpu", "gpu" or "auto" (where the networks run, selected where the job runs).
        report_dir: folder of the report files, or None (results only).
        png, png_slices, dicom: what the report holds.
        scorer: the ``ExamScorer`` to use here (the client's own); never pickled: built on first use elsewhere.
    """

    options: dict[str, Any]
    weights_path: str | None
    weights: str | None
    device: str = "auto"
    report_dir: str | None = None
    png: bool = True
    png_slices: int | None = 6
    dicom: bool = False
    scorer: Any = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_scorer(cls, scorer, *, weights_path, weights, device, report_dir=None, png=True, png_slices=6,
                    dicom=False) -> ExamJob:
        """The job of the command line's ``scorer`` (used as it is on this machine)."""
        return cls(dict(scorer.init_options), None if weights_path is None else str(Path(weights_path).resolve()),
                   weights, device, None if report_dir is None else str(report_dir), png, png_slices, dicom, scorer)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["scorer"] = None  # the ensemble stays here: a worker loads its own, once
        return state

    # ------------------------------------------------------------------------------------ the scorer

    def _key(self) -> str:
        return json.dumps([self.options, self.weights_path, self.weights, self.device], sort_keys=True, default=str)

    def get_scorer(self):
        """This job's ``ExamScorer``: the one given, else this process's for these options (built once)."""
        if self.scorer is not None:
            return self.scorer
        key = self._key()
        with _SCORERS_LOCK:
            scorer = _SCORERS.get(key)
            if scorer is None:
                from agatax.cli import ExamScorer, device_name, load_weights, select_device

                device = select_device(self.device)
                if not self.options.get("mask"):
                    from agatax import compile_cache

                    compile_cache.enable()  # workers load compiled code their predecessors made
                with self._on(device):
                    ensemble = None if self.options.get("mask") else load_weights(self.weights_path)
                scorer = ExamScorer(ensemble=ensemble, about={"device": device_name(device), "weights": self.weights},
                                    **self.options)
                scorer.device = device
                _SCORERS[key] = scorer
        self.scorer = scorer
        return scorer

    @staticmethod
    def _on(device):
        if device is None:
            return contextlib.nullcontext()
        import jax

        return jax.default_device(device)

    # ------------------------------------------------------------------------------------ the work

    def read(self, task):
        """The exam of ``task`` as a Volume (reader's warnings and the command line's notes)."""
        return self.get_scorer().read(task.path)

    def score(self, task, volume):
        """Segment and score (the device part)."""
        scorer = self.get_scorer()
        with self._on(getattr(scorer, "device", None)):
            return scorer.score(volume)

    def finish(self, task, scored, seconds: float, provenance: dict[str, Any]) -> tuple[dict, dict]:
        """Write the exam's report files (with ``provenance`` in its JSON); returns (result dict, summary row)."""
        from agatax.report import summary_row_from_result

        scorer = self.get_scorer()
        extra = {"provenance": provenance}
        if self.report_dir is not None:
            result, paths = scorer.write(self.report_dir, scored, task.exam_id, png=self.png,
                                         png_slices=self.png_slices, extra=extra, dicom=self.dicom)
        else:
            result, paths = {**scorer.result(scored, task.exam_id), **extra}, None
        return result, summary_row_from_result(result, report=paths and paths["json"], seconds=seconds)

    def process(self, task, provenance: dict[str, Any]) -> tuple[dict, dict]:
        """Read, score and write one exam (what a cluster worker runs); returns (result dict, summary row)."""
        t0 = time.perf_counter()
        scored = self.score(task, self.read(task))
        return self.finish(task, scored, time.perf_counter() - t0, provenance)

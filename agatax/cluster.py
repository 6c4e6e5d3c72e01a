"""Batches on a Dask cluster: ``agatax score COHORT/ --report DIR --scheduler ADDRESS`` (or ``--workers N``).

The batch is the local one (``agatax.batch.run_batch``: the same skipping of finished exams, lock, summary,
progress, Ctrl-C and report files); only where exams are read, scored and written differs: each exam is a
Dask task running ``ExamJob.process`` (``agatax.exam_job``) on a worker, which writes the exam's report
files into DIR itself (so DIR and the exams must be reachable at the same paths from every worker: a
shared file system, as on any SLURM cluster) and returns only its JSON dict and summary row. The client
writes the summary and prints progress as each exam finishes.

Each worker process builds its scorer once (the ensemble loaded once) and compiles once per grid shape;
run workers with one thread each (``dask worker ADDRESS --nthreads 1``), as JAX already uses the cores.
A worker that dies mid-exam loses nothing: the scheduler runs its exam again on another worker (an exam
whose workers die 3 times, Dask's ``distributed.scheduler.allowed-failures``, fails with WORKER_LOST), and
finished exams are on disk already. Ctrl-C stops the batch as locally and cancels the exams not started;
an exam a worker is already scoring may still finish and write its report (a complete one: its JSON last).
Needs ``pip install "agatax[cluster]"`` (dask.distributed; add dask-jobqueue for SLURM, PBS or SGE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agatax.errors import AgataxError, InputError

__all__ = ["DaskExecutor", "dask_executor", "require_distributed", "process_exam"]


def require_distributed():
    """The ``distributed`` module, or AgataxError MISSING_DEPENDENCY naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise AgataxError("--scheduler and --workers need dask.distributed, which is not installed",
                          code="MISSING_DEPENDENCY", hint='pip install "agatax[cluster]"') from None
    return distributed


def process_exam(job, task, provenance: Mapping[str, Any]) -> tuple[dict, dict, float]:
    """A Dask task: read, score and write one exam on a worker; returns (result dict, summary row, seconds).
    Refused (``CODE_MISMATCH``) on a worker whose agatax code differs from the client's: its report would
    carry a provenance that is not its own."""
    from agatax.cli import code_fingerprint

    client_code, here = provenance.get("agatax_code"), code_fingerprint()
    if client_code is not None and client_code != here:
        raise InputError(f"this worker runs agatax code {here}, the client {client_code}",
                         code="CODE_MISMATCH", hint="install the same agatax on the client and every worker")
    t0 = time.perf_counter()
    result, row = job.process(task, dict(provenance))
    return result, row, time.perf_counter() - t0


class DaskExecutor:
    """Runs a batch's exams as Dask tasks (see ``agatax.batch.run_batch``'s ``executor``).

    Args:
        client: a ``distributed.Client``.
        job: the ``ExamJob`` (pickled once per task without its scorer: small).
        provenance: task -> its provenance dict (the JSON's ``provenance``, computed by the client).
    """

    def __init__(self, client, job, provenance: Mapping[Any, dict[str, Any]]) -> None:
        self.client, self.job, self.provenance = client, job, provenance

    def run(self, tasks: Sequence[Any], done: Callable[[Any, Any, BaseException | None, float], None], stop) -> None:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        if not tasks:
            return
        batch = uuid.uuid4().hex[:8]  # keys of this batch only: never results of an earlier one
        futures = {}
        submitted = time.perf_counter()
        for task in tasks:
            future = self.client.submit(process_exam, self.job, task, self.provenance[task], pure=False,
                                        key=f"agatax-{task.exam_id}-{batch}")
            futures[future] = task
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    result, row, seconds = future.result()
                    done(task, (result, row), None, seconds)
                except KilledWorker as err:
                    done(task, None, AgataxError(
                        f"the workers running this exam died, each time it was retried ({err})", code="WORKER_LOST",
                        hint="look at the workers' logs (memory?); re-run the same command to retry it"),
                        time.perf_counter() - submitted)
                except Exception as err:  # the exam's own failure (AgataxError from the reader, ...)
                    done(task, None, err, time.perf_counter() - submitted)
                future.release()
                if stop.is_set():
                    break
        finally:
            left = [f for f in futures if not f.done()]
            if left:
                with contextlib.suppress(Exception):
                    self.client.cancel(left)


def _connect(scheduler: str, timeout: float | None):
    import dask
    from distributed import Client

    if timeout is None:  # Dask's own setting (distributed.comm.timeouts.connect, 30 s by default)
        timeout = dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({type(err).__name__}: {err})",
                         code="SCHEDULER_UNREACHABLE",
                         hint="start one (dask scheduler) and its workers (dask worker ADDRESS --nthreads 1), or "
                         "use --workers N for a cluster on this machine") from None


@contextlib.contextmanager
def dask_executor(job, provenance: Mapping[Any, dict[str, Any]], *, scheduler: str | None = None,
                  workers: int | None = None, timeout: float | None = None) -> Iterator[DaskExecutor | None]:
    """A ``DaskExecutor`` on the cluster at ``scheduler``, or on a ``LocalCluster`` of ``workers`` processes
    (one thread each) closed at the end; None when neither is given (the batch runs here).

    The report folder and the weights are sent as absolute paths: workers may run in other folders.
    """
    if scheduler is None and workers is None:
        yield None
        return
    require_distributed()
    job = dataclasses.replace(job, scorer=None,
                              report_dir=None if job.report_dir is None else str(Path(job.report_dir).resolve()))
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            client = stack.enter_context(_connect(scheduler, timeout))
        else:
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        yield DaskExecutor(client, job, provenance)


def check_cluster_args(scheduler: str | None, workers: int | None) -> None:
    """Refuse bad ``--scheduler``/``--workers`` values before any work (BAD_ARGUMENT, MISSING_DEPENDENCY)."""
    if scheduler is not None and workers is not None:
        raise InputError("--scheduler and --workers exclude each other: use an existing cluster or start one here",
                         code="BAD_ARGUMENT")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be 1 or more; got {workers}", code="BAD_ARGUMENT")
    if scheduler is not None and not scheduler.strip():
        raise InputError("--scheduler needs an address, e.g. tcp://node01:8786", code="BAD_ARGUMENT")
    if scheduler is not None or workers is not None:
        require_distributed()

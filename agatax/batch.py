"""Scoring many exams: finding them, reading ahead, progress, a summary that survives failures.

    tasks = agatax.batch.discover_exams(["cohort/"])          # folder of exam folders, files, @list.txt
    outcome = agatax.batch.run_batch(tasks, read=read, score=score, finish=finish, summary_path="out/summary.csv")

The runner reads the next exams in background threads (a bounded prefetch queue of ``jobs`` exams) while
the current exam is being scored, and hands each scored exam to one writer thread (reports, summary row,
printed output), so reading and writing overlap with the device. A failing exam becomes a summary row with
its error code; the batch goes on. The summary CSV is rewritten (atomically) after every exam, so what
has finished is never lost. Plain host code: no array code here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import queue
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from agatax.errors import InputError, ReadError

__all__ = [
    "ExamTask",
    "ExamOutcome",
    "BatchResult",
    "Progress",
    "discover_exams",
    "is_dicom_file",
    "run_batch",
    "safe_name",
    "source_hash",
    "read_summary_rows",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
#: NIfTI files with these name endings are masks, not exams, when a folder is searched for exams.
MASK_SUFFIXES = ("_mask.nii.gz", "_mask.nii", "_seg.nii.gz", "_seg.nii")


@dataclasses.dataclass(frozen=True)
class ExamTask:
    """One exam to score: a file-name-safe ``exam_id`` and the ``path`` to read (DICOM file/folder, NIfTI)."""

    exam_id: str
    path: Path


@dataclasses.dataclass
class ExamOutcome:
    """What became of one exam.

    Attributes:
        task: the exam.
        status: "ok", "failed" or "skipped" (results from an earlier run were kept).
        result: the exam's JSON dict (``agatax score --json`` contract), None for failures.
        error: the exception of a failed exam.
        row: its summary row (``agatax.report.SUMMARY_COLUMNS``).
        seconds: wall time from the start of reading to the end of writing.
    """

    task: ExamTask
    status: str
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    row: dict[str, Any] | None = None
    seconds: float = 0.0


@dataclasses.dataclass
class BatchResult:
    """All outcomes in input order, with counts; ``interrupted`` when Ctrl-C ended the batch early."""

    outcomes: list[ExamOutcome]
    seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(o.status == "failed" for o in self.outcomes)

    @property
    def skipped(self) -> int:
        return sum(o.status == "skipped" for o in self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.status == "ok" for o in self.outcomes)


# --------------------------------------------------------------------------------------------- discovery


def safe_name(text: str) -> str:
    """A file-name-safe id that keeps letters of any script (NFC): runs of characters other than letters,
    digits, ``._-`` become ``_``; at most 80 characters; "" when nothing is left."""
    name = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", str(text))).strip("._")
    return name[:80].rstrip("._")


def source_hash(path: str | os.PathLike) -> str:
    """8 hex digits naming an exam's resolved source path (stable across runs)."""
    return hashlib.sha256(os.fsencode(Path(path).expanduser().resolve())).hexdigest()[:8]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES + _DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _is_mask_name(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` looks like a DICOM file: the "DICM" preamble marker, or a .dcm/.ima name."""
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first_dicom(folder: Path, *, limit: int = 200) -> Path | None:
    """The first DICOM file found under ``folder`` (depth first, sorted), looking at up to ``limit`` files."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            seen += 1
            path = Path(root) / name
            if is_dicom_file(path):
                return path
            if seen >= limit:
                return None
    return None


def _study_uid(path: Path) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "")) or None
    except Exception:
        return None


def _folder_exams(folder: Path) -> list[tuple[str, Path]] | None:
    """The exams in ``folder`` when it is a folder of exams, else None (the folder is one exam).

    A folder is one exam when it holds DICOM files itself, or when all its DICOM-holding subfolders belong
    to one study (several series of one exam). Otherwise each DICOM-holding subfolder is an exam, and so is
    each NIfTI file in the folder (names ending in ``_mask``/``_seg`` are masks and left out).
    """
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    if any(is_dicom_file(p) for p in files if not _is_nifti(p)):
        return None
    subfolders = [(p, _first_dicom(p)) for p in entries if p.is_dir()]
    dicom_subfolders = [(p, first) for p, first in subfolders if first is not None]
    niftis = [p for p in files if _is_nifti(p) and not _is_mask_name(p)]
    if len(dicom_subfolders) >= 2 and not niftis:
        studies = {_study_uid(first) for _, first in dicom_subfolders}
        if len(studies) == 1 and None not in studies:
            return None  # several series of one study: one exam (the reader picks or lists the series)
    exams = [(p.name, p) for p, _ in dicom_subfolders] + [(_stem(p), p) for p in niftis]
    return exams


def _read_list(list_path: Path) -> list[Path]:
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReadError(f"exam list not found: {list_path}", code="NOT_FOUND", paths=[list_path]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReadError(f"cannot read exam list {list_path}: {err}", code="READ_ERROR", paths=[list_path]) from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        out.append(path if path.is_absolute() else list_path.parent / path)
    if not out:
        raise ReadError(f"exam list {list_path} names no exams", code="NO_EXAMS", paths=[list_path])
    return out


def _unique_ids(found: list[tuple[str, Path]]) -> list[ExamTask]:
    """File-name-safe ids, one per source (a source listed twice is scored once), unique and stable:
    a clash takes the parent folder's name, and where that is not enough (or the name has no letters or
    digits) a hash of the resolved source path."""
    sources: dict[Path, tuple[str, Path]] = {}
    for name, path in found:
        sources.setdefault(path.expanduser().resolve(), (name, path))
    names = {key: safe_name(name) for key, (name, _) in sources.items()}

    def clashing(ids: dict[Path, str]) -> set[Path]:
        count: dict[str, int] = {}
        for exam_id in ids.values():
            count[exam_id.casefold()] = count.get(exam_id.casefold(), 0) + 1
        return {key for key, exam_id in ids.items() if count[exam_id.casefold()] > 1 or not exam_id}

    for key in clashing(names):
        names[key] = "_".join(filter(None, (safe_name(key.parent.name), names[key])))
    for key in clashing(names):
        names[key] = "_".join(filter(None, (names[key][:71], source_hash(key))))
    return [ExamTask(names[key], path) for key, (_, path) in sources.items()]


def discover_exams(paths: Sequence[str | os.PathLike]) -> tuple[list[ExamTask], bool]:
    """Expand command-line paths into exams.

    Each entry is an exam (DICOM file or folder, NIfTI file), a folder of exams (see ``_folder_exams``:
    each DICOM-holding subfolder and each NIfTI file is an exam) or ``@LIST`` (a text file naming one path
    per line; blank lines and ``#`` comments ignored; relative paths are relative to the list's folder).
    A path that does not exist is kept as an exam, so that it fails on its own (NOT_FOUND) without
    stopping the others.

    Returns:
        (tasks in input order with unique file-name-safe ids, batch) where ``batch`` is False only for a
        single path that is itself one exam.

    Raises:
        InputError NO_EXAMS when nothing is given or a folder of exams is empty; ReadError for an
        unreadable list file.
    """
    if not paths:
        raise InputError("no exam paths given", code="NO_EXAMS", hint="agatax score EXAM [EXAM ...]")
    found: list[tuple[str, Path]] = []
    batch = len(paths) > 1
    for entry in paths:
        text = os.fspath(entry)
        if not text.strip() or text.strip() == "@":  # Path("") is the current folder: never scan it unasked
            raise InputError(f"empty exam path {text!r}", code="BAD_PATH",
                             hint="give an exam's DICOM folder or file, a NIfTI file, a folder of exams or @LIST")
        if text.startswith("@"):
            batch = True
            for path in _read_list(Path(text[1:]).expanduser()):
                found += _expand(path)
            continue
        path = Path(text).expanduser()
        expanded = _expand(path)
        if len(expanded) != 1 or expanded[0][1] != path:
            batch = True
        found += expanded
    if not found:
        raise InputError(
            f"no exams found in {', '.join(os.fspath(p) for p in paths)}",
            code="NO_EXAMS",
            hint="give DICOM folders, NIfTI files, a folder holding one subfolder per exam, or @list.txt",
        )
    return _unique_ids(found), batch


def _expand(path: Path) -> list[tuple[str, Path]]:
    if path.is_dir():
        exams = _folder_exams(path)
        if exams is None:
            return [(path.resolve().name, path)]
        if not exams:
            raise InputError(
                f"{path} holds no DICOM files, no exam subfolders and no NIfTI files",
                code="NO_EXAMS",
                hint="point at a DICOM folder, a NIfTI file, or a folder with one subfolder per exam",
                paths=[path],
            )
        return exams
    return [(_stem(path), path)]


# --------------------------------------------------------------------------------------------- progress


def duration_text(seconds: float) -> str:
    """A duration for progress lines: 45s, 3m05s, 1h20m; ? when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of a batch on a text stream (stderr): exams done/total, failures, rate, time left.

    On a terminal a tqdm bar, with result lines printed above it through ``write``; otherwise (a log file,
    a pipe) a plain line per finished exam.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.done = self.failed = self.skipped = 0
        self.started = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None

    def line(self, last: str = "") -> str:
        """The progress text, e.g. ``3/10 exams (1 failed), 4.2 exams/min, about 1m40s left``."""
        elapsed = time.perf_counter() - self.started
        scored = self.done - self.skipped
        rate = scored / elapsed * 60.0 if elapsed > 0 and scored > 0 else math.nan
        left = (self.total - self.done) / rate * 60.0 if rate > 0 else math.nan
        text = f"{self.done}/{self.total} exams"
        notes = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.skipped, "skipped")) if n]
        if notes:
            text += f" ({', '.join(notes)})"
        if math.isfinite(rate):
            text += f", {rate:.1f} exams/min"
        if self.done < self.total and math.isfinite(left):
            text += f", about {duration_text(left)} left"
        elif self.done >= self.total:
            text += f", {duration_text(elapsed)} in all"
        if last:
            text += f"  [{last}]"
        return text

    def begin(self) -> None:
        """On a terminal, show the bar at once (the first exam may take a while to compile)."""
        if self.enabled and self._tty and self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, file=self.stream, unit="exam", desc="agatax", dynamic_ncols=True)

    def update(self, outcome: ExamOutcome) -> None:
        """Count one finished exam and show the new state."""
        self.done += 1
        self.failed += outcome.status == "failed"
        self.skipped += outcome.status == "skipped"
        if not self.enabled:
            return
        if self._bar is not None:
            notes = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.skipped, "skipped")) if n]
            self._bar.set_postfix_str(", ".join(notes + [f"{outcome.task.exam_id}: {outcome.status}"]), refresh=False)
            self._bar.update(1)
        else:
            self.stream.write("agatax: " + self.line(f"{outcome.task.exam_id}: {outcome.status}") + "\n")
            self.stream.flush()

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print ``text`` (a result line) to ``file`` (stdout) without garbling the bar."""
        file = file if file is not None else sys.stdout
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=file)
        else:
            file.write(text + "\n")
        file.flush()

    def close(self) -> None:
        """End the bar (a terminal line of its own)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------------------------- summary


def read_summary_rows(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Rows of an existing summary CSV keyed by exam_id ({} when the file is absent or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["exam_id"]: row for row in csv.DictReader(handle) if row.get("exam_id")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}


class _Summary:
    """The summary CSV, rewritten atomically after every exam: rows of exams of earlier batches first,
    then this batch's rows in input order (``initial`` ones until the exam finishes)."""

    def __init__(self, path: Path | None, tasks: Sequence[ExamTask], initial: Mapping[str, dict] | None) -> None:
        self.path = path
        self.order = {t.exam_id: i for i, t in enumerate(tasks)}
        previous = read_summary_rows(path) if path is not None else {}
        self.kept = [row for exam_id, row in previous.items() if exam_id not in self.order]
        start = previous if initial is None else initial
        self.rows: dict[str, dict[str, Any]] = {i: dict(r) for i, r in start.items() if i in self.order and r}

    def add(self, exam_id: str, row: dict[str, Any]) -> None:
        self.rows[exam_id] = row
        self.write()

    def write(self) -> None:
        if self.path is not None:
            from agatax.report import write_summary_csv

            ours = [self.rows[i] for i in sorted(self.rows, key=self.order.__getitem__)]
            write_summary_csv(self.path, self.kept + ours)


# --------------------------------------------------------------------------------------------- runner


def _failure_row(task: ExamTask, error: BaseException, seconds: float) -> dict[str, Any]:
    from agatax.report import exam_summary_row

    row = exam_summary_row(task.exam_id, error=error, seconds=seconds)
    row["source"] = str(task.path)
    return row


class _ReadAhead:
    """Reads tasks in order on ``jobs`` daemon threads, at most ``jobs`` exams ahead of the consumer;
    ``close`` stops them and waits a bounded time for a read in progress."""

    def __init__(self, tasks: Sequence[ExamTask], read: Callable[[ExamTask], Any], jobs: int) -> None:
        self.tasks, self.read, self.jobs = tasks, read, jobs
        self.cond = threading.Condition()
        self.results: dict[int, tuple[Any, BaseException | None, float]] = {}
        self.next = self.taken = 0
        self.stopped = False
        self.threads = [threading.Thread(target=self._work, name=f"agatax-reader-{i}", daemon=True)
                        for i in range(jobs)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and not (self.next < len(self.tasks) and self.next < self.taken + self.jobs):
                    self.cond.wait()
                if self.stopped:
                    return
                i, self.next = self.next, self.next + 1
            t0 = time.perf_counter()
            try:
                item = (self.read(self.tasks[i]), None, t0)
            except Exception as err:
                item = (None, err, t0)
            with self.cond:
                self.results[i] = item
                self.cond.notify_all()

    def get(self, i: int) -> tuple[Any, BaseException | None, float]:
        """The read of task ``i`` (waits for it; wakes up regularly so that Ctrl-C is seen)."""
        with self.cond:
            self.taken = i + 1
            self.cond.notify_all()
            while i not in self.results:
                self.cond.wait(0.25)
            return self.results.pop(i)

    def close(self, timeout: float = 30.0) -> None:
        with self.cond:
            self.stopped = True
            self.results.clear()
            self.cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


_STOP = object()


def run_batch(
    tasks: Sequence[ExamTask],
    *,
    read: Callable[[ExamTask], Any],
    score: Callable[[ExamTask, Any], Any],
    finish: Callable[[ExamTask, Any, float], tuple[dict[str, Any], dict[str, Any]]],
    existing: Callable[[ExamTask], tuple[dict[str, Any], dict[str, Any]] | None] | None = None,
    summary_path: str | os.PathLike | None = None,
    summary_rows: Mapping[str, dict[str, Any]] | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
    on_outcome: Callable[[ExamOutcome], None] | None = None,
    stop: threading.Event | None = None,
    executor: Any = None,
) -> BatchResult:
    """Score ``tasks`` one after another on the calling thread, reading ahead and writing behind.

    Args:
        tasks: exams in order.
        read: task -> loaded exam (runs in up to ``jobs`` background threads; e.g. ``read_volume``).
        score: (task, loaded) -> scored exam (runs on the calling thread: the device work).
        finish: (task, scored, seconds so far) -> (result dict, summary row); writes the exam's files
            (runs on the writer thread).
        existing: task -> (result dict, summary row) of results kept from an earlier run, or None to
            score the exam (checked before any reading; such exams are "skipped").
        summary_path: CSV rewritten after every exam (rows of exams not in ``tasks`` are kept).
        summary_rows: rows shown for this batch's exams until they finish (default: their rows in the
            existing summary), so that an interrupted re-run keeps every exam's valid results; read
            after ``existing`` has been called for every task.
        jobs: exams read ahead of the one being scored (0: read on the calling thread, no prefetch).
        progress: shown after each exam.
        on_outcome: called with each outcome in input order, on the writer thread (printing, JSON lines).
        stop: when set (e.g. by a signal handler), no further exam is started.
        executor: runs the exams elsewhere, e.g. on a Dask cluster (``agatax.cluster.DaskExecutor``):
            ``executor.run(tasks, done, stop)`` reads, scores and finishes each task there (with the same
            functions) and calls ``done(task, (result, row) or None, error or None, seconds)`` on this thread as
            each finishes, in any order; ``read``, ``score`` and ``finish`` are then not called here. Everything
            else (skipping, the summary, progress, ``on_outcome``, Ctrl-C) is as without it; outcomes are
            recorded as they finish and returned in input order.

    Returns:
        BatchResult (outcomes in input order). A failure of one exam (any ``Exception`` while reading,
        scoring or writing it) becomes a "failed" outcome whose summary row carries the error code; the
        batch goes on. KeyboardInterrupt (or ``stop``) ends the batch cleanly: the exam being scored is
        abandoned, those already scored are written, the readers are stopped, the summary is written,
        and the result has ``interrupted`` set.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise InputError(f"jobs must be an int >= 0; got {jobs!r}", code="BAD_ARGUMENT")
    started = time.perf_counter()
    summary: _Summary | None = None
    outcomes: list[ExamOutcome] = []
    writer_queue: queue.Queue = queue.Queue(maxsize=2)
    writer_error: list[BaseException] = []
    stop = stop if stop is not None else threading.Event()

    def record(outcome: ExamOutcome) -> None:
        outcomes.append(outcome)
        if outcome.row is not None:
            summary.add(outcome.task.exam_id, outcome.row)
        if on_outcome is not None:
            on_outcome(outcome)
        if progress is not None:
            progress.update(outcome)

    def write_one(task: ExamTask, scored: Any, error: BaseException | None, t0: float) -> ExamOutcome:
        if error is None:
            try:
                result, row = finish(task, scored, time.perf_counter() - t0)
                return ExamOutcome(task, "ok", result=result, row=row, seconds=time.perf_counter() - t0)
            except Exception as err:  # a failure while writing fails this exam only
                error = err
        seconds = time.perf_counter() - t0
        return ExamOutcome(task, "failed", error=error, row=_failure_row(task, error, seconds), seconds=seconds)

    def writer() -> None:
        while True:
            item = writer_queue.get()
            if item is _STOP:
                return
            if writer_error:
                continue  # drain after a fatal error
            try:
                record(item if isinstance(item, ExamOutcome) else write_one(*item))
            except BaseException as err:  # on_outcome or the summary itself broke: stop the batch
                writer_error.append(err)

    def put(item: Any) -> None:
        if writer_error:
            raise writer_error[0]
        writer_queue.put(item)

    thread = threading.Thread(target=writer, name="agatax-writer", daemon=True)
    prefetch: _ReadAhead | None = None
    interrupted = False
    try:
        plan = [(task, existing(task) if existing is not None else None) for task in tasks]
        summary = _Summary(Path(summary_path) if summary_path is not None else None, tasks, summary_rows)
        if progress is not None:
            progress.begin()
        to_read = [task for task, kept in plan if kept is None]
        thread.start()
        prefetch = _ReadAhead(to_read, read, jobs) if jobs > 0 and to_read and executor is None else None
        position = 0
        if executor is not None:
            for task, kept in plan:
                if kept is not None:
                    put(ExamOutcome(task, "skipped", result=kept[0], row=kept[1]))

            def done(task: ExamTask, value: Any, error: BaseException | None, seconds: float) -> None:
                if error is None:
                    put(ExamOutcome(task, "ok", result=value[0], row=value[1], seconds=seconds))
                else:
                    put(ExamOutcome(task, "failed", error=error, row=_failure_row(task, error, seconds),
                                    seconds=seconds))

            executor.run(to_read, done, stop)
            if stop.is_set():
                raise KeyboardInterrupt
            plan = []
        for task, kept in plan:
            if stop.is_set():
                raise KeyboardInterrupt
            if kept is not None:
                result, row = kept
                put(ExamOutcome(task, "skipped", result=result, row=row))
                continue
            t0 = time.perf_counter()
            try:
                if prefetch is None:
                    loaded = read(task)
                else:
                    loaded, error, t0 = prefetch.get(position)
                    position += 1
                    if error is not None:
                        raise error
                scored = score(task, loaded)
                del loaded
            except Exception as err:
                put((task, None, err, t0))
                continue
            put((task, scored, None, t0))
            del scored
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
    finally:
        if prefetch is not None:
            prefetch.close()
        if thread.is_alive():
            writer_queue.put(_STOP)
            thread.join()
        if summary is not None and not writer_error:
            summary.write()
        if progress is not None:
            progress.close()
    if writer_error:
        raise writer_error[0]
    order = {task.exam_id: i for i, task in enumerate(tasks)}
    outcomes.sort(key=lambda outcome: order.get(outcome.task.exam_id, len(order)))  # input order
    return BatchResult(outcomes, time.perf_counter() - started, interrupted)

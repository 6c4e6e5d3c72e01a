"""The batch runner: finding exams, reading ahead, failures kept to their exam, the summary CSV, progress."""

import csv
import io
import threading
import time

import numpy as np
import pytest

import dicom_factory as factory
from agatax import AgataxError, InputError, ReadError
from agatax.batch import ExamTask, Progress, discover_exams, read_summary_rows, run_batch


def _series(folder, *, study_uid=None, series_uid=None):
    factory.write_series(folder, np.zeros((2, 4, 4)), spacing=(3.0, 0.5, 0.5), study_uid=study_uid,
                         series_uid=series_uid)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------- discovery


def test_folder_of_exam_folders_is_a_batch_and_masks_are_not_exams(tmp_path):
    _series(tmp_path / "b_exam")
    _series(tmp_path / "a_exam" / "deeper")
    (tmp_path / "a_exam_mask.nii.gz").write_bytes(b"")  # a truth mask next to the exams: not an exam
    (tmp_path / "manifest.csv").write_text("exam_id,agatston\n")
    (tmp_path / "notes").mkdir()  # a folder without DICOM files: not an exam
    (tmp_path / "notes" / "readme.txt").write_text("x")
    tasks, batch = discover_exams([tmp_path])
    assert batch is True
    assert [(t.exam_id, t.path) for t in tasks] == [("a_exam", tmp_path / "a_exam"), ("b_exam", tmp_path / "b_exam")]


def test_a_dicom_folder_is_one_exam_and_several_series_of_one_study_too(tmp_path):
    _series(tmp_path / "exam1")
    tasks, batch = discover_exams([tmp_path / "exam1"])
    assert batch is False and [t.exam_id for t in tasks] == ["exam1"]
    study = "1.2.826.0.1.99"
    _series(tmp_path / "study" / "series1", study_uid=study)
    _series(tmp_path / "study" / "series2", study_uid=study)
    tasks, batch = discover_exams([tmp_path / "study"])
    assert batch is False and [(t.exam_id, t.path) for t in tasks] == [("study", tmp_path / "study")]


def test_nifti_files_in_a_folder_are_exams(tmp_path):
    for name in ("p1.nii.gz", "p2.nii", "p1_mask.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    tasks, batch = discover_exams([str(tmp_path)])
    assert batch and [(t.exam_id, t.path.name) for t in tasks] == [("p1", "p1.nii.gz"), ("p2", "p2.nii")]


def test_list_file_relative_paths_comments_missing_paths_and_id_clashes(tmp_path):
    _series(tmp_path / "site1" / "exam")
    _series(tmp_path / "site2" / "exam")
    lst = tmp_path / "lists" / "exams.txt"
    lst.parent.mkdir()
    lst.write_text("# two sites\n../site1/exam\n\n../site2/exam\n" + str(tmp_path / "gone") + "\n")
    tasks, batch = discover_exams(["@" + str(lst)])
    assert batch
    assert [t.exam_id for t in tasks] == ["site1_exam", "site2_exam", "gone"]
    assert tasks[2].path == tmp_path / "gone"  # kept: it fails on its own, not the batch


def test_discovery_refusals(tmp_path):
    with pytest.raises(InputError) as err:
        discover_exams([])
    assert err.value.code == "NO_EXAMS"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        discover_exams([tmp_path / "empty"])
    assert err.value.code == "NO_EXAMS"
    with pytest.raises(ReadError) as err:
        discover_exams(["@" + str(tmp_path / "absent.txt")])
    assert err.value.code == "NOT_FOUND"


# --------------------------------------------------------------------------------------------- runner


def _tasks(n):
    return [ExamTask(f"e{i}", f"/exams/e{i}") for i in range(n)]


def _finish(task, scored, seconds):
    return {"exam_id": task.exam_id, "agatston": scored}, {"exam_id": task.exam_id, "status": "ok", "agatston": scored}


def test_one_bad_exam_fails_alone_and_every_row_is_kept(tmp_path):
    def read(task):
        if task.exam_id == "e1":
            raise ReadError("no CT image slices in /exams/e1", code="NO_IMAGES")
        return int(task.exam_id[1:])

    def score(task, loaded):
        if task.exam_id == "e3":
            raise ValueError("network exploded")
        return 10.0 * loaded

    seen = []
    summary = tmp_path / "out" / "summary.csv"
    result = run_batch(_tasks(5), read=read, score=score, finish=_finish, summary_path=summary, jobs=2,
                       on_outcome=lambda o: seen.append((o.task.exam_id, o.status)))
    assert seen == [("e0", "ok"), ("e1", "failed"), ("e2", "ok"), ("e3", "failed"), ("e4", "ok")]
    assert (result.ok, result.failed, result.skipped) == (3, 2, 0)
    rows = _rows(summary)
    assert [r["exam_id"] for r in rows] == ["e0", "e1", "e2", "e3", "e4"]
    assert [r["agatston"] for r in rows if r["status"] == "ok"] == ["0.0", "20.0", "40.0"]
    assert rows[1]["status"] == "failed" and rows[1]["error_code"] == "NO_IMAGES"
    assert "no CT image slices" in rows[1]["error_message"] and rows[1]["source"] == "/exams/e1"
    assert rows[3]["error_code"] == "ValueError" and rows[3]["error_message"] == "network exploded"


def test_summary_is_on_disk_after_each_exam_and_keeps_other_exams_rows(tmp_path):
    summary = tmp_path / "summary.csv"
    summary.write_text("exam_id,status,agatston\nolder,ok,7.5\ne1,failed,\n")
    on_disk = []

    def score(task, loaded):
        on_disk.append([r["exam_id"] for r in _rows(summary)])
        return 1.0

    run_batch(_tasks(3), read=lambda t: None, score=score, finish=_finish, summary_path=summary, jobs=0)
    # when e2 is scored, the rows of e0 and e1 are already written (the writer runs behind by at most 2 exams)
    assert set(on_disk[-1]) >= {"older"}
    rows = _rows(summary)
    assert [(r["exam_id"], r["status"], r["agatston"]) for r in rows] == [
        ("older", "ok", "7.5"), ("e0", "ok", "1.0"), ("e1", "ok", "1.0"), ("e2", "ok", "1.0")]
    assert read_summary_rows(summary)["older"]["agatston"] == "7.5"


def test_existing_results_are_skipped_without_reading(tmp_path):
    reads = []

    def read(task):
        reads.append(task.exam_id)
        return 2.0

    kept = {"e1": ({"exam_id": "e1", "agatston": 99.0}, {"exam_id": "e1", "status": "ok", "agatston": 99.0})}
    result = run_batch(_tasks(3), read=read, score=lambda t, v: v, finish=_finish, existing=lambda t: kept.get(t.exam_id),
                       summary_path=tmp_path / "s.csv")
    assert reads == ["e0", "e2"]
    assert [(o.task.exam_id, o.status, o.result["agatston"]) for o in result.outcomes] == [
        ("e0", "ok", 2.0), ("e1", "skipped", 99.0), ("e2", "ok", 2.0)]
    assert [r["agatston"] for r in _rows(tmp_path / "s.csv")] == ["2.0", "99.0", "2.0"]


def test_next_exam_is_read_while_the_current_one_is_scored():
    """Scoring e0 waits until e1 has been read: only a reader running ahead can release it."""
    e1_read = threading.Event()

    def read(task):
        if task.exam_id == "e1":
            e1_read.set()
        return task.exam_id

    released = []

    def score(task, loaded):
        if task.exam_id == "e0":
            released.append(e1_read.wait(timeout=10))
        return 0.0

    run_batch(_tasks(3), read=read, score=score, finish=_finish, jobs=1)
    assert released == [True]


def test_prefetch_is_bounded_by_jobs():
    lock = threading.Lock()
    state = {"read": 0, "scored": 0, "ahead": 0}

    def read(task):
        with lock:
            state["read"] += 1
            state["ahead"] = max(state["ahead"], state["read"] - state["scored"])
        return None

    def score(task, loaded):
        time.sleep(0.02)  # give the readers every chance to run too far ahead
        with lock:
            state["scored"] += 1
        return 0.0

    run_batch(_tasks(8), read=read, score=score, finish=_finish, jobs=2)
    assert state["read"] == 8 and state["ahead"] <= 3  # the exam being scored + 2 read ahead


def test_a_failure_while_writing_fails_that_exam_only(tmp_path):
    def finish(task, scored, seconds):
        if task.exam_id == "e0":
            raise AgataxError("disk full", code="WRITE_ERROR")
        return _finish(task, scored, seconds)

    result = run_batch(_tasks(2), read=lambda t: 1, score=lambda t, v: v, finish=finish, summary_path=tmp_path / "s.csv")
    assert [o.status for o in result.outcomes] == ["failed", "ok"]
    assert _rows(tmp_path / "s.csv")[0]["error_code"] == "WRITE_ERROR"


def test_bad_jobs_value_is_refused():
    with pytest.raises(InputError) as err:
        run_batch(_tasks(1), read=lambda t: 1, score=lambda t, v: v, finish=_finish, jobs=-1)
    assert err.value.code == "BAD_ARGUMENT"


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(3, stream=stream)
    result = run_batch(_tasks(3), read=lambda t: 1, score=lambda t, v: v, finish=_finish, progress=progress,
                       existing=lambda t: ({}, {"exam_id": t.exam_id, "status": "ok"}) if t.exam_id == "e0" else None)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and result.skipped == 1
    assert lines[0].startswith("agatax: 1/3 exams (1 skipped)") and "[e0: skipped]" in lines[0]
    assert lines[1].startswith("agatax: 2/3 exams (1 skipped), ") and "exams/min, about " in lines[1]
    assert lines[2].startswith("agatax: 3/3 exams (1 skipped), ") and " in all  [e2: ok]" in lines[2]


def test_progress_on_a_terminal_is_a_bar_that_result_lines_never_garble():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(2, stream=stream)
    run_batch(_tasks(2), read=lambda t: 1, score=lambda t, v: v, finish=_finish, progress=progress,
              on_outcome=lambda o: progress.write(f"RESULT {o.task.exam_id}", file=stream))
    text = stream.getvalue()
    pieces = [p.strip() for p in text.replace("\r", "\n").split("\n")]
    assert "RESULT e0" in pieces and "RESULT e1" in pieces  # each result line stands alone
    assert any(p.startswith("agatax: 100%") and "2/2" in p for p in pieces) and text.endswith("\n")


def test_interrupt_stops_cleanly_writes_what_is_done_and_keeps_earlier_rows(tmp_path):
    summary = tmp_path / "summary.csv"
    summary.write_text("exam_id,status,agatston\nolder,ok,7.5\ne3,ok,3.0\ne4,ok,4.0\n")

    def score(task, loaded):
        if task.exam_id == "e2":
            raise KeyboardInterrupt
        return 1.0

    kept = {"e3": {"exam_id": "e3", "status": "ok", "agatston": 3.0}}  # e4's report is gone: its row too
    result = run_batch(_tasks(5), read=lambda t: time.sleep(0.05), score=score, finish=_finish, jobs=2,
                       summary_path=summary, summary_rows=kept)
    assert result.interrupted and [o.task.exam_id for o in result.outcomes] == ["e0", "e1"]
    assert [(r["exam_id"], r["agatston"]) for r in _rows(summary)] == [
        ("older", "7.5"), ("e0", "1.0"), ("e1", "1.0"), ("e3", "3.0")]
    assert not [t for t in threading.enumerate() if t.name.startswith("agatax-")]


def test_a_set_stop_event_starts_no_further_exam():
    stop = threading.Event()

    def score(task, loaded):
        stop.set()
        return 1.0

    result = run_batch(_tasks(4), read=lambda t: 1, score=score, finish=_finish, stop=stop)
    assert result.interrupted and [o.task.exam_id for o in result.outcomes] == ["e0"]


def test_ids_of_different_sources_never_collide_and_keep_unicode_letters(tmp_path):
    for folder in ("a/x/exam1", "b/x/exam1", "c/exam1", "Müller", "张伟", "李娜", "★"):
        _series(tmp_path / folder)
    listing = tmp_path / "list.txt"
    listing.write_text("a/x/exam1\nb/x/exam1\nc/exam1\nMüller\n张伟\n李娜\n★\nc/exam1\n")
    tasks, _ = discover_exams(["@" + str(listing)])
    ids = [t.exam_id for t in tasks]
    assert len(ids) == 7 and len({i.casefold() for i in ids}) == 7  # c/exam1 twice is one exam
    assert ids[2] == "c_exam1" and ids[3:6] == ["Müller", "张伟", "李娜"]
    assert ids[0].startswith("x_exam1_") and ids[1].startswith("x_exam1_")  # parents clash too: a hash
    assert ids[6] != "exam" and ids[6]
    again, _ = discover_exams(["@" + str(listing)])
    assert [t.exam_id for t in again] == ids  # stable across runs

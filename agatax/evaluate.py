"""Agreement between predicted and reference calcium scores over a set of exams.

    ev = agatax.evaluate_scores("pred.csv", "ref.csv")    # or two {exam_id: agatston} mappings
    print(ev.format_text())
    ev.plot_confusion("confusion.png"); ev.plot_bland_altman("bland_altman.png")

Category accuracy, C-index, linearly weighted kappa and the 5 x 5 confusion matrix come from the scoring
core's metrics (``agatax.category_accuracy``, ``c_index``, ``weighted_kappa``, ``confusion_matrix``);
this module pairs exams, reads tables and reports. Bland-Altman statistics are on the Agatston score,
difference = predicted - reference.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agatax.errors import InputError, ReadError
from agatax.report import _json_safe, require_matplotlib
from agatax.volume import Volume

__all__ = ["CATEGORIES", "Evaluation", "evaluate_masks", "evaluate_scores", "read_score_table", "read_category_ranges"]

CATEGORIES = ("A", "B", "C", "D", "E")
ID_COLUMNS = ("exam_id", "id")
SCORE_COLUMNS = ("agatston", "score")


def _sniff_dialect(text: str):
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _report_jsons(folder: Path):
    """(path, dict) of each readable report JSON of ``folder`` that names its ``exam_id``, in name order."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "exam_id" in data:
            yield path, data


def _read_report_folder(folder: Path) -> dict[str, float]:
    scores: dict[str, float] = {}
    for path, data in _report_jsons(folder):
        if "agatston" not in data:
            continue
        exam_id = str(data["exam_id"])
        if exam_id in scores:
            raise ReadError(f"exam {exam_id!r} reported twice in {folder}", code="DUPLICATE_ID", paths=[path])
        scores[exam_id] = _score_value(data["agatston"], where=str(path))
    if not scores:
        raise ReadError(
            f"{folder} holds no report JSON files (with 'exam_id' and 'agatston')",
            code="EMPTY_TABLE",
            paths=[folder],
        )
    return scores


def _table_rows(path: Path):
    """A score CSV's (columns as found, lower-case name -> column, id column or None, [(line, exam id, row)])
    with the rows of failed exams (a ``status`` other than "ok") and rows without an id left out.

    Raises:
        ReadError: NOT_FOUND, READ_ERROR.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReadError(f"score table not found: {path}", code="NOT_FOUND", paths=[path]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReadError(f"cannot read score table {path}: {err}", code="READ_ERROR", paths=[path]) from None
    reader = csv.DictReader(io.StringIO(text), dialect=_sniff_dialect(text))
    found = [name.strip() for name in (reader.fieldnames or [])]
    lower = {name.lower(): raw for name, raw in zip(found, reader.fieldnames or [])}
    id_col = next((lower[c] for c in ID_COLUMNS if c in lower), None)
    status_col = lower.get("status")
    rows = []
    for line, row in enumerate(reader, start=2):
        exam_id = (row.get(id_col) or "").strip() if id_col is not None else ""
        if not exam_id:
            continue
        if status_col is not None and (row.get(status_col) or "ok").strip().lower() not in ("ok", ""):
            continue
        rows.append((line, exam_id, row))
    return found, lower, id_col, rows


def _score_value(raw: Any, *, where: str) -> float:
    try:
        value = float(str(raw).strip()) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ReadError(
            f"{where}: Agatston score {raw!r} is not a finite number >= 0",
            code="BAD_VALUE",
            hint="fix or remove the row (failed exams may carry status=failed)",
        )
    return value


def read_score_table(path: str | os.PathLike) -> dict[str, float]:
    """Read exam_id -> Agatston score from a CSV (or from a folder of ``write_report`` JSON files).

    The CSV needs an id column (``exam_id`` or ``id``) and a score column (``agatston`` or ``score``),
    matched case-insensitively; comma, semicolon or tab separated. Rows whose ``status`` column (when
    present) is not "ok" are failed exams and are left out. A batch summary CSV qualifies.

    Raises:
        ReadError: NOT_FOUND, MISSING_COLUMNS (naming the columns found and needed), BAD_VALUE
            (a score that is empty, negative or not a number, with its row), DUPLICATE_ID, EMPTY_TABLE.
    """
    path = Path(path)
    if path.is_dir():
        return _read_report_folder(path)
    found, lower, id_col, rows = _table_rows(path)
    score_col = next((lower[c] for c in SCORE_COLUMNS if c in lower), None)
    if id_col is None or score_col is None:
        raise ReadError(
            f"{path}: columns found {found}; needed an id column ({' or '.join(ID_COLUMNS)}) and a score "
            f"column ({' or '.join(SCORE_COLUMNS)})",
            code="MISSING_COLUMNS",
            hint="rename the columns, e.g. exam_id,agatston",
            paths=[path],
        )
    scores: dict[str, float] = {}
    for line, exam_id, row in rows:
        if exam_id in scores:
            raise ReadError(f"{path}: exam {exam_id!r} appears twice (line {line})", code="DUPLICATE_ID", paths=[path])
        scores[exam_id] = _score_value(row.get(score_col), where=f"{path} line {line} (exam {exam_id})")
    if not scores:
        raise ReadError(f"{path} holds no scored exams", code="EMPTY_TABLE", paths=[path])
    return scores


def read_category_ranges(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """exam_id -> (low, high) category of ``agatax score``'s category range, from a batch summary CSV
    (columns ``category_low``, ``category_high``) or a folder of report JSON files; {} where the table has
    none (a given mask, an older table, another tool's). Rows of failed exams are left out.

    Raises:
        ReadError: NOT_FOUND, READ_ERROR (as ``read_score_table``).
    """
    path = Path(path)
    out: dict[str, tuple[str, str]] = {}
    if path.is_dir():
        for _, data in _report_jsons(path):
            try:
                doubt = data.get("category_range")
                if doubt:
                    out[str(data["exam_id"])] = (str(doubt["low"]["category"]), str(doubt["high"]["category"]))
            except (KeyError, TypeError, AttributeError):
                continue
        return out
    _, lower, _, rows = _table_rows(path)
    low_col, high_col = lower.get("category_low"), lower.get("category_high")
    if low_col is None or high_col is None:
        return out
    for _, exam_id, row in rows:
        low, high = (row.get(low_col) or "").strip(), (row.get(high_col) or "").strip()
        if low in CATEGORIES and high in CATEGORIES:
            out[exam_id] = (low, high)
    return out


def _range_summary(ids, predicted_categories, reference_categories, ranges) -> dict[str, Any] | None:
    """How the category ranges of the compared exams that have one relate to the reference categories."""
    have = [k for k, i in enumerate(ids) if i in ranges]
    if not have:
        return None
    order = {c: k for k, c in enumerate(CATEGORIES)}
    flagged = [k for k in have if ranges[ids[k]][0] != ranges[ids[k]][1]]
    others = [k for k in have if k not in set(flagged)]
    wrong = [k for k in have if predicted_categories[k] != reference_categories[k]]

    def error(ks):
        return _rate(sum(predicted_categories[k] != reference_categories[k] for k in ks), len(ks))

    return {"exams": len(have), "uncertain": len(flagged), "error_uncertain": error(flagged),
            "error_others": error(others), "wrong": len(wrong), "wrong_uncertain": len(set(wrong) & set(flagged)),
            "reference_inside_range": sum(order[ranges[ids[k]][0]] <= order[reference_categories[k]]
                                          <= order[ranges[ids[k]][1]] for k in have)}


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """Agreement of predicted with reference Agatston scores over the exams both hold.

    Attributes:
        ids: exam ids compared (sorted).
        predicted, reference: float64 (n,) Agatston scores in ``ids`` order.
        accuracy: share of exams whose risk category (A..E) matches.
        c_index: Harrell's concordance of predicted with reference risk categories (``agatax.c_index``).
        kappa: linearly weighted Cohen's kappa on the categories.
        mean_difference, sd_difference: mean and sample SD (n - 1) of predicted - reference, Agatston.
        loa_lower, loa_upper: Bland-Altman limits of agreement, mean -/+ 1.96 SD.
        confusion: int (5, 5), rows = reference category A..E, columns = predicted.
        only_in_predicted, only_in_reference: ids present in one table only (not compared).
        lesions: pooled lesion metrics from ``evaluate_masks``, or None.
        ranges: how the predicted category ranges (``agatax score``'s ``category_range``) relate to the
            reference, over the compared exams that have one: ``exams``, ``uncertain`` (range spanning
            categories), ``error_uncertain`` and ``error_others`` (share in the wrong category), ``wrong``,
            ``wrong_uncertain``, ``reference_inside_range``; None where the predictions carry no range.
    """

    ids: tuple[str, ...]
    predicted: np.ndarray
    reference: np.ndarray
    accuracy: float
    c_index: float
    kappa: float
    mean_difference: float
    sd_difference: float
    loa_lower: float
    loa_upper: float
    confusion: np.ndarray
    only_in_predicted: tuple[str, ...] = ()
    only_in_reference: tuple[str, ...] = ()
    lesions: Mapping[str, Any] | None = None
    ranges: Mapping[str, Any] | None = None

    @property
    def n(self) -> int:
        """Number of exams compared."""
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN -> None)."""
        return _json_safe(
            {
                "n": self.n,
                "category_accuracy": self.accuracy,
                "c_index": self.c_index,
                "weighted_kappa_linear": self.kappa,
                "bland_altman": {
                    "mean_difference": self.mean_difference,
                    "sd_difference": self.sd_difference,
                    "loa_lower": self.loa_lower,
                    "loa_upper": self.loa_upper,
                },
                "confusion_matrix": {"labels": list(CATEGORIES), "rows": "reference", "columns": "predicted",
                                     "counts": self.confusion.tolist()},
                "only_in_predicted": list(self.only_in_predicted),
                "only_in_reference": list(self.only_in_reference),
                "lesions": None if self.lesions is None else dict(self.lesions),
                "category_ranges": None if self.ranges is None else dict(self.ranges),
                "exams": [
                    {"exam_id": i, "predicted": float(p), "reference": float(r)}
                    for i, p, r in zip(self.ids, self.predicted, self.reference)
                ],
            }
        )

    def format_text(self) -> str:
        """A printable table of the figures."""
        def num(x: float, fmt: str = ".3f") -> str:
            return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

        lines = [f"exams compared             {self.n}"]
        for label, ids in (("only in predicted", self.only_in_predicted), ("only in reference", self.only_in_reference)):
            if ids:
                shown = ", ".join(ids[:10]) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")
                lines.append(f"{label:<27}{len(ids)}: {shown}")
        lines += [
            f"category accuracy          {num(self.accuracy)}",
            f"C-index                    {num(self.c_index)}",
            f"weighted kappa (linear)    {num(self.kappa)}",
            "Bland-Altman, Agatston (predicted - reference):",
            f"  mean difference          {num(self.mean_difference, '.2f')}",
            f"  SD of differences        {num(self.sd_difference, '.2f')}",
            f"  limits of agreement      {num(self.loa_lower, '.2f')} .. {num(self.loa_upper, '.2f')}",
            "confusion matrix (rows reference, columns predicted):",
            "      " + "".join(f"{c:>6}" for c in CATEGORIES),
        ]
        for c, row in zip(CATEGORIES, self.confusion):
            lines.append(f"  {c:<4}" + "".join(f"{int(v):>6}" for v in row))
        if self.ranges:
            r = self.ranges
            lines += [
                f"category ranges ({r['exams']} exams with one):",
                f"  uncertain (range spans categories) {r['uncertain']}",
                f"  wrong category: uncertain {num(r['error_uncertain'])}, others {num(r['error_others'])}",
                f"  wrong exams flagged uncertain      {r['wrong_uncertain']} of {r['wrong']}",
                f"  reference inside the range         {r['reference_inside_range']} of {r['exams']}",
            ]
        if self.lesions:
            lines.append("lesions (pooled over exams):")
            for key, value in self.lesions.items():
                shown = num(value) if isinstance(value, float) else str(value)
                lines.append(f"  {key:<25}{shown}")
        return "\n".join(lines)

    def plot_confusion(self, path: str | os.PathLike) -> Path:
        """Save the confusion matrix as a PNG (counts per cell; needs matplotlib)."""
        Figure = require_matplotlib()
        fig = Figure(figsize=(4.8, 4.4), dpi=110)
        ax = fig.add_subplot(1, 1, 1)
        counts = np.asarray(self.confusion)
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
        top = max(int(counts.max()), 1)
        for r in range(5):
            for c in range(5):
                ax.text(c, r, str(int(counts[r, c])), ha="center", va="center",
                        color="white" if counts[r, c] > top / 2 else "black", fontsize=10)
        ax.set_xticks(range(5), CATEGORIES)
        ax.set_yticks(range(5), CATEGORIES)
        ax.set_xlabel("predicted category")
        ax.set_ylabel("reference category")
        ax.set_title(f"n = {self.n}, accuracy {self.accuracy:.3f}, kappa {self.kappa:.3f}", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        return path

    def plot_bland_altman(self, path: str | os.PathLike) -> Path:
        """Save the Bland-Altman plot (difference against mean of each pair, Agatston) as a PNG."""
        Figure = require_matplotlib()
        fig = Figure(figsize=(6.0, 4.4), dpi=110)
        ax = fig.add_subplot(1, 1, 1)
        mean = (self.predicted + self.reference) / 2
        diff = self.predicted - self.reference
        ax.scatter(mean, diff, s=14, color="#1f5fa8", alpha=0.8)
        ax.set_xscale("symlog", linthresh=10)
        right = max(float(mean.max()) * 2.0, 20.0)
        ax.set_xlim(0, right)
        spread = [v for v in (self.loa_lower, self.loa_upper, *diff) if math.isfinite(v)]
        pad = 0.12 * max(max(spread) - min(spread), 1.0)
        ax.set_ylim(min(spread) - pad, max(spread) + pad)
        for y, style, label in (
            (self.mean_difference, "-", f"mean {self.mean_difference:.1f}"),
            (self.loa_upper, "--", f"+1.96 SD {self.loa_upper:.1f}"),
            (self.loa_lower, "--", f"-1.96 SD {self.loa_lower:.1f}"),
        ):
            if math.isfinite(y):
                ax.axhline(y, color="#c0392b", linestyle=style, linewidth=1)
                ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                            textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#c0392b")
        ax.set_xlabel("mean of predicted and reference Agatston (log scale above 10)")
        ax.set_ylabel("predicted - reference Agatston")
        ax.set_title(f"Bland-Altman, n = {self.n}", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        return path


def _as_scores(table: Mapping[str, Any] | str | os.PathLike, what: str) -> dict[str, float]:
    if isinstance(table, (str, os.PathLike)):
        return read_score_table(table)
    if not isinstance(table, Mapping):
        raise InputError(f"{what} must be a mapping exam_id -> Agatston or a table path; got {type(table).__name__}",
                         code="BAD_ARGUMENT")
    out = {}
    for key, value in table.items():
        out[str(key).strip()] = _score_value(value, where=f"{what} exam {key!r}")
    return out


def evaluate_scores(
    pred: Mapping[str, float] | str | os.PathLike,
    ref: Mapping[str, float] | str | os.PathLike,
    *,
    lesions: Mapping[str, Any] | None = None,
    ranges: Mapping[str, tuple[str, str]] | None = None,
) -> Evaluation:
    """Compare predicted with reference Agatston scores.

    Args:
        pred, ref: exam_id -> Agatston score, or paths read with ``read_score_table``.
        lesions: optional pooled lesion metrics (``evaluate_masks``) to carry in the result.
        ranges: exam_id -> (low, high) predicted category range; default: read from ``pred`` when it is a
            path (``read_category_ranges``), else none.

    Returns:
        ``Evaluation`` over the exams both hold; exams in one only are listed, not compared.

    Raises:
        InputError: NO_COMMON_EXAMS when the two share no exam id (a sample of each is named).
    """
    from agatax.scoring import c_index, category_accuracy, confusion_matrix, risk_category, weighted_kappa

    pred_scores, ref_scores = _as_scores(pred, "pred"), _as_scores(ref, "ref")
    common = sorted(set(pred_scores) & set(ref_scores))
    if not common:
        raise InputError(
            f"predicted and reference scores share no exam id (predicted e.g. {sorted(pred_scores)[:3]}, "
            f"reference e.g. {sorted(ref_scores)[:3]})",
            code="NO_COMMON_EXAMS",
            hint="check that both tables use the same exam ids",
        )
    p = np.array([pred_scores[i] for i in common], dtype=np.float64)
    r = np.array([ref_scores[i] for i in common], dtype=np.float64)
    pc = [risk_category(float(v)) for v in p]
    rc = [risk_category(float(v)) for v in r]
    diff = p - r
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else math.nan
    return Evaluation(
        ids=tuple(common),
        predicted=p,
        reference=r,
        accuracy=float(category_accuracy(pc, rc)),
        c_index=float(c_index(pc, rc)),
        kappa=float(weighted_kappa(pc, rc, weights="linear")),
        mean_difference=mean,
        sd_difference=sd,
        loa_lower=mean - 1.96 * sd,
        loa_upper=mean + 1.96 * sd,
        confusion=np.asarray(confusion_matrix(pc, rc), dtype=np.int64),
        only_in_predicted=tuple(sorted(set(pred_scores) - set(ref_scores))),
        only_in_reference=tuple(sorted(set(ref_scores) - set(pred_scores))),
        lesions=None if lesions is None else dict(lesions),
        ranges=_range_summary(common, pc, rc, ranges if ranges is not None else (
            read_category_ranges(pred) if isinstance(pred, (str, os.PathLike)) else {})),
    )


def _rate(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def evaluate_masks(pairs: Iterable[tuple], *, threshold_hu: float = 130.0) -> dict[str, Any]:
    """Lesion detection pooled over exams (orCaScore style: counts summed, then rates).

    Args:
        pairs: per exam ``(pred_mask, ref_mask, volume)`` or ``(pred_mask, ref_mask, hu, spacing)``,
            masks (z, y, x) bool or artery labels, hu (z, y, x) HU, spacing (dz, dy, dx) mm.
        threshold_hu: calcium threshold passed to ``agatax.lesion_detection``.

    Returns:
        {"exams", the counts of ``lesion_detection`` summed ("tp", "fp", "fn" lesions and "tp_volume_mm3",
        "fp_volume_mm3", "fn_volume_mm3"), and the rates recomputed from the pooled counts: "sensitivity",
        "ppv", "f1" and "sensitivity_volume", "ppv_volume", "f1_volume"}. A rate with a zero denominator
        is NaN.
    """
    from agatax.scoring import lesion_detection

    totals: dict[str, float] = {}
    exams = 0
    for item in pairs:
        if len(item) == 3 and isinstance(item[2], Volume):
            pred, ref, volume = item
            hu, spacing = volume.hu, volume.spacing
        elif len(item) == 4:
            pred, ref, hu, spacing = item
        else:
            raise InputError(
                "each pair must be (pred_mask, ref_mask, volume) or (pred_mask, ref_mask, hu, spacing)",
                code="BAD_ARGUMENT",
            )
        result = lesion_detection(np.asarray(pred), np.asarray(ref), np.asarray(hu), spacing, threshold_hu=threshold_hu)
        for key, value in result.items():
            if key.split("_")[0] in ("tp", "fp", "fn"):
                totals[key] = totals.get(key, 0.0) + float(value)
        exams += 1
    out: dict[str, Any] = {"exams": exams}
    for key, value in totals.items():
        out[key] = int(value) if float(value).is_integer() and key in ("tp", "fp", "fn") else value
    for key in [k for k in totals if k.split("_")[0] == "tp"]:
        suffix = key[2:]
        tp, fp, fn = totals[key], totals.get("fp" + suffix, 0.0), totals.get("fn" + suffix, 0.0)
        rate_suffix = suffix.removesuffix("_mm3")  # "tp_volume_mm3" -> "sensitivity_volume", as the core names it
        out["sensitivity" + rate_suffix] = _rate(tp, tp + fn)
        out["ppv" + rate_suffix] = _rate(tp, tp + fp)
        out["f1" + rate_suffix] = _rate(2 * tp, 2 * tp + fp + fn)
    return out

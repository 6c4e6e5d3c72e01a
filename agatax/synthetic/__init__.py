"""Synthetic non-contrast cardiac CT with known coronary calcium: exams, cohorts, pictures.

    exam = generate_exam(7, target_category="C")        # 512 x 512 x ~50, true mask and score
    exam.volume, exam.mask, exam.lesions, exam.agatston, exam.category
    cohort = cohort_preset("J3")                         # 98 exams, ~20 % per category, generated lazily
"""

from agatax.synthetic.anatomy import TISSUE_HU, TISSUES, ScannerParams
from agatax.synthetic.calcium import LOOKALIKE_KINDS
from agatax.synthetic.cohort import (
    PRESETS,
    SyntheticCohort,
    cohort_preset,
    exam_seed,
    iter_cohort,
    make_cohort,
    plan_categories,
    preset_exam,
    write_cohort,
)
from agatax.synthetic.exam import (
    CATEGORIES,
    CATEGORY_TARGETS,
    DISTRACTOR_CODES,
    GENERATOR_VERSION,
    REAL_WORLD_MIX,
    SyntheticExam,
    generate_exam,
    parse_lookalike_rates,
)
from agatax.synthetic.montage import ARTERY_COLOURS, render_montage

__all__ = [
    "CATEGORIES", "CATEGORY_TARGETS", "DISTRACTOR_CODES", "GENERATOR_VERSION", "REAL_WORLD_MIX", "SyntheticExam", "generate_exam",
    "parse_lookalike_rates", "LOOKALIKE_KINDS", "TISSUES", "TISSUE_HU", "ScannerParams", "PRESETS", "SyntheticCohort", "cohort_preset", "exam_seed",
    "iter_cohort", "make_cohort", "plan_categories", "preset_exam", "write_cohort", "ARTERY_COLOURS",
    "render_montage",
]

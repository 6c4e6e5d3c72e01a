"""Synthetic non-contrast cardiac CT with known coronary calcium: exams, cohorts, pictures.

    exam = generate_exam(7, target_category="C")        # 512 x 512 x ~56, true mask and score
    exam.volume, exam.mask, exam.lesions, exam.agatston, exam.category
"""

from agatax.synthetic.exam import (
    CATEGORIES,
    CATEGORY_TARGETS,
    DISTRACTOR_CODES,
    REAL_WORLD_MIX,
    SyntheticExam,
    generate_exam,
)
from agatax.synthetic.anatomy import TISSUES, TISSUE_HU, ScannerParams

__all__ = [
    "CATEGORIES", "CATEGORY_TARGETS", "DISTRACTOR_CODES", "REAL_WORLD_MIX", "SyntheticExam", "generate_exam",
    "TISSUES", "TISSUE_HU", "ScannerParams",
]

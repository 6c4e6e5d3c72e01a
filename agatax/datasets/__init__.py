"""Readers for public calcium-scoring data sets."""

from agatax.datasets.coca import (
    ARTERY_LABELS,
    COCA_ARTERY_NAMES,
    CocaDataset,
    CocaExam,
    CocaROI,
    coca_mask,
    parse_calcium_xml,
    polygon_pixels,
)

__all__ = [
    "ARTERY_LABELS",
    "COCA_ARTERY_NAMES",
    "CocaDataset",
    "CocaExam",
    "CocaROI",
    "coca_mask",
    "parse_calcium_xml",
    "polygon_pixels",
]

"""Readers for public calcium-scoring data sets."""

from agatax.datasets.coca import (
    ARTERY_LABELS,
    COCA_ARTERY_NAMES,
    KNOWN_DEFECTS,
    CocaAnnotation,
    CocaDataset,
    CocaExam,
    CocaROI,
    coca_mask,
    parse_calcium_xml,
    polygon_pixels,
    read_calcium_xml,
)

__all__ = [
    "ARTERY_LABELS",
    "KNOWN_DEFECTS",
    "CocaAnnotation",
    "read_calcium_xml",
    "COCA_ARTERY_NAMES",
    "CocaDataset",
    "CocaExam",
    "CocaROI",
    "coca_mask",
    "parse_calcium_xml",
    "polygon_pixels",
]

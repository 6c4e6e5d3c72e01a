"""Scoring core: connected components, Agatston / volume / mass scores, evaluation metrics."""

from agatax.scoring.agatston import (
    Lesion,
    Scores,
    agatston_score,
    compute_scores,
    density_weight,
    mass_score,
    risk_category,
    scores_jax,
    volume_score,
)
from agatax.scoring.components import label_slices, label_volume
from agatax.scoring.metrics import c_index, category_accuracy, confusion_matrix, lesion_detection, weighted_kappa

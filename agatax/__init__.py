"""agatax: automatic coronary artery calcium scoring on non-contrast cardiac CT, in JAX.

The public API is re-exported here by name; implementation modules are free to change.
Data flows one way: files -> Volume -> chest localisation -> (preprocess -> ensemble -> postprocess) -> mask -> scores -> report.
"""

__version__ = "0.1.0"

# --- errors and the exam container ---
from agatax.errors import AgataxError, CheckpointError, InputError, ReadError
from agatax.volume import Volume, check_exam

# --- scoring core (agatax.scoring) ---
from agatax.scoring import (
    Lesion,
    Scores,
    agatston_score,
    c_index,
    category_accuracy,
    compute_scores,
    confusion_matrix,
    density_weight,
    label_slices,
    label_volume,
    lesion_detection,
    mass_score,
    risk_category,
    scores_jax,
    volume_score,
    weighted_kappa,
)

# --- reading and writing exams (agatax.io) ---
from agatax.io import read_mask, read_volume, write_dicom_series, write_nifti

# --- network, pre-processing, ensemble, pipeline ---
from agatax.model import UNet, UNetConfig
from agatax.ensemble import Ensemble, init_ensemble, load_ensemble, save_ensemble, stack_members
from agatax.preprocess import grid_shape, preprocess, restore_grid
from agatax.localise import ChestRegion, localise_chest
from agatax.orientation import Reorientation, canonical_orientation, to_canonical
from agatax.pipeline import PipelineResult, run_pipeline, segment, segment_and_score

# --- synthetic data and ground truth ---
from agatax.groundtruth import GroundTruth, mask_from_points
from agatax.synthetic import SyntheticExam, generate_exam, make_cohort, cohort_preset, preset_exam, render_montage

# --- training and default weights ---
from agatax.train import TrainConfig, TrainingSet, prepare_pairs, train_ensemble, train_member
from agatax.defaults import load_default_ensemble, score_exam

# --- datasets, evaluation and reports ---
from agatax.datasets import CocaDataset, CocaExam, parse_calcium_xml
from agatax.evaluate import Evaluation, evaluate_masks, evaluate_scores, read_score_table
from agatax.report import exam_summary_row, write_report, write_summary_csv

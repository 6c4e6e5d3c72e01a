"""agatax: automatic coronary artery calcium scoring on non-contrast cardiac CT, in JAX.

The public API is re-exported here by name (loaded on first use: ``import agatax`` and the command line
start without JAX); implementation modules are free to change.
Data flows one way: files -> Volume -> chest localisation -> (preprocess -> ensemble -> postprocess) -> mask -> scores -> report.
"""

__version__ = "0.2.0"

import importlib
import sys
import types

# module -> public names it provides (errors, the exam container, scoring core, I/O, networks and pipeline,
# synthetic data, training and default weights, datasets, evaluation and reports)
_EXPORTS = {
    "agatax.errors": ('AgataxError', 'CheckpointError', 'InputError', 'ReadError'),
    "agatax.volume": ('Volume', 'check_exam'),
    "agatax.scoring": ('Lesion', 'Scores', 'agatston_score', 'c_index', 'category_accuracy', 'compute_scores', 'confusion_matrix', 'density_weight', 'label_slices', 'label_volume', 'lesion_detection', 'mass_score', 'risk_category', 'scores_jax', 'volume_score', 'weighted_kappa'),
    "agatax.io": ('read_mask', 'read_volume', 'write_dicom_series', 'write_nifti'),
    "agatax.model": ('UNet', 'UNetConfig'),
    "agatax.ensemble": ('Ensemble', 'init_ensemble', 'load_ensemble', 'save_ensemble', 'stack_members'),
    "agatax.preprocess": ('grid_shape', 'preprocess', 'restore_grid'),
    "agatax.localise": ('ChestRegion', 'localise_chest'),
    "agatax.orientation": ('Reorientation', 'canonical_orientation', 'to_canonical'),
    "agatax.slabs": ('thick_slabs',),
    "agatax.pipeline": ('PipelineResult', 'run_pipeline', 'segment', 'segment_and_score'),
    "agatax.uncertainty": ('CategoryRange', 'category_range'),
    "agatax.groundtruth": ('GroundTruth', 'mask_from_points'),
    "agatax.synthetic": ('SyntheticExam', 'generate_exam', 'make_cohort', 'cohort_preset', 'preset_exam', 'render_montage'),
    "agatax.train": ('TrainConfig', 'TrainingSet', 'prepare_pairs', 'train_ensemble', 'train_member'),
    "agatax.defaults": ('load_default_ensemble', 'score_exam'),
    "agatax.datasets": ('CocaDataset', 'CocaExam', 'parse_calcium_xml'),
    "agatax.evaluate": ('Evaluation', 'evaluate_masks', 'evaluate_scores', 'read_score_table'),
    "agatax.report": ('exam_summary_row', 'write_report', 'write_summary_csv'),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


class _Package(types.ModuleType):
    """Names exported here that are also submodules (``preprocess``) stay the exported function when the
    import system binds the loaded submodule onto the package."""

    def __setattr__(self, name, value):
        if name in _WHERE and isinstance(value, types.ModuleType) and _WHERE[name] == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agatax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

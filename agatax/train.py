"""Training the calcification U-Net: optax Adam on the Dice loss, best epoch chosen on a validation set.

Data live on the network's coarse grid. An exam becomes a training pair once (``exam_pair``):

* input  = ``preprocess(hu, spacing)`` (isotropic ~3 mm, high-HU enhancement, clipped and scaled to [0, 1]);
* target = the true calcification mask taken to the same grid: a coarse voxel is positive when it holds any
  positive fine voxel.

Training samples patches centred near calcium, near hard negatives (look-alike structures such as the
aortic valve, mitral annulus and calcified aortic wall, when the data name them) or anywhere, applies
intensity, noise and (optionally) geometric augmentation (never a flip: left and right anatomy
differ), and minimises ``optax.losses.dice_loss`` on the sigmoid probabilities with Adam. Every
``eval_every`` steps (an "epoch") the pooled coarse-grid Dice on the validation exams is measured and the
best variables are kept.
Checkpoints are written atomically (temporary file + ``os.replace``) and a run resumes from the last one
exactly: the data stream is keyed by ``fold_in(key, step)`` and the optimiser state is saved, so a resumed
run equals an uninterrupted one.

    data = prepare_pairs(exams)          # SyntheticExam, (Volume, mask) or (Volume, mask, look-alikes)
    variables = train_member(data, val, TrainConfig(steps=500), UNetConfig.tiny(), seed=0)
    ensemble = train_ensemble(data, val, TrainConfig(), UNetConfig(), members=5)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from agatax._atomic import atomic_open, atomic_write_bytes
from agatax.errors import CheckpointError, InputError
from agatax.model import INPUT_SETTINGS
from agatax.orientation import to_canonical
from agatax.preprocess import ENHANCE_BOX_MM
from agatax.volume import Volume

__all__ = [
    "TrainConfig",
    "TrainingSet",
    "TrainState",
    "exam_pair",
    "prepare_pairs",
    "train_member",
    "train_ensemble",
    "evaluate_dice",
    "predict_coarse",
]

_CHECKPOINT_FORMAT = "agatax-train-checkpoint"
_CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """How one network is trained.

    Attributes:
        learning_rate: Adam step size (the peak of the schedule).
        lr_schedule: "constant", or "cosine": cosine decay from ``learning_rate`` to 5 % of it over
            ``steps`` (the total then belongs to the run: a checkpoint resumes only with the same ``steps``).
        clip_norm: gradients clipped to this global norm before Adam (0: no clipping).
        steps: optimisation steps in all (an "epoch" is ``eval_every`` steps).
        batch_size: patches per step.
        patch_zyx: patch size (z, y, x) in coarse voxels; each a multiple of 2**(levels-1).
        positive_fraction: share of patches centred (with jitter) on a calcified voxel.
        hard_negative_fraction: share of patches centred (with jitter) on a hard-negative voxel (look-alike
            non-coronary calcium, ``TrainingSet.negatives``); the rest are placed uniformly at random.
            Patch kinds are assigned by stratified sampling, so a batch of B patches holds
            floor or ceil of B * fraction of each kind: with the defaults every batch holds as many
            calcium patches as hard-negative ones, so no step sees only calcium-free patches (under a
            Dice loss that pushes every output to zero). Without negatives in the data those patches
            are placed at random.
        per_object: 0: a centred patch is centred on a calcified (hard-negative) voxel drawn uniformly, so
            the large objects (long plaques, the aortic wall) take most draws; K > 0: each object
            (26-connected on the coarse grid) offers at most K voxels (spread along it), so small specks
            and rare look-alikes (a calcified node, a pericardial plaque) are drawn about as often as large ones.
        dense_per_object: with ``per_object``: each calcified object whose image reaches the window's top
            (800 HU on the network's grid: dense calcium) offers this many voxels instead, so dense plaques,
            which the networks miss more often than faint ones, are drawn more often (0: as any object).
        dense_hard_per_object: with ``per_object``: likewise for each hard-negative object reaching the
            window's top (metal, dense valve, annulus or aortic calcium), so that drawing dense plaques more
            often does not teach "dense means coronary" (0: as any object).
        gain_std: SD of the multiplicative intensity gain (1 + N(0, gain_std)) per patch.
        shift_std: SD of the additive intensity shift per patch, in [0, 1] image units (1 = 1100 HU).
        noise_std: SD of the Gaussian noise added per voxel, in image units.
        kernel_std: SD of the reconstruction-kernel change per patch: x + s * (x - blur(x)), s ~ N(0, kernel_std)
            clipped to [-0.8, 1.0] (negative: smoother kernel, positive: sharper), blur a [1, 2, 1] / 4
            in-plane filter.
        border_cut: probability that a patch is cut by a field-of-view edge: beyond a random in-plane line
            25-50 % of the patch from its centre the image becomes padding (0) and the target 0, as where
            a reconstruction ends (bone cut at the image border, outside the reconstruction circle).
        end_cut: probability that a patch is cut by a scan's end: beyond a random slice 0-45 % of the patch's
            depth from its centre, on a random side, the image becomes padding (0), as past the first or last
            slice of a scan that ends at the heart; never past a calcified slice (the cut moves out beyond the
            patch's outermost calcified slice on that side), so calcium is kept and can lie in an end slice.
        rotate_deg: geometric augmentation: each patch is sampled from its exam through a rotation of up to
            this many degrees about the z axis (uniform) and up to a third of it about y and x (the heart's
            axis varies from patient to patient), with linear interpolation; 0 outside the exam.
        tilt_deg: the rotation's limit about y and x where given (the heart's tilt below the axial plane
            varies more than its turn within it); None: a third of ``rotate_deg``.
        scale_range: and an isotropic scale uniform in [1 - r, 1 + r] (smaller and larger anatomy).
        elastic_voxels: and a smooth random displacement (a 4 x 4 x 4 grid of N(0, e) voxel offsets, per
            axis, interpolated across the patch): organ shapes and vessel courses bent. The target is
            sampled at the same places by nearest neighbour. All three 0: plain crops, as before.
        dice_smooth: smoothing term of the Dice loss.
        dice_pooled: False: the mean of per-patch Dice losses (a hard-negative patch's false positives
            get the full push of a calcium-free Dice loss); True: one Dice over the whole batch.
        bce_weight: weight of an added binary cross-entropy term (0 = Dice only, as the paper).
        eval_every: validation every this many steps (and at the last step); best epoch kept.
        checkpoint_every: checkpoint every this many steps (0: at each validation).
        log_every: progress line every this many steps (0: none).
        threshold: probability at or above which a voxel counts as calcium in validation.
        seed: default seed (``train_member``'s ``seed`` argument overrides it).
    """

    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    clip_norm: float = 1.0
    steps: int = 2000
    batch_size: int = 4
    patch_zyx: tuple[int, int, int] = (32, 48, 48)
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.5
    per_object: int = 0
    dense_per_object: int = 0
    dense_hard_per_object: int = 0
    gain_std: float = 0.05
    shift_std: float = 0.02
    noise_std: float = 0.015
    kernel_std: float = 0.0
    border_cut: float = 0.0
    end_cut: float = 0.0
    rotate_deg: float = 0.0
    tilt_deg: float | None = None
    scale_range: float = 0.0
    elastic_voxels: float = 0.0
    dice_smooth: float = 1.0
    dice_pooled: bool = False
    bce_weight: float = 0.0
    eval_every: int = 100
    checkpoint_every: int = 0
    log_every: int = 25
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise InputError(
                f"steps, batch_size and eval_every must be >= 1, got {self.steps}, {self.batch_size}, "
                f"{self.eval_every}",
                code="BAD_TRAIN_CONFIG",
            )
        if len(self.patch_zyx) != 3 or min(self.patch_zyx) < 1:
            raise InputError(
                f"patch_zyx must be three positive sizes (z, y, x), got {self.patch_zyx}",
                code="BAD_TRAIN_CONFIG",
            )
        fractions = (self.positive_fraction, self.hard_negative_fraction)
        if min(fractions) < 0.0 or sum(fractions) > 1.0 + 1e-9:
            raise InputError(
                f"positive_fraction ({self.positive_fraction}) and hard_negative_fraction "
                f"({self.hard_negative_fraction}) must be >= 0 with a sum of at most 1",
                code="BAD_TRAIN_CONFIG",
            )
        if int(self.per_object) != self.per_object or self.per_object < 0:
            raise InputError(f"per_object must be a whole number >= 0, got {self.per_object}", code="BAD_TRAIN_CONFIG")
        for name in ("dense_per_object", "dense_hard_per_object"):
            v = getattr(self, name)
            if int(v) != v or v < 0 or (v and not self.per_object):
                raise InputError(f"{name} must be a whole number >= 0, and needs per_object > 0; got {v} with "
                                 f"per_object {self.per_object}", code="BAD_TRAIN_CONFIG",
                                 hint="set per_object (e.g. 4) to draw patches object by object")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}",
                             code="BAD_TRAIN_CONFIG")
        if min(self.rotate_deg, self.scale_range, self.elastic_voxels) < 0 or self.scale_range >= 1:
            raise InputError(
                f"rotate_deg ({self.rotate_deg}), scale_range ({self.scale_range}) and elastic_voxels "
                f"({self.elastic_voxels}) must be >= 0, scale_range under 1",
                code="BAD_TRAIN_CONFIG",
            )
        if self.tilt_deg is not None and not self.tilt_deg >= 0:
            raise InputError(f"tilt_deg must be >= 0 or None, got {self.tilt_deg}", code="BAD_TRAIN_CONFIG")
        for name in ("border_cut", "end_cut"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} is a probability from 0 to 1, got {getattr(self, name)}",
                                 code="BAD_TRAIN_CONFIG")
        object.__setattr__(self, "patch_zyx", tuple(int(p) for p in self.patch_zyx))

    @property
    def geometric(self) -> tuple[float, float, float, float | None] | None:
        """(rotate_deg, scale_range, elastic_voxels, tilt_deg) when any geometric augmentation is on, else None."""
        g = (float(self.rotate_deg), float(self.scale_range), float(self.elastic_voxels),
             None if self.tilt_deg is None else float(self.tilt_deg))
        return g if any(g) else None

    def fingerprint_dict(self) -> dict:
        """Fields that must match for a checkpoint to resume (``steps`` and logging may change)."""
        d = dataclasses.asdict(self)
        for k in ("log_every", "checkpoint_every") + (("steps",) if self.lr_schedule == "constant" else ()):
            d.pop(k)
        if self.lr_schedule == "constant":  # as checkpoints written before schedules existed
            d.pop("lr_schedule")
        for k in ("kernel_std", "border_cut", "end_cut", "per_object", "dense_per_object", "dense_hard_per_object",
                  "rotate_deg", "scale_range", "elastic_voxels"):  # likewise before these options existed
            if not d[k]:
                d.pop(k)
        if d["tilt_deg"] is None:
            d.pop("tilt_deg")
        d["patch_zyx"] = list(d["patch_zyx"])
        return d


# --------------------------------------------------------------------------------------------------------
# data: exams -> coarse (image, target) pairs


@dataclass
class TrainingSet:
    """Training or validation pairs on the network's coarse grid.

    Attributes:
        images: list of float arrays (z, y, x) in [0, 1] (pre-processed HU).
        targets: list of bool arrays, same shapes: coarse calcification masks.
        names: one label per pair (e.g. "J1-0007").
        extra: free per-pair metadata (e.g. true Agatston, category, ``noise_hu``: the exam's measured image
            noise, ``agatax.quality.image_noise_hu``).
        negatives: optional list of bool arrays, same shapes: coarse hard negatives, voxels of bright
            structures that are not coronary calcium (valves, annulus, aortic wall); empty when unknown.
        box_mm: the pre-processing's enhancement box the images were made with (``preprocess(box_mm=)``);
            None when unknown (pairs built by hand). Training checks it against ``UNetConfig.input_box_mm``.
        dense_gain: the pre-processing's ``dense_gain`` the images were made with (None: unknown); checked
            against ``UNetConfig.input_dense_gain``.
    """

    images: list
    targets: list
    names: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    negatives: list = field(default_factory=list)
    box_mm: float | None = None
    dense_gain: float | None = None

    def __post_init__(self):
        if len(self.images) != len(self.targets):
            raise InputError(
                f"{len(self.images)} images but {len(self.targets)} targets",
                code="SHAPE_MISMATCH",
            )
        for i, (a, b) in enumerate(zip(self.images, self.targets)):
            if np.shape(a) != np.shape(b) or np.ndim(a) != 3:
                raise InputError(
                    f"pair {i}: image {np.shape(a)} and target {np.shape(b)} must be equal (z, y, x) shapes",
                    code="SHAPE_MISMATCH",
                )
        if not self.names:
            self.names = [str(i) for i in range(len(self.images))]
        if not self.extra:
            self.extra = [{} for _ in self.images]
        if self.negatives:
            if len(self.negatives) != len(self.images):
                raise InputError(f"{len(self.images)} images but {len(self.negatives)} negative masks",
                                 code="SHAPE_MISMATCH")
            for i, (a, n) in enumerate(zip(self.images, self.negatives)):
                if np.shape(a) != np.shape(n):
                    raise InputError(f"pair {i}: image {np.shape(a)} and negatives {np.shape(n)} differ",
                                     code="SHAPE_MISMATCH")

    def _negatives_or_empty(self) -> list:
        return self.negatives or [np.zeros(np.shape(a), bool) for a in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __add__(self, other: "TrainingSet") -> "TrainingSet":
        negatives = []
        if self.negatives or other.negatives:
            negatives = self._negatives_or_empty() + other._negatives_or_empty()
        for name, config_name, reads in INPUT_SETTINGS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if None not in (mine, theirs) and mine != theirs:
                raise InputError(
                    f"cannot join training sets made with different pre-processing ({reads.format(mine)} and "
                    f"{reads.format(theirs)})", code="INPUT_MISMATCH",
                    hint=f"prepare both with the same {name} (the network's UNetConfig.{config_name})")
        return TrainingSet(
            self.images + other.images, self.targets + other.targets,
            self.names + other.names, self.extra + other.extra, negatives,
            self.box_mm if self.box_mm is not None else other.box_mm,
            self.dense_gain if self.dense_gain is not None else other.dense_gain,
        )

    def subset(self, indices: Iterable[int]) -> "TrainingSet":
        idx = list(indices)
        return TrainingSet(
            [self.images[i] for i in idx], [self.targets[i] for i in idx],
            [self.names[i] for i in idx], [self.extra[i] for i in idx],
            [self.negatives[i] for i in idx] if self.negatives else [], self.box_mm, self.dense_gain,
        )

    def save(self, path) -> None:
        """Write an .npz cache (images as float16, targets as uint8), atomically."""
        arrays = {}
        for i, (a, b) in enumerate(zip(self.images, self.targets)):
            arrays[f"image_{i}"] = np.asarray(a, np.float16)
            arrays[f"target_{i}"] = np.asarray(b, np.uint8)
        for i, n in enumerate(self.negatives):
            arrays[f"negative_{i}"] = np.asarray(n, np.uint8)
        arrays["meta"] = np.frombuffer(
            json.dumps({"names": self.names, "extra": self.extra, "box_mm": self.box_mm,
                        "dense_gain": self.dense_gain}).encode(), np.uint8
        )
        path = Path(path)
        with atomic_open(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "TrainingSet":
        try:
            with np.load(path) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                n = len(meta["names"])
                images = [z[f"image_{i}"].astype(np.float32) for i in range(n)]
                targets = [z[f"target_{i}"].astype(bool) for i in range(n)]
                negatives = [z[f"negative_{i}"].astype(bool) for i in range(n)] if "negative_0" in z else []
        except (OSError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"cannot read training cache {path}: {err}", code="BAD_CACHE",
                hint="delete the file to regenerate it", paths=[path],
            ) from err
        # caches written before the enhancement's box (the dense gain) existed hold images made without it
        return cls(images, targets, meta["names"], meta["extra"], negatives, meta.get("box_mm", 0.0),
                   meta.get("dense_gain", 0.0))


def coarse_target(mask, spacing, *, target_mm=None, multiple: int = 8) -> np.ndarray:
    """Fine mask (z, y, x) -> bool on the coarse grid of ``preprocess`` (same shape as its output).

    A coarse voxel is positive when a positive fine voxel's centre falls into it (the cell that
    ``restore_grid`` maps that fine voxel back to). The mask goes through ``preprocess`` itself as a
    two-valued HU image (calcium 1000 HU, elsewhere -1000 HU): the high-HU enhancement gives every cell
    holding a calcium voxel the top of the window (1.0) and every other cell a lower overlap mean.
    """
    from agatax.preprocess import preprocess

    fake = np.where(np.asarray(mask) > 0, np.float32(1000.0), np.float32(-1000.0))
    coarse = preprocess(fake, spacing, target_mm=target_mm, multiple=multiple, box_mm=0.0)
    return np.asarray(coarse) >= 0.9995


def exam_pair(volume, mask, *, target_mm=None, multiple: int = 8,
              box_mm: float = ENHANCE_BOX_MM, dense_gain: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One exam -> (image float32 (Z, Y, X) in [0, 1], target bool (Z, Y, X)) on the coarse grid.

    Args:
        volume: a ``Volume`` (HU (z, y, x), spacing (dz, dy, dx) mm).
        mask: true calcification mask (z, y, x), nonzero = calcium (artery labels accepted).
        target_mm: coarse voxel size in mm (default: ``preprocess``'s, ``network_grid_mm``).
        multiple: pad each axis to this multiple (as ``preprocess``; 8 for the paper's network).
        box_mm: the enhancement box of ``preprocess`` (the network's ``UNetConfig.input_box_mm``).
        dense_gain: ``preprocess``'s input above 800 HU (the network's ``UNetConfig.input_dense_gain``).
    """
    from agatax.preprocess import preprocess

    hu = np.asarray(volume.hu, np.float32)
    mask = np.asarray(mask)
    if mask.shape != hu.shape:
        raise InputError(
            f"mask {mask.shape} and volume {hu.shape} must have the same (z, y, x) shape",
            code="SHAPE_MISMATCH",
        )
    image = np.asarray(preprocess(hu, volume.spacing, target_mm=target_mm, multiple=multiple, box_mm=box_mm,
                                  dense_gain=dense_gain), np.float32)
    target = coarse_target(mask, volume.spacing, target_mm=target_mm, multiple=multiple)
    return image, target


def prepare_pairs(exams, *, target_mm=None, multiple: int = 8, cache=None, names=None, log=None,
                  box_mm: float = ENHANCE_BOX_MM, dense_gain: float = 0.0) -> TrainingSet:
    """Exams -> TrainingSet, optionally cached in an .npz file (generation and pre-processing paid once).

    Args:
        exams: iterable of ``SyntheticExam`` (``.volume``, ``.mask``; its ``.look_alike_mask`` becomes the
            hard negatives), ``(volume, mask)`` pairs or ``(volume, mask, negatives)`` triples
            (fine bool mask of look-alike structures); may be a zero-argument callable returning that
            iterable, so that nothing is generated on a cache hit.
        target_mm: coarse voxel size (mm) for ``preprocess``.
        multiple: pad each axis to this multiple (as ``preprocess``).
        cache: path of an .npz cache; read when present, written otherwise. A cache made with another
            ``box_mm`` or ``dense_gain`` is refused (INPUT_MISMATCH), not overwritten.
        names: optional labels, one per exam.
        log: optional print-like callable for progress.
        box_mm: the enhancement box of ``preprocess``: the ``UNetConfig.input_box_mm`` of the networks these
            pairs will train.
        dense_gain: ``preprocess``'s input above 800 HU: the ``UNetConfig.input_dense_gain`` of those networks.
    """
    box_mm, dense_gain = float(box_mm), float(dense_gain)
    if cache is not None and Path(cache).exists():
        data = TrainingSet.load(cache)
        if (data.box_mm, data.dense_gain) != (box_mm, dense_gain):
            raise InputError(
                f"training cache {cache} was prepared with an enhancement box of {data.box_mm} mm and dense_gain "
                f"{data.dense_gain}; {box_mm} mm and {dense_gain} were asked for", code="INPUT_MISMATCH",
                paths=[cache], hint="give another cache path (or delete that file) to prepare the pairs again")
        return data
    if callable(exams):
        exams = exams()
    images, targets, extra, negatives = [], [], [], []
    t0 = time.perf_counter()
    for i, exam in enumerate(exams):
        if isinstance(exam, tuple):
            volume, mask, fine_neg = exam if len(exam) == 3 else (*exam, None)
            info = {}
        else:
            volume, mask = exam.volume, exam.mask
            fine_neg = getattr(exam, "look_alike_mask", None)
            info = {"agatston": float(getattr(exam, "agatston", float("nan"))),
                    "category": str(getattr(exam, "category", ""))}
        if isinstance(volume, Volume):  # the networks learn the canonical layout they are later given
            volume, how = to_canonical(volume)
            mask = how.apply(np.asarray(mask))
            fine_neg = None if fine_neg is None else how.apply(np.asarray(fine_neg))
            from agatax.quality import image_noise_hu

            noise = image_noise_hu(volume.hu, volume.spacing)  # the pipeline's measure (UNetConfig.trained_noise_hu)
            if noise is not None:
                info = {**info, "noise_hu": float(noise)}
        image, target = exam_pair(volume, mask, target_mm=target_mm, multiple=multiple, box_mm=box_mm,
                                  dense_gain=dense_gain)
        images.append(image)
        targets.append(target)
        extra.append(info)
        negatives.append(None if fine_neg is None else
                         coarse_target(fine_neg, volume.spacing, target_mm=target_mm, multiple=multiple) & ~target)
        if log is not None and (i + 1) % 25 == 0:
            log(f"prepared {i + 1} exams ({time.perf_counter() - t0:.1f} s)")
    if any(n is not None for n in negatives):
        negatives = [np.zeros(a.shape, bool) if n is None else n for a, n in zip(images, negatives)]
    else:
        negatives = []
    data = TrainingSet(images, targets, list(names) if names is not None else [], extra, negatives, box_mm,
                       dense_gain)
    if cache is not None:
        data.save(cache)
    return data


# --------------------------------------------------------------------------------------------------------
# packing for the device and patch sampling (jitted)


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def _object_voxels(mask: np.ndarray, per_object: int, image: np.ndarray | None = None,
                   dense_per_object: int = 0) -> np.ndarray:
    """(n, 3) voxel indices of ``mask``: all of them (``per_object`` 0), else at most ``per_object`` of each
    26-connected object, evenly spaced through its voxels in scan order; at most ``dense_per_object`` of each
    object whose ``image`` (same shape, network input units) reaches 1 (the window's top, 800 HU)."""
    if not per_object:
        return np.argwhere(mask)
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros((0, 3), np.int64)
    flat = np.flatnonzero(labels)
    ids = labels.ravel()[flat]
    order = np.argsort(ids, kind="stable")  # voxels grouped by object, scan order inside each
    flat, ids = flat[order], ids[order]
    starts = np.searchsorted(ids, np.arange(1, n + 1))
    counts = np.diff(np.append(starts, len(ids)))
    want = np.full(n, per_object)
    if dense_per_object and image is not None:
        peaks = ndimage.maximum(np.asarray(image, np.float32), labels, index=np.arange(1, n + 1))
        want[np.asarray(peaks) >= 1.0] = dense_per_object
    picks = [starts[k] + np.unique(np.linspace(0, counts[k] - 1, min(want[k], counts[k])).round().astype(np.int64))
             for k in range(n)]
    return np.stack(np.unravel_index(flat[np.concatenate(picks)], mask.shape), axis=1)


def _pack(data: TrainingSet, min_shape: Sequence[int], multiple: int = 1, per_object: int = 0,
          dense_per_object: int = 0, dense_hard_per_object: int = 0) -> dict:
    """Stack pairs into zero-padded device arrays (N, Z, Y, X) plus real shapes, the voxels patches are
    centred on (calcium, hard negatives; all, or ``per_object`` per object: ``TrainConfig.per_object``, and
    ``dense_per_object`` per dense calcified object, ``dense_hard_per_object`` per dense hard negative:
    ``TrainConfig``'s fields of those names) and
    the input's top ("top": 1, or the images' maximum above it where the input rises above 800 HU,
    ``UNetConfig.input_dense_gain``), where the augmentation clips."""
    if len(data) == 0:
        raise InputError("the training set is empty", code="EMPTY_DATASET",
                         hint="pass at least one exam")
    shape = [max(max(np.shape(a)[d] for a in data.images), int(min_shape[d])) for d in range(3)]
    shape = [_round_up(s, multiple) for s in shape]
    n = len(data)
    images = np.zeros((n, *shape), np.float16)
    targets = np.zeros((n, *shape), np.uint8)
    shapes = np.zeros((n, 3), np.int32)
    positives, hard = [], []
    for i, (a, b, neg) in enumerate(zip(data.images, data.targets, data._negatives_or_empty())):
        z, y, x = np.shape(a)
        images[i, :z, :y, :x] = a
        targets[i, :z, :y, :x] = b
        shapes[i] = (z, y, x)
        for mask, out, dense in ((b, positives, dense_per_object), (neg, hard, dense_hard_per_object)):
            p = _object_voxels(np.asarray(mask, bool), per_object, a, dense)
            if len(p):
                out.append(np.concatenate([np.full((len(p), 1), i), p], axis=1))

    def coords(parts):
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros((1, 4), np.int32)

    return {
        "images": jnp.asarray(images),
        "targets": jnp.asarray(targets),
        "shapes": jnp.asarray(shapes),
        "positives": jnp.asarray(coords(positives)),
        "has_positive": jnp.asarray(bool(positives)),
        "negatives": jnp.asarray(coords(hard)),
        "has_negative": jnp.asarray(bool(hard)),
        "top": jnp.asarray(max(1.0, max(float(np.max(a)) for a in data.images)), jnp.float32),
    }


def _rotation(angles):
    """3 x 3 rotation matrix (z, y, x axes) from angles (about z, about y, about x), radians."""
    cz, sz = jnp.cos(angles[0]), jnp.sin(angles[0])
    cy, sy = jnp.cos(angles[1]), jnp.sin(angles[1])
    cx, sx = jnp.cos(angles[2]), jnp.sin(angles[2])
    one, zero = jnp.ones(()), jnp.zeros(())
    about_z = jnp.array([[one, zero, zero], [zero, cz, -sz], [zero, sz, cz]])  # turns the y-x plane
    about_y = jnp.array([[cy, zero, -sy], [zero, one, zero], [sy, zero, cy]])  # turns the z-x plane
    about_x = jnp.array([[cx, -sx, zero], [sx, cx, zero], [zero, zero, one]])  # turns the z-y plane
    return about_z @ about_y @ about_x


def _warp(image, start, angles, scale, displacement, *, patch, order: int = 1):
    """``image`` (Z, Y, X) sampled on a ``patch`` grid centred where the plain crop at ``start`` (3,) is
    centred (start + (patch - 1) / 2): the voxel at offset d from the centre reads the image at
    centre + R(angles) d / scale + displacement (voxels). angles (3,): radians about z, y, x;
    displacement: (3, *patch) voxels or None. Interpolation of ``order`` (0 or 1); 0 outside the image.
    Returns ``patch`` float32."""
    half = (jnp.asarray(patch, jnp.float32) - 1.0) / 2.0
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(p, dtype=jnp.float32) for p in patch], indexing="ij"))
    source = jnp.einsum("ij,j...->i...", _rotation(angles), grid - half[:, None, None, None]) / scale
    if displacement is not None:
        source = source + displacement
    source = source + (jnp.asarray(start, jnp.float32) + half)[:, None, None, None]
    return jax.scipy.ndimage.map_coordinates(jnp.asarray(image, jnp.float32), [source[i] for i in range(3)],
                                             order=order, mode="constant", cval=0.0)


def _warp_crop(image, target, start, key, *, patch, rotate_deg: float, scale_range: float,
               elastic_voxels: float, tilt_deg: float | None = None):
    """A random warp (``TrainConfig``'s rotate_deg, scale_range, elastic_voxels, tilt_deg: the limit about y and
    x, None for a third of rotate_deg) of one exam's patch at
    ``start`` (``_warp``): image linearly interpolated, target by nearest neighbour (a linearly interpolated
    target thresholded at 0.5 loses the one-voxel specks whose blurred image the patch still shows).
    Returns (x, y), each ``patch`` float32."""
    k_rot, k_scale, k_el = jax.random.split(key, 3)
    tilt = rotate_deg / 3.0 if tilt_deg is None else tilt_deg
    limits = jnp.deg2rad(jnp.array([rotate_deg, tilt, tilt], jnp.float32))
    angles = jax.random.uniform(k_rot, (3,), minval=-1.0, maxval=1.0) * limits
    scale = 1.0 + jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0) * scale_range
    displacement = None
    if elastic_voxels:
        coarse = elastic_voxels * jax.random.normal(k_el, (3, 4, 4, 4))
        displacement = jax.image.resize(coarse, (3, *patch), method="linear")
    warp = partial(_warp, start=start, angles=angles, scale=scale, displacement=displacement, patch=patch)
    return warp(image), warp(target, order=0)


def _sample_batch(data: dict, key, *, patch, batch: int, positive_fraction: float,
                  hard_negative_fraction: float = 0.0,
                  geometric: tuple[float, float, float, float | None] | None = None):
    """Random patches (batch, pz, py, px) of images (float32) and targets (float32).

    Patch b is centred (with jitter of up to a quarter patch) on a calcified voxel when
    u_b < positive_fraction, on a hard-negative voxel when u_b < positive_fraction + hard_negative_fraction,
    and placed uniformly otherwise, with stratified u_b = (b + U) / batch, U ~ uniform(0, 1). A kind the
    data lack falls back to a uniform patch. ``geometric`` (rotate_deg, scale_range, elastic_voxels, tilt_deg):
    each patch is sampled about the same centre through a random warp (``_warp_crop``).
    """
    if geometric is not None:
        key, k_warp = jax.random.split(key)
    k_exam, k_start, k_pos, k_jit, k_use, k_neg = jax.random.split(key, 6)
    n = data["images"].shape[0]
    patch_arr = jnp.asarray(patch, jnp.int32)[None, :]  # (1, 3)
    exam = jax.random.randint(k_exam, (batch,), 0, n)
    hi = jnp.maximum(data["shapes"][exam] - patch_arr, 0)  # (B, 3)
    start_u = jnp.floor(jax.random.uniform(k_start, (batch, 3)) * (hi + 1).astype(jnp.float32))
    start_u = jnp.minimum(start_u.astype(jnp.int32), hi)
    quarter = jnp.maximum(patch_arr // 4, 1)
    jitter = jnp.floor(
        (jax.random.uniform(k_jit, (batch, 3)) * 2.0 - 1.0) * quarter.astype(jnp.float32)
    ).astype(jnp.int32)

    def centred(coords, k):
        pick = coords[jax.random.randint(k, (batch,), 0, coords.shape[0])]
        hi_p = jnp.maximum(data["shapes"][pick[:, 0]] - patch_arr, 0)
        return pick[:, 0], jnp.clip(pick[:, 1:] - patch_arr // 2 + jitter, 0, hi_p)

    exam_p, start_p = centred(data["positives"], k_pos)
    exam_n, start_n = centred(data["negatives"], k_neg)
    u = (jnp.arange(batch) + jax.random.uniform(k_use)) / batch
    use_pos = (u < positive_fraction) & data["has_positive"]
    use_neg = (u >= positive_fraction) & (u < positive_fraction + hard_negative_fraction) & data["has_negative"]
    exam = jnp.where(use_pos, exam_p, jnp.where(use_neg, exam_n, exam))
    start = jnp.where(use_pos[:, None], start_p, jnp.where(use_neg[:, None], start_n, start_u))

    if geometric is not None:
        rotate_deg, scale_range, elastic_voxels, tilt_deg = geometric
        warp = partial(_warp_crop, patch=tuple(patch), rotate_deg=rotate_deg, scale_range=scale_range,
                       elastic_voxels=elastic_voxels, tilt_deg=tilt_deg)
        return jax.vmap(lambda e, s, k: warp(data["images"][e], data["targets"][e], s, k))(
            exam, start, jax.random.split(k_warp, batch))

    def crop(arr, e, s):
        return jax.lax.dynamic_slice(arr, (e, s[0], s[1], s[2]), (1, *patch))[0]

    x = jax.vmap(crop, in_axes=(None, 0, 0))(data["images"], exam, start).astype(jnp.float32)
    y = jax.vmap(crop, in_axes=(None, 0, 0))(data["targets"], exam, start).astype(jnp.float32)
    return x, y


def _blur_inplane(x):
    """[1, 2, 1] / 4 filter along y and x (edges replicated). x: (B, z, y, x)."""
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (1, 1)
        p = jnp.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = 0.25 * jax.lax.slice_in_dim(p, 0, n, axis=axis) + 0.5 * jax.lax.slice_in_dim(p, 1, n + 1, axis=axis) \
            + 0.25 * jax.lax.slice_in_dim(p, 2, n + 2, axis=axis)
    return x


def _border_cut(x, y, key, probability: float):
    """Cut each patch, with ``probability``, by a random in-plane line 25-50 % of the patch from its centre
    (the centre, where calcium patches hold their calcium, is kept): beyond it image and target are 0.
    x, y: (B, z, y, x)."""
    k_use, k_angle, k_depth = jax.random.split(key, 3)
    b, _, ny, nx = x.shape
    angle = jax.random.uniform(k_angle, (b, 1, 1, 1), minval=0.0, maxval=2 * jnp.pi)
    depth = jax.random.uniform(k_depth, (b, 1, 1, 1), minval=0.25, maxval=0.5)
    yy = (jnp.arange(ny, dtype=jnp.float32) / (ny - 1) - 0.5)[None, None, :, None]
    xx = (jnp.arange(nx, dtype=jnp.float32) / (nx - 1) - 0.5)[None, None, None, :]
    beyond = jnp.cos(angle) * yy + jnp.sin(angle) * xx > depth
    cut = (jax.random.uniform(k_use, (b, 1, 1, 1)) < probability) & beyond
    return jnp.where(cut, 0.0, x), jnp.where(cut, 0.0, y)


def _end_cut(x, y, key, probability: float):
    """Cut each patch, with ``probability``, by a scan's end: the slices more than d = U(0, 0.45) x depth from
    the patch's centre on one side (random) become padding (image 0), but never a calcified one: the cut
    moves out past the patch's outermost calcified slice on that side, so calcium is kept and can lie in
    the last slice before the padding. x, y: (B, z, y, x); y is returned unchanged."""
    k_use, k_side, k_depth = jax.random.split(key, 3)
    b, nz = x.shape[:2]
    z = (jnp.arange(nz, dtype=jnp.float32) + 0.5 - nz / 2)[None, :]  # slice centres from the middle
    side = jnp.where(jax.random.uniform(k_side, (b, 1)) < 0.5, -1.0, 1.0)
    depth = jax.random.uniform(k_depth, (b, 1), minval=0.0, maxval=0.45) * nz
    calcified = (y > 0).any(axis=(2, 3)).astype(jnp.int32)  # (B, z)
    none_below = jax.lax.cummax(calcified, axis=1) == 0  # no calcified slice at or below this one
    none_above = jnp.flip(jax.lax.cummax(jnp.flip(calcified, 1), axis=1), 1) == 0
    cut = (side * z > depth) & jnp.where(side > 0, none_above, none_below)
    cut = (jax.random.uniform(k_use, (b, 1)) < probability) & cut
    return jnp.where(cut[:, :, None, None], 0.0, x), y


def _augment(x, y, key, *, gain_std: float, shift_std: float, noise_std: float, kernel_std: float = 0.0,
             border_cut: float = 0.0, end_cut: float = 0.0, top=1.0):
    """Domain randomisation of a batch of patches x, y: (B, z, y, x): reconstruction kernel (blur or
    sharpen), intensity gain/shift, Gaussian noise, clipped to [0, top] (the input's range); then
    field-of-view and scan-end cuts (image and target). Returns (x, y)."""
    k_gain, k_shift, k_noise, k_kernel, k_cut = jax.random.split(key, 5)
    b = x.shape[0]
    if kernel_std:
        s = jnp.clip(kernel_std * jax.random.normal(k_kernel, (b, 1, 1, 1)), -0.8, 1.0)
        x = x + s * (x - _blur_inplane(x))
    gain = 1.0 + gain_std * jax.random.normal(k_gain, (b, 1, 1, 1))
    shift = shift_std * jax.random.normal(k_shift, (b, 1, 1, 1))
    noise = noise_std * jax.random.normal(k_noise, x.shape)
    x = jnp.clip(x * gain + shift + noise, 0.0, top)
    if border_cut:
        x, y = _border_cut(x, y, k_cut, border_cut)
    if end_cut:  # its own key, so that the border cuts of earlier runs stay the same
        x, y = _end_cut(x, y, jax.random.fold_in(k_cut, 1), end_cut)
    return x, y


# --------------------------------------------------------------------------------------------------------
# state, loss, steps


class TrainState(train_state.TrainState):
    """flax TrainState with BatchNorm statistics and the data-stream key (uint32 (2,))."""

    batch_stats: Any = None
    key: jax.Array = None


def segmentation_loss(logits, targets, *, smooth=1.0, pooled=True, bce_weight=0.0):
    """Dice loss (``optax.losses.dice_loss`` on sigmoid probabilities) plus optional BCE.

    Args:
        logits: (batch, z, y, x, 1) network output.
        targets: (batch, z, y, x, 1) in {0, 1}.
        pooled: one Dice over the whole batch, else the mean of per-patch Dice losses.
    Returns:
        scalar loss.
    """
    axis = tuple(range(logits.ndim - 1)) if pooled else None
    loss = jnp.mean(optax.losses.dice_loss(logits, targets, smooth=smooth, axis=axis))
    if bce_weight:
        loss = loss + bce_weight * jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    return loss


@functools.lru_cache(maxsize=16)
def _make_train_step(config: TrainConfig):
    """Jitted step for ``config`` (cached: every member and every resume reuses one compilation).

    Call it with ``_step_key(config)`` so that fields the step does not read do not split the cache.
    """
    sample = partial(_sample_batch, patch=config.patch_zyx, batch=config.batch_size,
                     positive_fraction=config.positive_fraction,
                     hard_negative_fraction=config.hard_negative_fraction, geometric=config.geometric)
    augment = partial(_augment, gain_std=config.gain_std, shift_std=config.shift_std,
                      noise_std=config.noise_std, kernel_std=config.kernel_std, border_cut=config.border_cut,
                      end_cut=config.end_cut)

    @jax.jit
    def step(state: TrainState, data: dict):
        key = jax.random.fold_in(state.key, state.step)
        k_sample, k_aug = jax.random.split(key)
        x, y = sample(data, k_sample)
        x, y = augment(x, y, k_aug, top=data["top"])
        x, y = x[..., None], y[..., None]

        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats"],
            )
            loss = segmentation_loss(logits.astype(jnp.float32), y, smooth=config.dice_smooth,
                                     pooled=config.dice_pooled, bce_weight=config.bce_weight)
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return state, loss

    return step


def _step_key(config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(config, steps=1, eval_every=1, checkpoint_every=0, log_every=0,
                               threshold=0.5, seed=0)


@functools.lru_cache(maxsize=16)
def _make_predict(model):
    """Jitted sigmoid(model.apply(variables, x, train=False)) (cached per model)."""
    @jax.jit
    def predict(variables, x):
        return jax.nn.sigmoid(model.apply(variables, x, train=False).astype(jnp.float32))

    return predict


def predict_coarse(variables, model_config, image) -> np.ndarray:
    """Probability map (z, y, x) of one network on one coarse image (z, y, x) in [0, 1] (host arrays)."""
    m = 2 ** (model_config.levels - 1)
    image = np.asarray(image, np.float32)
    shape = [_round_up(s, m) for s in image.shape]
    padded = np.zeros(shape, np.float32)
    padded[tuple(slice(0, s) for s in image.shape)] = image
    prob = _make_predict(_model(model_config))(variables, jnp.asarray(padded)[None, ..., None])
    return np.asarray(prob)[0, : image.shape[0], : image.shape[1], : image.shape[2], 0]


def evaluate_dice(predict, variables, packed: dict, threshold: float = 0.5) -> float:
    """Pooled Dice 2|P.T| / (|P| + |T|) over all validation exams on the coarse grid (1.0 if both empty)."""
    inter = pred = true = 0.0
    images, targets = packed["images"], packed["targets"]
    for i in range(images.shape[0]):
        prob = predict(variables, images[i][None, ..., None].astype(jnp.float32))[0, ..., 0]
        p = prob >= threshold
        t = targets[i] > 0
        inter += float(jnp.sum(p & t))
        pred += float(jnp.sum(p))
        true += float(jnp.sum(t))
    return 1.0 if pred + true == 0 else 2.0 * inter / (pred + true)


# --------------------------------------------------------------------------------------------------------
# checkpoints




def _data_fingerprint(packed: dict) -> str:
    h = hashlib.sha1()
    for k in ("images", "targets", "shapes", "negatives"):
        a = np.asarray(packed[k])
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _variables_fingerprint(variables) -> str:
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.asarray(leaf, np.float32)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fingerprint(config, model_config, seed, train_fp, val_fp, init_fp=None) -> str:
    doc = {
        "train": config.fingerprint_dict(),
        "model": repr(model_config),
        "seed": int(seed),
        "train_data": train_fp,
        "val_data": val_fp,
    }
    if init_fp is not None:  # fine-tuning: the starting weights belong to the run
        doc["init"] = init_fp
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(path: Path, state, best, history, fingerprint) -> None:
    doc = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "state": serialization.to_state_dict(jax.device_get(state)),
        "best_variables": jax.device_get(best["variables"]),
        "best_dice": float(best["dice"]),
        "best_step": int(best["step"]),
        "history": json.dumps(history),
    }
    atomic_write_bytes(path, serialization.msgpack_serialize(doc))


def _load_checkpoint(path: Path, template_state, fingerprint):
    try:
        doc = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise CheckpointError(
            f"training checkpoint {path} is unreadable ({type(err).__name__}: {err})",
            code="CORRUPT_CHECKPOINT", hint="delete it to restart training from scratch", paths=[path],
        ) from err
    if not isinstance(doc, dict) or doc.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an agatax training checkpoint", code="CORRUPT_CHECKPOINT",
                              hint="delete it or choose another checkpoint_dir", paths=[path])
    if doc.get("version") != _CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {doc.get('version')}, expected {_CHECKPOINT_VERSION}",
            code="CHECKPOINT_VERSION", hint="delete it to restart training", paths=[path])
    if doc.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path} was written for another configuration, seed or data set",
            code="CHECKPOINT_MISMATCH",
            hint="use a fresh checkpoint_dir, or the same TrainConfig/UNetConfig/seed/data as before",
            paths=[path])
    state = serialization.from_state_dict(template_state, doc["state"])
    state = jax.tree.map(jnp.asarray, state)
    best_template = {"params": template_state.params, "batch_stats": template_state.batch_stats}
    best_vars = serialization.from_state_dict(best_template, doc["best_variables"])
    best = {"variables": best_vars, "dice": float(doc["best_dice"]), "step": int(doc["best_step"])}
    return state, best, json.loads(doc["history"])


# --------------------------------------------------------------------------------------------------------
# public entry points


@functools.lru_cache(maxsize=16)
def _model(model_config):
    """One UNet instance per config, so jitted functions see the same static ``apply_fn``."""
    from agatax.model import UNet

    return UNet(model_config)


@functools.lru_cache(maxsize=16)
def _init_fn(model_config):
    """Jitted ``key -> variables`` (the smallest valid input: parameters do not depend on its size)."""
    model = _model(model_config)
    m = 2 ** (model_config.levels - 1)
    x = jnp.zeros((1, m, m, m, 1), jnp.float32)
    return jax.jit(lambda key: model.init(key, x, train=False))


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float, clip_norm: float, schedule: str = "constant", steps: int = 1):
    """One optimiser per setting, so jitted functions see the same static ``tx``: Adam, after clipping."""
    if schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(learning_rate, decay_steps=steps, alpha=0.05)
    adam = optax.adam(learning_rate)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm else adam


def init_state(model_config, config: TrainConfig, seed: int) -> TrainState:
    """Fresh TrainState: UNet variables from ``seed``, Adam, and the data-stream key."""
    model = _model(model_config)
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = _init_fn(model_config)(init_key)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=_optimizer(float(config.learning_rate), float(config.clip_norm), config.lr_schedule,
                      int(config.steps)),
        key=data_key,
    )


def train_member(
    train_data: TrainingSet,
    val_data: TrainingSet | None,
    config: TrainConfig,
    model_config,
    seed: int | None = None,
    checkpoint_dir=None,
    *,
    log: Callable[[str], None] | None = print,
    history: list | None = None,
    init_variables: dict | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    give_up_at: int | None = None,
) -> dict:
    """Train one U-Net; return the variables {"params", "batch_stats"} of the best validation epoch.

    Args:
        train_data: coarse training pairs (``prepare_pairs``).
        val_data: coarse validation pairs; None keeps the last step's variables.
        config: TrainConfig (steps, batch, patch, augmentation, validation interval).
        model_config: UNetConfig of the network.
        seed: initialisation and data-stream seed (default ``config.seed``).
        checkpoint_dir: folder for ``last.ckpt``; when it holds a checkpoint of the same configuration,
            seed and data, training resumes from it exactly (a mismatched one raises CheckpointError).
        log: print-like callable for progress lines (None: silent).
        history: optional list that receives one dict per validation {"step", "loss", "val_dice",
            "seconds_per_step"}.
        init_variables: {"params", "batch_stats"} to start from (fine-tuning) instead of a fresh
            initialisation; the seed then keys the data stream only. Part of the checkpoint's identity.
        on_step: called after every step (also those a resume skips, once, with the resumed step) as
            on_step(step, info): info holds "loss" when it was read at this step (every ``log_every``
            steps and at validations), and "val_dice" / "best_dice" at validations.
        give_up_at: stop at the first validation at or after this step when the validation Dice has stayed
            under ``COLLAPSE_DICE`` at every check so far, or at the last three (collapsed to "no calcium";
            ``train_ensemble`` then trains it again with another seed). None: always train all ``config.steps``.
    Returns:
        variables dict (host numpy leaves) of the best validation epoch.
    """
    seed = config.seed if seed is None else int(seed)
    levels = int(model_config.levels)
    multiple = 2 ** (levels - 1)
    for which, data in (("training", train_data), ("validation", val_data)):
        for name, config_name, reads in INPUT_SETTINGS:
            made, takes = (None if data is None else getattr(data, name)), getattr(model_config, config_name)
            if made is not None and made != takes:
                raise InputError(
                    f"the {which} pairs were prepared with {reads.format(made)} but the network takes "
                    f"{reads.format(takes)} (UNetConfig.{config_name})", code="INPUT_MISMATCH",
                    hint=f"prepare the pairs with prepare_pairs(..., {name}=model_config.{config_name})")
    if val_data is not None and len(val_data) and not any(np.any(t) for t in val_data.targets):
        raise InputError(
            f"none of the {len(val_data)} validation exams has calcium on the network's grid: the validation Dice "
            "is 0 whatever the network does, so the best step cannot be chosen (and a network would be taken for "
            "collapsed)", code="NO_CALCIUM",
            hint="validate on exams with calcium (or on more exams), or train without validation (the last step "
                 "is kept)")
    for p in config.patch_zyx:
        if p % multiple:
            raise InputError(
                f"patch_zyx {config.patch_zyx} must be multiples of {multiple} for a {levels}-level U-Net",
                code="BAD_TRAIN_CONFIG", hint=f"round the patch size to a multiple of {multiple}")
    packed = _pack(train_data, config.patch_zyx, per_object=config.per_object,
                   dense_per_object=config.dense_per_object, dense_hard_per_object=config.dense_hard_per_object)
    val_packed = _pack(val_data, (1, 1, 1), multiple) if val_data is not None and len(val_data) else None
    fp = _fingerprint(config, model_config, seed, _data_fingerprint(packed),
                      _data_fingerprint(val_packed) if val_packed is not None else None,
                      None if init_variables is None else _variables_fingerprint(init_variables))

    state = init_state(model_config, config, seed)
    if init_variables is not None:
        template = {"params": state.params, "batch_stats": state.batch_stats}
        if jax.tree.structure(template) != jax.tree.structure(dict(init_variables)) or any(
                np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(dict(init_variables)))):
            raise InputError("init_variables do not match the UNetConfig being trained", code="CONFIG_MISMATCH",
                             hint="train with the configuration of the ensemble you start from")
        start_vars = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(init_variables))
        state = state.replace(params=start_vars["params"], batch_stats=start_vars["batch_stats"],
                              opt_state=state.tx.init(start_vars["params"]))
    best = {"variables": {"params": state.params, "batch_stats": state.batch_stats},
            "dice": -1.0, "step": 0}
    records: list = []
    ckpt = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state, best, records = _load_checkpoint(ckpt, state, fp)
        if log:
            log(f"resumed from {ckpt} at step {int(state.step)} (best val Dice {best['dice']:.4f})")

    step_fn = _make_train_step(_step_key(config))
    predict = _make_predict(_model(model_config))
    ckpt_every = config.checkpoint_every or config.eval_every
    start = int(state.step)
    if on_step is not None and start:
        on_step(start, {"resumed": True, "best_dice": best["dice"]})
    t_last, s_last = time.perf_counter(), start
    loss_sum, loss_n = 0.0, 0
    for step in range(start + 1, config.steps + 1):
        if give_up_at is not None and val_packed is not None and _collapsed(records, give_up_at):
            if log:
                log(f"validation Dice under {COLLAPSE_DICE:g} through step {records[-1]['step']}: collapsed, stopped")
            break
        state, loss = step_fn(state, packed)
        last = step == config.steps
        want_log = bool(config.log_every) and step % config.log_every == 0
        want_eval = step % config.eval_every == 0 or last
        if want_log or want_eval:
            loss_v = float(loss)
            loss_sum, loss_n = loss_sum + loss_v, loss_n + 1
            now = time.perf_counter()
            per_step = (now - t_last) / max(step - s_last, 1)
            t_last, s_last = now, step
        if want_eval:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            dice = evaluate_dice(predict, variables, val_packed, config.threshold) if val_packed else -loss_v
            if val_packed is None or dice > best["dice"]:
                best = {"variables": jax.device_get(variables), "dice": dice, "step": step}
            rec = {"step": step, "loss": loss_v, "val_dice": dice if val_packed else None,
                   "seconds_per_step": per_step}
            records.append(rec)
            if log:
                vd = f"val Dice {dice:.4f} (best {best['dice']:.4f} @ {best['step']})" if val_packed else ""
                log(f"step {step}/{config.steps} loss {loss_v:.4f} {vd} {per_step * 1e3:.0f} ms/step")
            t_last = time.perf_counter()
        elif want_log and log:
            log(f"step {step}/{config.steps} loss {loss_v:.4f} {per_step * 1e3:.0f} ms/step")
        if ckpt is not None and (step % ckpt_every == 0 or last):
            _save_checkpoint(ckpt, state, best, records, fp)
        if on_step is not None:
            info = {"loss": loss_v} if want_log or want_eval else {}
            if want_eval:
                info.update(val_dice=dice if val_packed else None, best_dice=best["dice"])
            on_step(step, info)
    if history is not None:
        history.extend(records)
    return jax.device_get(best["variables"])


COLLAPSE_SEED_STEP = 7919
COLLAPSE_GIVE_UP = 0.25  # share of the steps after which a member that never found calcium is abandoned
#: a member whose validation Dice never reached this, or fell under it at its last three checks, has
#: collapsed to "no calcium" (collapsed runs seen: 0.012 at the first check and 0 at the next eleven; 0.26 at
#: the first and 0 at the next sixteen; healthy runs were above 0.5 from their second check on)
COLLAPSE_DICE = 0.05


def _never_found_calcium(records: list) -> bool:
    dice = [r["val_dice"] for r in records if r.get("val_dice") is not None]
    return bool(dice) and (max(dice) < COLLAPSE_DICE or (len(dice) >= 3 and max(dice[-3:]) < COLLAPSE_DICE))


def _collapsed(records: list, give_up_at: int) -> bool:
    """True when validation reached ``give_up_at`` and the run finds no calcium (``_never_found_calcium``)."""
    return bool(records) and records[-1]["step"] >= give_up_at and _never_found_calcium(records)


def train_ensemble(
    train_data: TrainingSet,
    val_data: TrainingSet | None,
    config: TrainConfig,
    model_config,
    members: int = 5,
    seeds: Sequence[int] | None = None,
    checkpoint_dir=None,
    *,
    log: Callable[[str], None] | None = print,
    histories: list | None = None,
    collapse_retries: int = 2,
    init=None,
    on_step: Callable[[int, int, dict], None] | None = None,
):
    """Train ``members`` networks on the same data with different seeds and stack them into an Ensemble.

    Args:
        seeds: one seed per member (default ``config.seed + k``).
        checkpoint_dir: parent folder; member k checkpoints under ``member{k}/`` (a retry under
            ``member{k}_retry{n}/``).
        histories: optional list receiving one history list per member (the kept run's).
        collapse_retries: a member whose validation Dice stays under ``COLLAPSE_DICE`` at every check, or at
            its last three (it learned to call nothing calcium), is trained again from seed + 7919 * n, up to
            this many times; the last run is kept. Every run but the last is abandoned as soon as it is
            collapsed at the first check after ``COLLAPSE_GIVE_UP`` of the steps (healthy networks find
            calcium within a few checks).
        init: an ``Ensemble`` to fine-tune: member k starts from its member k modulo its size (its
            UNetConfig must be ``model_config``'s); None: fresh networks.
        on_step: on_step(member index, step, info) after every step (see ``train_member``).
    Returns:
        ``agatax.ensemble.Ensemble`` (members stacked on the leading axis).
    """
    from agatax.ensemble import stack_members

    seeds = list(seeds) if seeds is not None else [config.seed + k for k in range(members)]
    if len(seeds) != members:
        raise InputError(f"{members} members need {members} seeds, got {len(seeds)}",
                         code="BAD_TRAIN_CONFIG")
    variables = []
    for k, s in enumerate(seeds):
        for attempt in range(1 + collapse_retries):
            seed = s + COLLAPSE_SEED_STEP * attempt
            if log:
                log(f"member {k + 1}/{members} (seed {seed})")
            hist: list = []
            sub = None
            if checkpoint_dir is not None:
                sub = Path(checkpoint_dir) / (f"member{k}" + (f"_retry{attempt}" if attempt else ""))
            start = None
            if init is not None:
                from agatax.ensemble import member as ensemble_member

                start = jax.device_get(ensemble_member(init, k % init.members))
            extra = {}  # only what is asked for, so that train_member's plain signature still serves
            if start is not None:
                extra["init_variables"] = start
            if on_step is not None:
                extra["on_step"] = partial(on_step, k)
            if attempt < collapse_retries and val_data is not None:
                extra["give_up_at"] = max(2 * config.eval_every, math.ceil(COLLAPSE_GIVE_UP * config.steps))
            member = train_member(train_data, val_data, config, model_config, seed=seed, checkpoint_dir=sub,
                                  log=log, history=hist, **extra)
            if not _never_found_calcium(hist) or attempt == collapse_retries:
                break
            if log:  # a network that never found any calcium in validation has collapsed to "no calcium"
                log(f"member {k + 1}/{members}: validation Dice under {COLLAPSE_DICE:g} (collapsed); trained again")
        variables.append(member)
        if histories is not None:
            histories.append(hist)
    return stack_members(variables, model_config)

"""From an HU volume to the calcium mask, the vote map and the scores.

Before the device, ``agatax.localise_chest`` finds the lungs and the chest region between them on the host
(NumPy, ~0.1-0.3 s). The array path then runs as ONE jitted function on the device: pre-process -> five
networks -> vote -> back to the original grid -> HU threshold and chest region -> each object above the
threshold kept or dropped whole by its members' mean vote, the strongly voted parts of dropped ones kept ->
(Agatston score and volume in JAX). Where the
chest region is a small part of the grid (chest CT), the networks run on its box only (:func:`network_crop`).
Compiled functions are cached per (volume shape, grid, crop size, config, strategy); spacing, thresholds
and the crop's place are traced, so exams of one shape share a compilation.
:func:`run_pipeline` then adds the exact host lesion table (``agatax.compute_scores``).

Where the score is computed (``score_on`` of :func:`segment_and_score`): "device" puts
``agatax.scoring.scores_jax`` inside the one jit (best on GPU: no host round trip); "host" stops the jit at
the votes and scores with ``agatax.compute_scores`` (best on CPU, where JAX's connected-component labelling
takes ~1.7 s per exam against ~0.1-0.2 s on the host); "auto" picks host on CPU, device elsewhere. On CPU the
object vote's labelling is done on the host too, unless the scores are computed in the jit.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agatax.ensemble import Ensemble, ensemble_votes, object_majority, resolve_strategy
from agatax.errors import InputError
from agatax.orientation import Reorientation, canonical_orientation, restore_chest
from agatax.preprocess import AIR_HU, WINDOW_HU, _preprocess_kernel, _restore_kernel, grid_shape, network_grid_mm
from agatax.volume import Volume

__all__ = ["segment", "segment_and_score", "run_pipeline", "resolve_score_on", "PipelineResult", "SCORE_ON",
           "exclude_metal", "METAL_HU", "exclude_in_air", "AIR_SHARE", "exclude_noise_level", "NOISE_SNR", "dense_note", "DENSE_HU",
           "beside_metal_note", "BESIDE_METAL_MM", "DENSE_VOTE", "left_out_objects",
           "LEFT_OUT_MIN_MM3", "LEFT_OUT_MIN_PEAK_HU", "MIN_REGION_SECTION_CM2",
           "CHECKED_FIELD_MM", "SCAN_END_MM", "SCAN_END_NEAR_MM", "scan_end_note", "scan_cut_note"]

SCORE_ON = ("auto", "device", "host")
METAL_HU = 2000.0  # HU at 120 kVp: above any coronary calcium, below saturated metal (3071)
AIR_SHARE = 0.65  # an object this much surrounded by air (in its own slices) lies in the lung, not on a coronary
AERATED_HU = -400.0  # aerated lung (-950 to -700 HU) and air read below this; fat (-150 to -50 HU) never
NOISE_SNR = 5.0  # an object must stand this many noise SDs above its surroundings (the Rose criterion)
_RING_MM = (1.0, 3.0)  # the ring around an object where its surroundings are read (in-plane, mm)
DENSE_VOTE = 0.4  # objects peaking at 800-1500 HU kept at a mean vote of 2 of 5 (object_majority; None: off)
#: a second look with the HU capped here (None: off): dense calcium shown as a faint one (``segment``)
DENSE_LOOK = None
BESIDE_METAL_MM = 10.0  # streaks beside metal reach 130 HU this far (a warning when the category rests on them)
#: a chest region whose widest axial section is smaller cannot hold an adult heart (the smallest: ~10 x 7.5 cm,
#: ~60 cm^2, and the region's 8 mm margin around it) and is refused (REGION_TOO_SMALL); synthetic patients:
#: 132-244 cm^2, one lung airless before the lungs were mirrored for it: 38-86 cm^2
MIN_REGION_SECTION_CM2 = 80.0
#: the refusals for want of a chest region: ``localise=False`` scores such an exam (bone included)
NO_REGION_REFUSALS = ("REGION_TOO_SMALL", "NO_LUNGS", "NO_REGION")
#: fields of view narrower than this (mm) were not checked against the chest region (it kept all coronary
#: calcium on synthetic cardiac fields of 150 and 160 mm and the generator's 170-240 mm): a warning
CHECKED_FIELD_MM = 150.0
#: the networks' calcium outside the chest region, within SCAN_END_NEAR_MM of it and this close to the scan's
#: first or last slice, is warned (``scan_end_note``): synthetic scans cut 0-6 mm under their lowest
#: calcification lost it there 3-6 mm outside the region; ordinary exams had no such object
SCAN_END_MM = 20.0
SCAN_END_NEAR_MM = 10.0
DENSE_REACH_MM = 30.0  # a scored part of a dense object is looked for this far (a stent is 10-25 mm long)
DENSE_HU = 1500.0  # scored objects this dense may be stents (1500-2600 HU) as much as calcium: a warning


def _arrays(volume, spacing) -> tuple[Any, tuple[float, float, float]]:
    """(hu, spacing) from a Volume, a (hu, spacing) pair, or hu plus spacing=."""
    if isinstance(volume, Volume):
        if spacing is not None:
            raise InputError("spacing= is taken from the Volume; do not pass it too", code="BAD_ARGUMENT")
        return volume.hu, volume.spacing
    if spacing is None and isinstance(volume, tuple) and len(volume) == 2:
        volume, spacing = volume
    if spacing is None:
        raise InputError(
            "an HU array needs its spacing", code="BAD_ARGUMENT", hint="pass a Volume, (hu, spacing) or spacing=(dz, dy, dx)"
        )
    hu = volume if isinstance(volume, jax.Array) else np.asarray(volume, dtype=np.float32)
    if hu.ndim != 3:
        raise InputError(f"volume must have rank 3 (z, y, x); got shape {hu.shape}", code="BAD_RANK")
    if isinstance(hu, np.ndarray) and not np.all(np.isfinite(hu)):
        raise InputError("volume holds NaN or infinite HU values", code="NON_FINITE", hint="replace them (e.g. with -1000 HU)")
    spacing = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing must be three positive mm values (dz, dy, dx); got {spacing}", code="BAD_SPACING")
    return hu, spacing


def _on_device(hu) -> jax.Array:
    """The HU array on the default device; on CPU a C-contiguous, 64-byte aligned float32 NumPy array is
    shared, not copied (``agatax.io`` allocates exams that way), which matters for 1024 x 1024 x 700 exams."""
    if isinstance(hu, jax.Array):
        return hu
    return jax.device_put(np.ascontiguousarray(hu, dtype=np.float32))


#: The networks run on the chest region's box on the network grid, widened by this many cells (of the
#: grid: 3 mm, or the slice increment for 2-3.5 mm slices) of context on every side, its size rounded
#: up to a multiple of ``CROP_BUCKET`` cells (one compilation serves many exams); where that crop holds more
#: than ``CROP_MAX_SHARE`` of the grid the whole grid is run.
CROP_MARGIN_CELLS = 6
CROP_BUCKET = 16
CROP_MAX_SHARE = 0.75


def network_crop(box, spacing, target: float, grid: tuple[int, int, int], multiple: int):
    """Where on the network grid the networks need to run: (start, size) cells per axis, or None for all.

    ``box``: the chest region's bounding box (slices) on the canonical exam, ``spacing`` canonical mm,
    ``target`` the grid's cell (mm), ``grid`` its shape. The crop covers the box's cells plus
    ``CROP_MARGIN_CELLS`` on each side, starts on a multiple of ``multiple`` (the networks' pooling), and its
    size is a multiple of ``CROP_BUCKET`` (or the grid's); cells outside the box lie outside the region,
    where no calcium is kept, so only the context of the cells near the crop's edge changes.
    """
    if box is None:
        return None
    start, size = [], []
    step = max(CROP_BUCKET, multiple)
    for b, d, n in zip(box, spacing, grid):
        lo = max(math.floor(b.start * d / target) - CROP_MARGIN_CELLS, 0)
        hi = min(math.ceil(b.stop * d / target) + CROP_MARGIN_CELLS, n)
        lo -= lo % multiple
        m = min(-(-(hi - lo) // step) * step, n)
        lo = min(lo, n - m)
        start.append(lo)
        size.append(m)
    if math.prod(size) > CROP_MAX_SHARE * math.prod(grid):
        return None
    return tuple(start), tuple(size)


@partial(jax.jit, static_argnames=("grid", "strategy", "score", "min_area_mm2", "connectivity", "orient", "crop_size",
                                   "objects", "dense_vote", "dense_look"))
def _pipeline_kernel(ensemble, hu, spacing, target, threshold_hu, min_pixels, region, crop_start=None, smooth_mm=None,
                     *, grid, strategy, score, min_area_mm2, connectivity, orient, crop_size=None, objects=True,
                     dense_vote=None, dense_look=None):
    """``hu`` and ``region`` in the stored layout, ``spacing`` canonical; ``orient``: the Reorientation,
    applied before the networks and undone after them, so that outputs are on the stored grid.
    ``crop_start`` (int32 (3,), canonical cells) and ``crop_size`` (static): the networks run on that part of
    the grid only; the cells outside it get no votes. ``objects``: the mask by ``object_majority`` here (JAX
    labelling); False returns the candidates instead (``"candidates"``), for the host to do it (``score``
    needs it here). ``smooth_mm``: the input smoothing's sigma (``agatax.preprocess``; None: none).
    ``dense_look`` (HU): the networks also see the exam with its HU capped there, and each cell takes the
    larger of the two votes."""
    hu = hu.astype(jnp.float32)
    hu_c = orient.apply(hu, xp=jnp)

    def network_votes(h):
        x = _preprocess_kernel(h, spacing, target, threshold_hu, smooth_mm, out_shape=grid, window=WINDOW_HU,
                               **ensemble.config.input_options)
        if crop_size is None:
            return ensemble_votes(ensemble, x[None, ..., None], strategy=strategy)[1]
        part = jax.lax.dynamic_slice(x, tuple(crop_start), crop_size)
        _, part_votes = ensemble_votes(ensemble, part[None, ..., None], strategy=strategy)
        return jax.lax.dynamic_update_slice(jnp.zeros((1,) + tuple(grid), part_votes.dtype), part_votes,
                                            (0,) + tuple(crop_start))

    votes = network_votes(hu_c)
    if dense_look is not None:
        votes = jnp.maximum(votes, network_votes(jnp.minimum(hu_c, jnp.float32(dense_look))))
    votes = _restore_kernel(votes[0].astype(jnp.uint8), spacing, target, shape=hu_c.shape)  # 1 byte a voxel
    votes = orient.undo(votes, xp=jnp)
    keep = hu >= threshold_hu
    extra = {}
    if region is not None:  # chest localisation: no coronary calcium outside the mediastinum
        # what a majority of the members marks outside it, for the scan's-end note (``scan_end_note``)
        extra["outside"] = keep & ~region & (votes.astype(jnp.int32) * 2 > ensemble.members)
        keep = keep & region
    votes = jnp.where(keep, votes, 0)
    if not objects:
        return {"candidates": keep, "votes": votes, **extra}
    mask = object_majority(votes, keep, ensemble.members, hu=hu, dense_vote=dense_vote)
    out = {"mask": mask, "votes": votes, **extra}
    if score:
        from agatax.scoring import scores_jax

        stored_spacing = jnp.stack([spacing[i] for i in orient.stored_order])
        out["scores"] = scores_jax(hu, mask, stored_spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
                                   connectivity=connectivity, threshold_hu=threshold_hu)
    return out


def _run(ensemble, volume, spacing, *, strategy, target_mm, threshold_hu, score, localise, min_pixels=3,
         min_area_mm2=None, connectivity=8, bucket=True, allow_phantom=False, assume_non_contrast=False,
         dense_vote=None, adapt_noise=True, allow_noisy=False, allow_sharp_kernel=False, dense_look=None):
    if not isinstance(ensemble, Ensemble):
        raise InputError(f"expected an agatax Ensemble; got {type(ensemble).__name__}", code="BAD_ARGUMENT")
    resolve_strategy(strategy)  # a bad argument is named before anything in the exam is
    if isinstance(volume, Volume) and not allow_sharp_kernel:  # a bone or lung kernel: refused (SHARP_KERNEL)
        from agatax.quality import check_kernel

        meta = volume.metadata or {}
        check_kernel(meta.get("kernel"), meta.get("manufacturer"))
    # arrays given without a Volume are taken as canonical
    how = (canonical_orientation(volume.affine, source=volume.source) if isinstance(volume, Volume)
           else Reorientation((0, 1, 2), (False, False, False)))
    hu, spacing = _arrays(volume, spacing)
    spacing_c = tuple(spacing[o] for o in how.order)
    chest = box_c = None
    if localise:
        from agatax.localise import MIN_LUNGS_CM3, localise_chest

        found = localise_chest(how.apply(np.asarray(hu)), spacing_c)
        box_c = found.box  # canonical; None where no region was found
        chest = restore_chest(found, how, hu.shape)
        if chest.phantom_like and not allow_phantom:
            raise InputError(
                f"the exam looks like a phantom, not a patient: its cross-section repeats along z "
                f"({100 * chest.z_change:.1f} % of the body changes over 30 mm; synthetic patients: 12 % or more). "
                "The networks find coronary calcium by a heart's anatomy and miss calcium inserts that lie outside "
                "it (on the QRM thorax phantom they miss most of its nine), so no score is given",
                code="PHANTOM",
                hint="allow_phantom=True (--allow-phantom) runs the networks anyway, with a warning; a phantom's "
                "inserts are scored exactly from a mask of them (--mask)")
        if chest.contrast_enhanced and not assume_non_contrast:
            from agatax.quality import coverage_note

            n, increment = _series_slices(np.shape(hu)[0], spacing[0],
                                          (volume.metadata or {}) if isinstance(volume, Volume) else {})
            short = (f"; the scan covers only {n * increment:.0f} mm along z, less than a heart needs: on so short a "
                     "scan the spine and sternum weigh more in the mediastinum, which then reads denser, and part of "
                     "the heart may lie outside the scan (check that the series is complete)"
                     if coverage_note(n, increment) else "")
            raise InputError(
                f"the exam looks contrast-enhanced (mediastinum at {chest.mediastinum_hu70:.0f} HU, 70th percentile; "
                "non-contrast scans: 50-90 HU): calcium scoring needs a non-contrast scan, and enhanced blood would "
                f"be scored as calcium{short}", code="CONTRAST_ENHANCED",
                hint="score the non-contrast calcium-scoring series of the study; if this one is non-contrast (a narrow "
                "mediastinum, mostly spine and sternum, can read this dense), assume_non_contrast=True "
                "(--assume-non-contrast) scores it with the chest region kept")
        if not found.found and not chest.phantom_like:  # no region: whatever the networks mark would count
            way_out = ("score the chest's calcium-scoring series; localise=False (--no-localise) scores this one "
                       "without the chest region, bone included: look at the report pictures")
            if found.lung_cm3 < MIN_LUNGS_CM3:
                raise InputError(
                    f"no lungs found in the exam ({found.lung_cm3:.0f} cm^3 of lung-like tissue; a chest holds "
                    f"{MIN_LUNGS_CM3:.0f} or more): it may not show a chest (a scan below or above the lungs, another "
                    "body part) or its lungs hold no air. Without the chest region between the lungs, whatever the "
                    "networks mark would be scored, bone and other arteries' calcium included, so no score is given",
                    code="NO_LUNGS", hint=way_out)
            raise InputError(
                f"lungs were found ({found.lung_cm3:.0f} cm^3) but no chest region between them (no mediastinum "
                "where the heart would lie). Without it, whatever the networks mark would be scored, bone and other "
                "arteries' calcium included, so no score is given", code="NO_REGION", hint=way_out)
        if found.found:
            section = float(found.region.sum(axis=(1, 2)).max()) * spacing_c[1] * spacing_c[2] / 100.0
            if section < MIN_REGION_SECTION_CM2:
                raise InputError(
                    f"the chest region found between the lungs is too small to hold a heart (its widest axial "
                    f"section {section:.0f} cm^2; an adult heart's with the region's margin: "
                    f"{MIN_REGION_SECTION_CM2:.0f} cm^2 or more), so coronary calcium could lie outside it and the "
                    f"score would be too low ({found.note})", code="REGION_TOO_SMALL",
                    hint="localise=False (--no-localise) scores the networks' calcium anywhere in the image, bone "
                    "included: look at the report pictures")
    from agatax.quality import check_noise, image_noise_hu, input_smoothing_mm

    hu_c = how.apply(hu, xp=jnp if isinstance(hu, jax.Array) else np)
    if adapt_noise:  # an exam noisier than the training is shown to the networks smoothed
        smoothing = input_smoothing_mm(hu_c, spacing_c, ensemble.config.trained_noise_hu)
    else:
        noise = image_noise_hu(hu_c, spacing_c)
        smoothing = (0.0, noise, noise)
    if not allow_noisy:  # far noisier than the training: refused (TOO_NOISY)
        check_noise(smoothing[1], ensemble.config.trained_noise_hu, slice_mm=spacing_c[0])
    shape_c = tuple(hu.shape[o] for o in how.order)
    grid = grid_shape(shape_c, spacing_c, target_mm=target_mm, multiple=ensemble.config.multiple)
    target = network_grid_mm(spacing_c[0]) if target_mm is None else float(target_mm)
    if ensemble.members > 255:
        raise InputError(f"{ensemble.members} members: votes are counted in one byte (at most 255)",
                         code="BAD_ARGUMENT")
    region = None if chest is None or not chest.found else chest.region
    run_hu, crop = hu, None
    if bucket and isinstance(hu, np.ndarray):
        run_hu, region, crop = _bucketed(hu, region, how, grid[0], spacing_c[0], target)
    cells = network_crop(box_c, spacing_c, target, grid, ensemble.config.multiple)
    # the object vote labels connected components: fast on the host on CPU, inside the jit elsewhere
    objects_here = score or jax.default_backend() != "cpu"
    out = _pipeline_kernel(
        ensemble,
        _on_device(run_hu),
        jnp.asarray(spacing_c, jnp.float32),
        jnp.float32(target),
        jnp.float32(threshold_hu),
        jnp.int32(min_pixels),
        None if region is None else jnp.asarray(region),
        None if cells is None else jnp.asarray(cells[0], jnp.int32),
        jnp.float32(smoothing[0]) if smoothing[0] else None,
        crop_size=None if cells is None else cells[1],
        grid=grid,
        strategy=resolve_strategy(strategy),
        score=score,
        min_area_mm2=None if min_area_mm2 is None else float(min_area_mm2),
        connectivity=int(connectivity),
        orient=how,
        objects=objects_here,
        dense_vote=None if dense_vote is None else float(dense_vote),
        dense_look=None if dense_look is None else float(dense_look),
    )
    if not objects_here:
        votes = np.asarray(out["votes"])
        candidates = np.asarray(out.pop("candidates"))
        out.update(mask=object_majority(votes, candidates, ensemble.members, hu=np.asarray(run_hu),
                                        dense_vote=dense_vote), votes=votes)
    if crop is not None:
        out = {k: v[crop] if k in ("mask", "votes", "outside") else v for k, v in out.items()}
    return {**out, "smoothing": smoothing}, hu, spacing, chest


BUCKET_MAX_BYTES = 1 << 30  # larger exams are not padded (the pad is a copy of the exam)


def _bucketed(hu: np.ndarray, region, how: Reorientation, grid_z: int, dz: float, target: float):
    """Pad the exam with air slices to the network grid's slice count, so that exams whose slice counts
    round up to the same grid share one compilation. Exact: with the network grid at the slice increment
    (``target == dz``) every original slice keeps its own grid cell and the added cells hold air, which the
    grid held there already (uncovered cells are air). Returns (padded hu, padded region, crop back to the
    exam) or the inputs and None where it does not apply."""
    axis = how.order[0]  # the stored axis that is canonical z
    extra = grid_z - hu.shape[axis]
    if extra <= 0 or abs(target - dz) > 1e-6 * dz or hu.nbytes > BUCKET_MAX_BYTES:
        return hu, region, None
    at_start = how.flip[0]  # canonical z grows towards the stored start: pad there
    pads = [(0, 0)] * 3
    pads[axis] = (extra, 0) if at_start else (0, extra)
    crop = [slice(None)] * 3
    crop[axis] = slice(extra, None) if at_start else slice(0, hu.shape[axis])
    hu = np.pad(hu, pads, constant_values=AIR_HU)
    region = None if region is None else np.pad(region, pads, constant_values=False)
    return hu, region, tuple(crop)


def segment(
    ensemble: Ensemble, volume, spacing=None, *, strategy: str = "auto", target_mm=None, threshold_hu: float = 130.0,
    localise: bool = True, allow_phantom: bool = False, assume_non_contrast: bool = False,
    dense_vote: float | None = DENSE_VOTE, adapt_noise: bool = True, allow_noisy: bool = False,
    allow_sharp_kernel: bool = False, dense_look: float | None = DENSE_LOOK,
) -> tuple[jax.Array, jax.Array]:
    """Calcium mask and vote counts on the original grid (the exam's stored layout).

    Args:
        ensemble: the voting networks.
        volume: a Volume, a (hu, spacing) pair, or an HU array (z, y, x) with ``spacing=(dz, dy, dx)`` mm.
        strategy: "auto", "vmap" or "sequential" (see agatax.ensemble).
        target_mm: isotropic network grid, mm (default ``agatax.preprocess.network_grid_mm``: the slice
            increment from 2 to 3.5 mm, else 3 mm).
        threshold_hu: calcium threshold (HU); also the pre-processing enhancement threshold.
        localise: discard calcium outside the chest region that ``agatax.localise_chest`` finds between the
            lungs (bone, arms, the image border). It also refuses exams without lungs (NO_LUNGS) or without a
            region between them (NO_REGION; a phantom allowed by ``allow_phantom`` is scored with nothing
            discarded), contrast-enhanced exams (CONTRAST_ENHANCED) and phantoms (PHANTOM).
        allow_phantom: segment an exam that looks like a phantom (``ChestRegion.phantom_like``) instead of
            refusing it.
        assume_non_contrast: segment an exam whose mediastinum looks contrast-enhanced
            (``ChestRegion.contrast_enhanced``) instead of refusing it, the chest region kept: for a
            non-contrast exam whose narrow mediastinum is mostly bone.
        dense_vote: objects peaking at 800-1500 HU (``agatax.ensemble.DENSE_VOTE_HU``) are also kept at a mean
            vote of this share of the members (``agatax.ensemble.object_majority``); None: one line for every
            object.
        adapt_noise: show an exam noisier than the networks' training (``UNetConfig.trained_noise_hu``) to
            them smoothed in-plane, its noise brought to 0.875 of the range's top (35 HU for 10-40;
            ``agatax.quality.input_smoothing_mm``); the candidates and the scores stay on the exam as it
            is. False: the exam as it is.
        allow_noisy: segment an exam whose noise is above ``agatax.quality.refuse_noise_hu`` (65 HU for the
            shipped networks) instead of refusing it (TOO_NOISY).
        allow_sharp_kernel: segment a Volume whose DICOM kernel is a bone or lung kernel instead of refusing
            it (SHARP_KERNEL: ``agatax.quality.check_kernel``; arrays carry no kernel and are not checked).
        dense_look: HU (e.g. 600): the networks also see the exam with every HU above this capped to it, and
            each voxel takes the larger vote of the two looks (twice the network time): dense calcium, which
            the networks may take for metal or bone, shown as a fainter one. None: one look.

    Returns:
        mask bool (z, y, x): the candidates (HU >= threshold_hu, inside the chest region) kept object by
            object: each 3D object (26-connected) whole where its mean vote is more than half the members
            (or reaches the dense line), and the parts of the others voted by a majority with a mean vote >= members - 1
            (``agatax.ensemble.object_majority``);
        votes uint8 (z, y, x): members voting for calcium (0 where HU < threshold_hu or outside the region).
    """
    out, _, _, _ = _run(ensemble, volume, spacing, strategy=strategy, target_mm=target_mm, threshold_hu=threshold_hu,
                        score=False, localise=localise, allow_phantom=allow_phantom,
                        assume_non_contrast=assume_non_contrast, dense_vote=dense_vote, adapt_noise=adapt_noise,
                        allow_noisy=allow_noisy, allow_sharp_kernel=allow_sharp_kernel, dense_look=dense_look)
    return out["mask"], out["votes"]


def resolve_score_on(score_on: str) -> str:
    """"auto" -> "host" on CPU, "device" on GPU/TPU; "device"/"host" checked and passed through."""
    if score_on not in SCORE_ON:
        raise InputError(f"score_on must be one of {SCORE_ON}; got {score_on!r}", code="BAD_ARGUMENT")
    if score_on == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return score_on


def segment_and_score(
    ensemble: Ensemble,
    volume,
    spacing=None,
    *,
    strategy: str = "auto",
    score_on: str = "auto",
    target_mm=None,
    threshold_hu: float = 130.0,
    min_pixels: int = 3,
    min_area_mm2: float | None = None,
    connectivity: int = 8,
    localise: bool = True,
    allow_phantom: bool = False,
    assume_non_contrast: bool = False,
    dense_vote: float | None = DENSE_VOTE,
    adapt_noise: bool = True,
    allow_noisy: bool = False,
    allow_sharp_kernel: bool = False,
    dense_look: float | None = DENSE_LOOK,
) -> dict[str, jax.Array]:
    """Mask, votes and scores: {"mask", "votes", "scores": {"agatston", "volume_mm3", "lesions"}}.

    ``score_on`` "device": the whole array path in one jit, scores from ``agatax.scoring.scores_jax``
    (float32 on the device). "host": the jit ends at the mask and votes, scores from
    ``agatax.compute_scores`` (float64 on the host, returned as float32 scalars). "auto" (default): host
    on CPU, device elsewhere (see the module docstring). Other arguments as :func:`segment`, plus the
    scoring conventions.
    """
    where = resolve_score_on(score_on)
    out, hu, spacing, _ = _run(
        ensemble, volume, spacing, strategy=strategy, target_mm=target_mm, threshold_hu=threshold_hu,
        score=where == "device", localise=localise, min_pixels=min_pixels, min_area_mm2=min_area_mm2, connectivity=connectivity,
        allow_phantom=allow_phantom, assume_non_contrast=assume_non_contrast, dense_vote=dense_vote,
        adapt_noise=adapt_noise, allow_noisy=allow_noisy, allow_sharp_kernel=allow_sharp_kernel,
        dense_look=dense_look,
    )
    out = {k: v for k, v in out.items() if k != "smoothing"}
    if where == "host":
        from agatax.scoring import compute_scores

        scores = compute_scores(
            np.asarray(hu), np.asarray(out["mask"]), spacing, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
            connectivity=connectivity, threshold_hu=threshold_hu,
        )
        out = {**out, "scores": {
            "agatston": jnp.float32(scores.agatston),
            "volume_mm3": jnp.float32(scores.volume_mm3),
            "lesions": jnp.float32(len(scores.lesions)),
        }}
    return out


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What the pipeline found in one exam.

    Attributes:
        mask: bool (z, y, x) calcium voxels (objects >= threshold kept whole by their mean vote, and the
            strongly voted parts of the others: ``agatax.ensemble.object_majority``).
        votes: uint8 (z, y, x) members voting for calcium (0 where HU < threshold).
        scores: agatax Scores (host, float64, with the lesion table).
        spacing: (dz, dy, dx) mm used.
        chest: the ``ChestRegion`` used to discard calcium outside the chest (None with ``localise=False``).
        volume: the Volume scored (None when arrays were given), on whose grid the mask lies.
        notes: what the pipeline left out and why (metal), noise above the networks' training range and a
            slice thickness outside the 2.5-3.5 mm of the Agatston reconstruction, for the report's warnings.
        noise_hu: the exam's noise SD in soft tissue, HU (``agatax.quality.image_noise_hu``; None where
            there is no flat soft tissue to measure it in).
        category_range: ``agatax.uncertainty.CategoryRange``: the score and category by the same object rule
            with every network's vote one lower and one higher (``uncertain`` when the categories differ; a
            note then says so); None for ensembles of one or two networks.
        dropped: bool (z, y, x) the voxels the networks marked that the metal, in-air and noise-level rules
            left out, and those outside the chest region at the scan's ends (``scan_end_note``), all named in
            ``notes``; None when there are none.
        input_smoothing_mm: sigma (mm) of the in-plane Gaussian the networks saw the exam through (the noise
            adaptation, ``agatax.quality.input_smoothing_mm``); 0: none.
    """

    mask: np.ndarray
    votes: np.ndarray
    scores: Any
    spacing: tuple[float, float, float]
    chest: Any = None
    volume: Any = None
    notes: tuple[str, ...] = ()
    noise_hu: float | None = None
    category_range: Any = None
    dropped: np.ndarray | None = None
    input_smoothing_mm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (scores, the vote histogram of calcium voxels, the chest region found, noise)."""
        counts = np.bincount(self.votes[self.votes > 0].ravel(), minlength=1)
        return {"scores": self.scores.to_dict(), "spacing": list(self.spacing), "vote_histogram": counts.tolist(),
                "chest": None if self.chest is None else self.chest.to_dict(), "noise_hu": self.noise_hu,
                "input_smoothing_mm": self.input_smoothing_mm}


def run_pipeline(
    ensemble: Ensemble,
    volume,
    spacing=None,
    *,
    strategy: str = "auto",
    target_mm=None,
    calibration: float | None = None,
    min_pixels: int = 3,
    min_area_mm2: float | None = None,
    connectivity: int = 8,
    threshold_hu: float = 130.0,
    localise: bool = True,
    metal_hu: float | None = METAL_HU,
    air_share: float | None = AIR_SHARE,
    noise_snr: float | None = NOISE_SNR,
    allow_phantom: bool = False,
    assume_non_contrast: bool = False,
    dense_vote: float | None = DENSE_VOTE,
    adapt_noise: bool = True,
    allow_noisy: bool = False,
    allow_sharp_kernel: bool = False,
    dense_look: float | None = DENSE_LOOK,
) -> PipelineResult:
    """Segment an exam and score it on the host with the exact lesion table (``agatax.compute_scores``).

    Arguments as :func:`segment`, plus the scoring conventions of ``agatax.compute_scores``
    (``calibration`` in mg / (HU mm^3) for the mass score). ``result.chest`` holds the chest region used.
    ``allow_phantom``: score an exam that looks like a phantom (else PHANTOM is raised), with a note.
    ``assume_non_contrast``: score an exam whose mediastinum looks contrast-enhanced (else CONTRAST_ENHANCED
    is raised), with a note. ``metal_hu``: objects the networks mark that reach this HU are metal and left out (``exclude_metal``;
    None keeps them). ``air_share``: objects at least this much surrounded by air are in the lung and left out
    (``exclude_in_air``; None keeps them). ``noise_snr``: objects standing less than this many noise SDs (the
    noise near each object) above their surroundings are image noise and left out (``exclude_noise_level``;
    None keeps them); ``result.dropped`` holds what these rules left out, ``result.notes`` says what and why, and warns when the exam's noise
    (``result.noise_hu``) is above the noise the networks were trained on (``UNetConfig.trained_noise_hu``)
    or its slice thickness (a
    ``Volume``'s ``slice_thickness``, else the increment) is outside 2.5-3.5 mm (the Agatston score: 3 mm).
    ``adapt_noise``: as :func:`segment`; a note says when the networks saw the exam smoothed
    (``result.input_smoothing_mm``). ``allow_noisy``: score an exam far noisier than the training (else
    TOO_NOISY is raised: ``agatax.quality.check_noise``), with the noise warning. ``allow_sharp_kernel``: score
    a Volume reconstructed with a bone or lung kernel (else SHARP_KERNEL is raised: ``agatax.quality.check_kernel``);
    a kernel sharper than calcium scoring's is warned (``agatax.quality.kernel_note``). ``dense_look``: as
    :func:`segment`.
    """
    out, hu, spacing, chest = _run(ensemble, volume, spacing, strategy=strategy, target_mm=target_mm,
                                   threshold_hu=threshold_hu, score=False, localise=localise,
                                   allow_phantom=allow_phantom, assume_non_contrast=assume_non_contrast,
                                   dense_vote=dense_vote, adapt_noise=adapt_noise, allow_noisy=allow_noisy,
                                   allow_sharp_kernel=allow_sharp_kernel, dense_look=dense_look)
    from agatax.scoring import compute_scores

    hu = np.asarray(hu)  # the host copy the metal rule, the noise and the scores share
    mask, votes = np.asarray(out["mask"]), np.asarray(out["votes"])
    marked = mask  # the networks' calcium before the object rules (the rules return copies)
    notes = ()
    if metal_hu is not None:
        mask, votes, notes = exclude_metal(hu, mask, votes, spacing, metal_hu=metal_hu)
    if air_share is not None:
        mask, votes, in_air = exclude_in_air(hu, mask, votes, spacing, air_share=air_share)
        notes = tuple(notes) + in_air
    from agatax.quality import coverage_note, kernel_note, noise_note, smoothing_note, thickness_note, too_noisy_note

    noise = out["smoothing"][1]  # measured once, on the canonical axial slices
    if noise_snr is not None:
        mask, votes, specks = exclude_noise_level(hu, mask, votes, spacing, noise, snr=noise_snr)
        notes = tuple(notes) + specks
    thickness = volume.slice_thickness if isinstance(volume, Volume) else None
    meta = (volume.metadata or {}) if isinstance(volume, Volume) else {}
    notes = (tuple(notes) + kernel_note(meta.get("kernel"), meta.get("manufacturer"))
             + noise_note(noise, ensemble.config.trained_noise_hu)
             + too_noisy_note(noise, ensemble.config.trained_noise_hu) + smoothing_note(*out["smoothing"])
             + thickness_note(thickness, spacing[0]) + coverage_note(*_series_slices(hu.shape[0], spacing[0], meta)))
    if chest is not None and chest.contrast_enhanced:  # only here when assumed non-contrast
        notes += (f"contrast: the mediastinum reads {chest.mediastinum_hu70:.0f} HU (70th percentile; non-contrast "
                  "scans 50-90 HU) and the exam was scored as non-contrast on request: if it is enhanced, enhanced "
                  "blood may be scored as calcium",)
    if chest is not None and chest.phantom_like:
        notes += (f"phantom: the cross-section repeats along z ({100 * chest.z_change:.1f} % of the body changes "
                  "over 30 mm): the networks look for calcium in a heart's anatomy and miss inserts outside it; "
                  "this score may be far too low",)
    field_mm = min(hu.shape[1] * spacing[1], hu.shape[2] * spacing[2])
    if chest is not None and chest.found and field_mm < CHECKED_FIELD_MM:
        notes += (f"small field: the image is {field_mm:.0f} mm across, narrower than the {CHECKED_FIELD_MM:.0f} mm the "
                  "chest region was checked down to; calcium near the field's edge may lie outside the region: "
                  "compare with --no-localise (localise=False)",)
    at_end = None
    if chest is not None and chest.found and "outside" in out:
        end_notes, at_end = scan_end_note(hu, np.asarray(out["outside"]), chest.region, spacing, min_voxels=min_pixels)
        notes += end_notes
    conventions = dict(calibration=calibration, min_pixels=min_pixels, min_area_mm2=min_area_mm2,
                       connectivity=connectivity, threshold_hu=threshold_hu)
    scores = compute_scores(hu, mask, spacing, **conventions)
    notes += dense_note(hu, mask, spacing, scores, metal_hu=metal_hu, **conventions)
    notes += scan_cut_note(hu, mask, spacing, scores, **conventions)
    if metal_hu is not None:
        notes += beside_metal_note(hu, mask, spacing, scores, metal_hu=metal_hu, **conventions)
    from agatax.uncertainty import VOTE_MARGIN, category_range

    doubt = None
    if ensemble.members > 2 * VOTE_MARGIN:  # one or two networks: no majority to be within a vote of
        region = chest.region if chest is not None and chest.found else None
        doubt = category_range(hu, mask, votes, region, spacing, ensemble.members, scores=scores,
                               dense_hu=DENSE_HU, dense_vote=dense_vote, **conventions)
        notes += doubt.note()
    return PipelineResult(mask=mask, votes=votes, scores=scores, spacing=spacing, chest=chest,
                          volume=volume if isinstance(volume, Volume) else None, notes=notes, noise_hu=noise,
                          category_range=doubt, dropped=_dropped(marked, mask, at_end),
                          input_smoothing_mm=float(out["smoothing"][0]))


def _series_slices(n: int, increment_mm: float, metadata: dict) -> tuple[int, float]:
    """(slices, increment mm) of the series as read: a thin-slice series scored on slabs (``agatax.thick_slabs``)
    counts its thin slices, the end slices the slabs leave out included."""
    thin = metadata.get("thin_slices") or {}
    if "slices" in thin:
        return int(thin["slices"]), float(thin["increment_mm"])
    return n, float(increment_mm)


def scan_end_note(hu: np.ndarray, outside: np.ndarray, region: np.ndarray, spacing, *, end_mm: float = SCAN_END_MM,
                  near_mm: float = SCAN_END_NEAR_MM, min_voxels: int = 3) -> tuple[tuple[str, ...], np.ndarray | None]:
    """A warning when the networks marked calcium just outside the chest region at the scan's ends.

    Where a scan ends inside the heart (a tight calcium-scoring scan), the hull of the lungs narrows toward
    that end and can pass through the heart: calcium there lies outside the region and is not scored.
    Args: hu (z, y, x) HU; outside bool (z, y, x): voxels >= the threshold that a majority of the members
    marks outside the region; region bool (z, y, x); spacing (dz, dy, dx) mm, z the slice axis. Counted:
    26-connected objects of ``outside`` of at least ``min_voxels`` voxels that reach within ``near_mm`` of
    the region and lie within ``end_mm`` of the first or last slice. Returns (() or one note, bool (z, y, x)
    of those objects or None).
    """
    from scipy import ndimage

    n = outside.shape[0]
    k = min(n, int(np.ceil(end_mm / spacing[0] - 1e-6)))
    at_end = np.zeros(n, bool)
    at_end[:k] = at_end[n - k:] = True
    cand = outside & at_end[:, None, None]
    if not cand.any():
        return (), None
    # the region within near_mm of the candidates: a box around them is enough
    pad = [int(np.ceil(near_mm / s)) + 1 for s in spacing]
    idx = np.nonzero(cand)
    lo = [max(0, int(i.min()) - p) for i, p in zip(idx, pad)]
    hi = [min(d, int(i.max()) + 1 + p) for i, p, d in zip(idx, pad, cand.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    if not region[box].any():
        return (), None
    near = ndimage.distance_transform_edt(~region[box], sampling=spacing) <= near_mm
    lab, count = ndimage.label(cand[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=count + 1)
    hit = np.unique(lab[near & (lab > 0)])
    hit = hit[sizes[hit] >= min_voxels]
    if not hit.size:
        return (), None
    found = np.isin(lab, hit)
    whole = np.zeros(outside.shape, bool)
    whole[box] = found
    peak = float(np.asarray(hu)[box][found].max())
    zs = np.nonzero(found.any(axis=(1, 2)))[0] + lo[0]
    runs = np.split(zs, np.nonzero(np.diff(zs) > 1)[0] + 1)  # the slices, as runs of neighbours
    where = ("slice " if zs.size == 1 else "slices ") + ", ".join(
        f"{r[0]}" if r.size == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return (f"scan's end: the networks marked {int(found.sum())} calcium voxels ({hit.size} "
            f"object{'s' if hit.size > 1 else ''}, {where}, peak {peak:.0f} HU) just outside the chest region, within "
            f"{end_mm:.0f} mm of the scan's first or last slice, and they are not scored: a scan that ends inside the "
            "heart narrows the region there; compare with --no-localise (localise=False)",), whole


def _dropped(before: np.ndarray, after: np.ndarray, at_end: np.ndarray | None = None) -> np.ndarray | None:
    """bool (z, y, x) voxels of ``before`` not in ``after`` (what the object rules left out), with ``at_end``
    (the networks' calcium outside the region at the scan's ends), None if none."""
    gone = None if before is after else np.asarray(before, bool) & ~np.asarray(after, bool)
    if at_end is not None:
        gone = at_end if gone is None else gone | at_end
    return gone if gone is not None and gone.any() else None


def _objects(hu: np.ndarray, mask: np.ndarray):
    """The mask's 3D objects (26-connected) inside its bounding box: (box, labels on the box, peak HU (n,))."""
    from scipy import ndimage

    zs = np.flatnonzero(mask.any(axis=(1, 2)))  # the bounding box by projections: no index list of the volume
    slab = mask[zs[0]:zs[-1] + 1]
    ys, xs = np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))
    box = (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
    lab, n = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    on = lab > 0
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, lab[on] - 1, np.asarray(hu[box][on], np.float64))
    return box, lab, peaks


def _category_rests_on(hu, mask, spacing, scores, box, lab, which, **conventions):
    """(the Scores without the objects ``which`` (labels on ``box``), their slices as text) when the category
    without them differs from ``scores.category``, else None (also when ``which`` is empty)."""
    from scipy import ndimage

    from agatax.scoring import compute_scores

    if len(which) == 0:
        return None
    without = mask.copy()
    without[box][np.isin(lab, which)] = False
    rest = compute_scores(hu, without, spacing, **conventions)
    if rest.category == scores.category:
        return None
    objects = ndimage.find_objects(lab)
    spans = [objects[i - 1][0] for i in which]
    z0 = box[0].start
    slices = ", ".join(f"{z.start + z0}" if z.stop - z.start == 1 else f"{z.start + z0}-{z.stop - 1 + z0}"
                       for z in spans)
    return rest, slices


def _image_object_peaks(hu, box, lab, own, spacing, threshold_hu: float, reach_mm: float,
                        dense_hu: float) -> np.ndarray:
    """Per scored object (labels 1..n of ``lab`` on ``box``, own peaks ``own`` as ``_objects`` gives them):
    the peak HU of the image's 3D objects >= ``threshold_hu`` (26-connected) it is part of, shape (n,). The
    image objects are looked for within ``reach_mm`` of each scored object's own bounding box (one reaching
    further is cut there: its peak may read low, never high), and only for objects under ``dense_hu`` with a
    voxel of ``dense_hu`` or more that near (else the peak is its own)."""
    from scipy import ndimage

    joined = np.array(own, np.float64)
    reach = [int(np.ceil(reach_mm / float(s))) for s in spacing]
    for i, part in enumerate(ndimage.find_objects(lab)):
        if part is None or own[i] >= dense_hu:
            continue
        at = tuple(slice(b.start + p.start, b.start + p.stop) for b, p in zip(box, part))  # on the exam's grid
        near = tuple(slice(max(a.start - r, 0), min(a.stop + r, n)) for a, r, n in zip(at, reach, hu.shape))
        image = np.asarray(hu[near], np.float64)
        if image.max() < dense_hu:
            continue
        comp, _ = ndimage.label(image >= threshold_hu, structure=np.ones((3, 3, 3), bool))
        inner = tuple(slice(a.start - o.start, a.stop - o.start) for a, o in zip(at, near))
        touched = np.unique(comp[inner][lab[part] == i + 1])
        touched = touched[touched > 0]
        if touched.size:
            joined[i] = max(own[i], float(image[np.isin(comp, touched)].max()))
    return joined


def dense_note(hu: np.ndarray, mask: np.ndarray, spacing, scores, *, metal_hu: float | None = METAL_HU,
               dense_hu: float = DENSE_HU, reach_mm: float = DENSE_REACH_MM, **conventions) -> tuple[str, ...]:
    """A warning when the risk category rests on scored objects denser than nearly all coronary calcium.

    Scored 3D objects (26-connected) that peak at ``dense_hu`` or more, or are part of an object of the image
    (>= the scoring threshold, 26-connected, looked for within ``reach_mm`` of the scored ones) that does,
    read like coronary stents as much as like calcium: a network may mark only a stent's end or its blooming,
    or the part of a metal object under ``metal_hu``. Scored objects reaching ``metal_hu`` themselves are left
    out here (``exclude_metal`` drops them). When the exam's category without them differs from
    ``scores.category``, one note names them, their share of the Agatston score and the category without them;
    else nothing (the number is kept either way). ``conventions``: the scoring conventions of
    ``agatax.compute_scores`` used for ``scores``.
    """
    if not mask.any():
        return ()
    box, lab, own = _objects(hu, mask)
    threshold = conventions.get("threshold_hu")
    peaks = _image_object_peaks(hu, box, lab, own, spacing, 130.0 if threshold is None else float(threshold),
                                reach_mm, dense_hu)
    top = np.inf if metal_hu is None else metal_hu
    dense = np.flatnonzero((peaks >= dense_hu) & (own < top)) + 1
    resting = _category_rests_on(hu, mask, spacing, scores, box, lab, dense, **conventions)
    if resting is None:
        return ()
    rest, slices = resting
    share = scores.agatston - rest.agatston
    return (f"dense: {len(dense)} scored object(s) peaking at {dense_hu:g} HU or more, themselves or the object "
            f"they are part of (slices {slices}; peak {float(peaks[dense - 1].max()):.0f} HU) carry {share:.1f} of "
            f"the Agatston score {scores.agatston:.1f}: denser than nearly all coronary calcium, as dense as a "
            f"coronary stent or cortical bone. Without them the category is {rest.category}, not {scores.category}: "
            "look at those slices; if it is a stent, the score is not interpretable",)


def scan_cut_note(hu: np.ndarray, mask: np.ndarray, spacing, scores, **conventions) -> tuple[str, ...]:
    """A warning when scored calcium lies in the scan's first or last slice.

    A calcification the scan's end cuts may go on beyond it (a tight scan's last slice through the distal RCA
    or the PDA, a series missing its last files), so its share of the score is a lower bound. Scored 3D
    objects (26-connected, z the slice axis) with a voxel in slice 0 or the last slice are named in one note
    with their share of the Agatston score; else nothing (the number is kept either way). ``spacing`` (dz, dy,
    dx) mm; ``conventions``: the scoring conventions of ``agatax.compute_scores`` used for ``scores``.
    """
    from scipy import ndimage

    from agatax.scoring import compute_scores

    hu, mask = np.asarray(hu), np.asarray(mask)
    ends = sorted({0, mask.shape[0] - 1})
    if not mask[ends].any():
        return ()
    box, lab, _ = _objects(hu, mask)
    z0, z1 = box[0].start, box[0].stop
    at = {k: np.unique(lab[k - z0][lab[k - z0] > 0]) for k in ends if z0 <= k < z1}
    # each object's own score, on its bounding box: every 2D lesion lies inside one 3D object, so the
    # Agatston score is their sum; only objects that carry part of it are named (a speck under the minimum
    # area or the threshold is not)
    spans = ndimage.find_objects(lab)
    hu_box = hu[box]
    share_of = {int(i): compute_scores(hu_box[spans[i - 1]], lab[spans[i - 1]] == i, spacing, **conventions).agatston
                for i in np.unique(np.concatenate(list(at.values())))}
    carrying = {k: [int(i) for i in v if share_of[int(i)] > 0.0] for k, v in at.items()}
    cut = sorted({i for v in carrying.values() for i in v})
    if not cut:
        return ()
    share = sum(share_of[i] for i in cut)
    where = " and ".join(("first" if k == 0 else "last") + f" slice ({k})" for k, v in carrying.items() if v)
    return (f"cut by the scan: {len(cut)} scored object(s) reach the scan's {where} and carry "
            f"{share:.1f} of the Agatston score {scores.agatston:.1f}: calcium the scan's end cuts may go on "
            "beyond it, so the score may be too low. A calcium-scoring scan covers the heart from above the "
            "coronary ostia to below its lowest part: check that the series is complete",)


def beside_metal_note(hu: np.ndarray, mask: np.ndarray, spacing, scores, *, metal_hu: float = METAL_HU,
                      within_mm: float = BESIDE_METAL_MM, **conventions) -> tuple[str, ...]:
    """A warning when the risk category rests on scored objects lying beside metal.

    Metal (voxels >= ``metal_hu``: wires, clips, leads, stents) throws streaks and blooming that reach 130
    HU several mm away, and the networks can mark them as calcium. Scored 3D objects (26-connected) with a
    voxel within ``within_mm`` (3D, mm) of a metal voxel are named in one note when the exam's category
    without them differs from ``scores.category``; else nothing (the number is kept either way).
    ``conventions``: the scoring conventions of ``agatax.compute_scores`` used for ``scores``.
    """
    from scipy import ndimage

    if not mask.any():
        return ()
    box, lab, _ = _objects(hu, mask)
    reach = [int(np.ceil(within_mm / float(s))) + 1 for s in spacing]
    near_box = tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, reach, hu.shape))
    metal = np.asarray(hu[near_box]) >= metal_hu
    if not metal.any():
        return ()
    distance = ndimage.distance_transform_edt(~metal, sampling=[float(s) for s in spacing])
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, near_box))
    on = lab > 0
    closest = np.full(int(lab.max()), np.inf)
    np.minimum.at(closest, lab[on] - 1, distance[inner][on])
    near = np.flatnonzero(closest <= within_mm) + 1
    resting = _category_rests_on(hu, mask, spacing, scores, box, lab, near, **conventions)
    if resting is None:
        return ()
    rest, slices = resting
    return (f"beside metal: {len(near)} scored object(s) within {within_mm:g} mm of metal (>= {metal_hu:g} HU; "
            f"slices {slices}) carry {scores.agatston - rest.agatston:.1f} of the Agatston score "
            f"{scores.agatston:.1f}. Streaks and blooming beside metal can read as calcium; without them the "
            f"category is {rest.category}, not {scores.category}: look at those slices",)


LEFT_OUT_MIN_MM3 = 5.0  # smaller objects >= 130 HU are mostly image noise (several hundred per exam)
LEFT_OUT_MIN_PEAK_HU = 250.0  # fainter ones too: noise in soft tissue rarely peaks this high over 5 mm^3


def left_out_objects(hu: np.ndarray, mask: np.ndarray, region: np.ndarray, spacing, *,
                     threshold_hu: float = 130.0, min_volume_mm3: float = LEFT_OUT_MIN_MM3,
                     min_peak_hu: float = LEFT_OUT_MIN_PEAK_HU, metal_hu: float | None = METAL_HU):
    """Calcified objects inside the chest region that the pipeline did not score: what a reader checks
    (aortic wall, valve and annulus calcium; coronary calcium the networks missed).

    Args:
        hu: float (z, y, x) HU; mask: bool (z, y, x) scored calcium; region: bool (z, y, x) where coronary
            calcium can lie (``ChestRegion.region``); spacing: (dz, dy, dx) mm.
        threshold_hu: calcium threshold; min_volume_mm3, min_peak_hu: smaller or fainter objects are left
            out of the list (image noise); metal_hu: objects reaching it are metal (named by the metal note).

    Returns:
        (bool (z, y, x) the listed objects' voxels, list of dicts sorted by volume, largest first:
        ``slices`` [first, last], ``peak_slice`` (the slice of its brightest voxel), ``voxels``,
        ``volume_mm3``, ``peak_hu``). An object is 26-connected voxels >= ``threshold_hu`` inside ``region``
        and outside ``mask``.
    """
    from scipy import ndimage

    hu, mask, region = np.asarray(hu), np.asarray(mask, bool), np.asarray(region, bool)
    if hu.shape != mask.shape or hu.shape != region.shape:
        raise InputError(f"hu {hu.shape}, mask {mask.shape} and region {region.shape} differ", code="SHAPE_MISMATCH")
    out = np.zeros(hu.shape, bool)
    cand = (hu >= threshold_hu) & region & ~mask
    spans = [np.flatnonzero(cand.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not spans[0].size:
        return out, []
    box = tuple(slice(int(x[0]), int(x[-1]) + 1) for x in spans)
    lab, n = ndimage.label(cand[box], structure=np.ones((3, 3, 3), bool))
    # per object, from its voxels only (a few thousand; scipy's per-label reductions scan the whole box)
    flat = np.flatnonzero(lab)
    labels = lab.ravel()[flat]
    values = hu[box][np.unravel_index(flat, lab.shape)]
    order = np.lexsort((values, labels))  # by object, then HU: each object's brightest voxel is its last
    counts = np.bincount(labels, minlength=n + 1)[1:]
    ends = np.cumsum(counts) - 1
    peaks = values[order[ends]]
    z = flat[order] // (lab.shape[1] * lab.shape[2])  # by object
    starts = ends - counts + 1
    z_first, z_last = np.minimum.reduceat(z, starts), np.maximum.reduceat(z, starts)
    peak_z = flat[order[ends]] // (lab.shape[1] * lab.shape[2])
    voxel_mm3 = float(np.prod(spacing))
    keep = (counts * voxel_mm3 >= min_volume_mm3) & (peaks >= min_peak_hu)
    if metal_hu is not None:
        keep &= peaks < metal_hu
    z0 = box[0].start
    objects = [{"slices": [int(z_first[k]) + z0, int(z_last[k]) + z0], "peak_slice": int(peak_z[k]) + z0,
                "voxels": int(counts[k]), "volume_mm3": round(float(counts[k]) * voxel_mm3, 1),
                "peak_hu": float(peaks[k])} for k in np.flatnonzero(keep)]
    sub = np.zeros(lab.shape, bool)
    sub.ravel()[flat[keep[labels - 1]]] = True
    out[box] = sub
    return out, sorted(objects, key=lambda o: (-o["voxels"], o["peak_slice"]))


def _rings(hu: np.ndarray, mask: np.ndarray, spacing):
    """The mask's 3D objects (26-connected) and, for each, the HU of the voxels 1-3 mm around it (in-plane, in
    the slices it spans; inside the image). Returns (box, labels on the box, peak HU (n,), [ring HU (m_k,)],
    [each object's slices within the image])."""
    from scipy import ndimage

    box, lab, peaks = _objects(hu, mask)
    lo_mm, hi_mm = _RING_MM
    sampling = [float(s) for s in spacing[1:]]
    pad = [int(np.ceil(hi_mm / s)) + 1 for s in sampling]
    rings, where = [], []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        zs = slice(box[0].start + sl[0].start, box[0].start + sl[0].stop)
        (y0, y1), (x0, x1) = ((b.start + s.start, b.start + s.stop) for b, s in zip(box[1:], sl[1:]))
        Y0, X0 = max(y0 - pad[0], 0), max(x0 - pad[1], 0)
        Y1, X1 = min(y1 + pad[0], hu.shape[1]), min(x1 + pad[1], hu.shape[2])
        obj = np.zeros((zs.stop - zs.start, Y1 - Y0, X1 - X0), bool)
        obj[:, y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = lab[sl] == k
        ring = np.zeros_like(obj)
        for i in range(obj.shape[0]):
            if obj[i].any():
                d = ndimage.distance_transform_edt(~obj[i], sampling=sampling)
                ring[i] = (d > lo_mm) & (d <= hi_mm)
        rings.append(np.asarray(hu[zs, Y0:Y1, X0:X1][ring]))
        where.append((zs, slice(y0, y1), slice(x0, x1)))
    return box, lab, peaks, rings, where


def air_shares(hu: np.ndarray, mask: np.ndarray, spacing):
    """For each 3D object (26-connected) of ``mask``: the share of the voxels 1-3 mm around it (in-plane, in
    the slices it spans; inside the image) that read below -400 HU. Returns (box, labels on the box, shares
    (n,) float in [0, 1]) with ``box`` and labels as the mask's objects (``_objects``)."""
    box, lab, _, rings, _ = _rings(hu, mask, spacing)
    return box, lab, np.array([float(np.mean(r < AERATED_HU)) if r.size else 0.0 for r in rings])


def contrast_to_noise(hu: np.ndarray, mask: np.ndarray, spacing, noise_hu: float, *, local: bool = True):
    """For each 3D object (26-connected) of ``mask``: how many noise SDs its peak stands above the median of
    the voxels 1-3 mm around it, (peak - median) / SD. The SD is the noise near the object
    (``agatax.quality.local_noise_hu``: on the slices it spans, within 25 mm) where enough flat soft tissue
    lies there and ``local``, else ``noise_hu`` (the exam's). Returns (box, labels on the box, (n,), SD (n,))."""
    from agatax.quality import local_noise_hu

    box, lab, peaks, rings, where = _rings(hu, mask, spacing)
    around = np.array([float(np.median(r)) if r.size else -np.inf for r in rings])
    sd = np.full(len(rings), float(noise_hu))
    if local:
        for k, object_box in enumerate(where):
            here = local_noise_hu(hu, spacing, object_box)
            if here is not None and here > 0:  # 0: a noise-free image (hand-built)
                sd[k] = here
    return box, lab, (np.asarray(peaks, float) - around) / sd, sd


def exclude_noise_level(hu: np.ndarray, mask: np.ndarray, votes: np.ndarray, spacing, noise_hu: float | None, *,
                        snr: float = NOISE_SNR, local: bool = True):
    """Drop from the mask every 3D object (26-connected) whose peak stands less than ``snr`` noise SDs above
    its surroundings (``contrast_to_noise``: the noise near the object when ``local``, else ``noise_hu``, the
    exam's noise SD, ``agatax.quality.image_noise_hu``): an object image noise alone makes (the Rose
    criterion: about 5 SDs are needed to tell a feature from noise). On synthetic exams at matrix 512 the
    false specks the networks scored stood 2.0-7.4 SDs above their surroundings (most under 5), true calcium
    4.4 and more (most above 6). Returns (mask, votes, notes) as ``exclude_metal``; nothing is done where the
    exam's noise is unknown (``noise_hu`` None: no soft tissue, e.g. a phantom).
    """
    if not mask.any() or noise_hu is None or not noise_hu > 0:
        return mask, votes, ()
    box, lab, cnr, sd = contrast_to_noise(hu, mask, spacing, noise_hu, local=local)
    drop = [k for k, c in enumerate(cnr, start=1) if c < snr]
    if not drop:
        return mask, votes, ()
    mask, votes, where = _drop_objects(mask, votes, spacing, box, lab, drop)
    lo, hi = (float(f(sd[np.asarray(drop) - 1])) for f in (np.min, np.max))
    level = f"{lo:.0f} HU" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} HU"
    return mask, votes, (
        f"noise level: {len(drop)} object(s) standing less than {snr:g} noise SDs ({level} near them) above their "
        f"surroundings ({where}) left out of the score: image noise makes such specks; look at those slices. "
        "agatax score --keep-specks (run_pipeline(..., noise_snr=None)) keeps them",)


def _drop_objects(mask, votes, spacing, box, lab, drop) -> tuple[np.ndarray, np.ndarray, str]:
    """Copies of ``mask`` and ``votes`` without the objects ``drop`` (labels on ``box``), and where they were:
    "slices A, B; V mm^3" (each object's centre slice, their total volume)."""
    from scipy import ndimage

    gone = np.isin(lab, drop)
    mask, votes = mask.copy(), votes.copy()
    mask[box][gone] = False
    votes[box][gone] = 0
    centres = ndimage.center_of_mass(gone, lab, drop)
    slices = sorted({int(round(c[0])) + box[0].start for c in centres})
    volume_mm3 = float(np.count_nonzero(gone)) * float(np.prod(spacing))
    return mask, votes, f"slices {', '.join(map(str, slices))}; {volume_mm3:.0f} mm^3"


def exclude_in_air(hu: np.ndarray, mask: np.ndarray, votes: np.ndarray, spacing, *, air_share: float = AIR_SHARE):
    """Drop from the mask every 3D object (26-connected) that lies in air: where at least ``air_share`` of
    the voxels 1-3 mm around it (in-plane, in the slices it spans) read below -400 HU. Such an object is a
    calcified granuloma or a clip in the lung (or something outside the body), never coronary calcium: the
    coronary arteries run in epicardial fat on the heart's surface, so at most the side of a plaque that
    faces the lung is air (synthetic coronary plaques at matrix 512: at most 38 %; synthetic granulomas in
    the lung: 76-100 %). Returns (mask, votes, notes) as
    ``exclude_metal``.
    """
    if not mask.any():
        return mask, votes, ()
    box, lab, shares = air_shares(hu, mask, spacing)
    drop = [k for k, share in enumerate(shares, start=1) if share >= air_share]
    if not drop:
        return mask, votes, ()
    mask, votes, where = _drop_objects(mask, votes, spacing, box, lab, drop)
    return mask, votes, (
        f"in air: {len(drop)} object(s) surrounded by air ({where}) left out of the score: calcified granulomas "
        "or clips in the lung, not coronary calcium (coronary arteries run in the fat on the heart's surface). "
        "agatax score --keep-in-air (run_pipeline(..., air_share=None)) keeps them",)


def exclude_metal(hu: np.ndarray, mask: np.ndarray, votes: np.ndarray, spacing, *, metal_hu: float = METAL_HU):
    """Drop from the mask every 3D object (26-connected) that reaches ``metal_hu``: sternal wires, surgical
    clips, pacemaker leads, stents. Coronary calcium stays far below it (peaks of 130-1500 HU at 120 kVp);
    metal saturates near 3071 HU. Returns (mask, votes, notes): one note per exam naming what was left out.

    Work is confined to the mask's bounding box, so it stays small on any exam size.
    """
    if not mask.any() or float(hu[mask].max()) < metal_hu:
        return mask, votes, ()
    box, lab, peaks = _objects(hu, mask)
    metal = np.flatnonzero(peaks >= metal_hu) + 1
    mask, votes, where = _drop_objects(mask, votes, spacing, box, lab, metal)
    return mask, votes, (
        f"metal: {len(metal)} object(s) reaching {metal_hu:g} HU or more ({where}; peak {float(np.max(peaks)):.0f} "
        "HU) left out of the score: wires, clips, leads "
        "or stents, not calcium. If any is a coronary stent, the Agatston score of that exam is not "
        "interpretable",)

"""Training: Dice loss, patch sampling, loss falls, exact resume, checkpoint errors, coarse targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agatax.errors import CheckpointError, InputError
from agatax.model import UNet, UNetConfig
from agatax.train import (
    TrainConfig,
    TrainingSet,
    _pack,
    prepare_pairs,
    _sample_batch,
    evaluate_dice,
    _make_predict,
    init_state,
    segmentation_loss,
    train_ensemble,
    train_member,
)

TINY = UNetConfig.tiny()
CFG = TrainConfig(
    learning_rate=2e-2, steps=6, batch_size=2, patch_zyx=(8, 16, 16), eval_every=3, log_every=0, seed=3,
)


def _toy_set(n: int, seed: int, shape=(10, 18, 20)) -> TrainingSet:
    """Dim noisy background with a few bright 2x2x2 blobs; the target is exactly the blobs."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        img = 0.25 + 0.03 * rng.standard_normal(shape)
        tgt = np.zeros(shape, bool)
        for _ in range(3):
            z, y, x = (rng.integers(0, s - 2) for s in shape)
            tgt[z:z + 2, y:y + 2, x:x + 2] = True
        img[tgt] = 0.9
        images.append(np.clip(img, 0, 1).astype(np.float32))
        targets.append(tgt)
    return TrainingSet(images, targets)


# every training run below uses these same pairs, so the jitted step compiles once for the whole file
TRAIN = _toy_set(3, 7)


def test_dice_loss_matches_hand_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 4, 4, 1))
    target = (rng.random((2, 4, 4, 4, 1)) > 0.7).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    smooth = 1.0
    pooled = 1.0 - (np.sum(p * target) + smooth) / (0.5 * p.sum() + 0.5 * target.sum() + smooth)
    per = [1.0 - (np.sum(p[i] * target[i]) + smooth) / (0.5 * p[i].sum() + 0.5 * target[i].sum() + smooth)
           for i in range(2)]
    got_pooled = segmentation_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32))
    got_per = segmentation_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32), pooled=False)
    np.testing.assert_allclose(float(got_pooled), pooled, rtol=1e-5)
    np.testing.assert_allclose(float(got_per), np.mean(per), rtol=1e-5)


def test_patches_are_crops_and_positive_patches_hold_calcium():
    data = _toy_set(3, 1)
    packed = _pack(data, (8, 16, 16))
    # replace the images by voxel ids so that a patch tells where it was cut from
    n, Z, Y, X = packed["images"].shape
    ids = np.arange(n * Z * Y * X, dtype=np.float32).reshape(n, Z, Y, X)
    packed = dict(packed, images=jnp.asarray(ids))
    x, y = _sample_batch(packed, jax.random.PRNGKey(0), patch=(8, 16, 16), batch=6, positive_fraction=1.0)
    x, y = np.asarray(x), np.asarray(y)
    targets = np.asarray(packed["targets"])
    for b in range(6):
        e, z0, y0, x0 = np.unravel_index(int(x[b, 0, 0, 0]), (n, Z, Y, X))
        np.testing.assert_array_equal(x[b], ids[e, z0:z0 + 8, y0:y0 + 16, x0:x0 + 16])
        np.testing.assert_array_equal(y[b], targets[e, z0:z0 + 8, y0:y0 + 16, x0:x0 + 16])
        assert y[b].sum() > 0  # centred (with jitter) on a calcified voxel


def test_pooled_validation_dice_matches_numpy():
    data = _toy_set(2, 2)
    packed = _pack(data, (1, 1, 1), 2)
    state = init_state(TINY, CFG, seed=0)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict = _make_predict(UNet(TINY))
    got = evaluate_dice(predict, variables, packed, threshold=0.5)
    inter = total = 0
    for i, tgt in enumerate(data.targets):  # the network's own probabilities, pooled by hand in numpy
        prob = np.asarray(predict(variables, packed["images"][i][None, ..., None].astype(jnp.float32)))
        p = prob[0, ..., 0] >= 0.5
        t = np.asarray(packed["targets"][i]) > 0
        inter += np.sum(p & t)
        total += p.sum() + t.sum()
    assert got == pytest.approx(2 * inter / total if total else 1.0, abs=1e-6)


@jax.jit
def _eval_loss(variables, x, y):
    return segmentation_loss(UNet(TINY).apply(variables, x, train=False), y)


def _loss_on(variables, data):
    x = jnp.asarray(np.stack(data.images))[..., None]
    y = jnp.asarray(np.stack(data.targets), jnp.float32)[..., None]
    return float(_eval_loss(variables, x, y))


def test_tiny_training_reduces_the_loss():
    train = TRAIN
    state = init_state(TINY, CFG, seed=0)
    before = _loss_on({"params": state.params, "batch_stats": state.batch_stats}, train)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 40, "eval_every": 40})
    variables = train_member(train, None, cfg, TINY, seed=0, log=None)
    after = _loss_on(variables, train)
    assert after < 0.6 * before, (before, after)


def test_resume_continues_exactly(tmp_path):
    train, val = TRAIN, _toy_set(2, 8)
    whole_hist: list = []
    whole = train_member(train, val, CFG, TINY, seed=1, log=None, history=whole_hist)
    half = TrainConfig(**{**CFG.__dict__, "steps": 3})
    train_member(train, val, half, TINY, seed=1, checkpoint_dir=tmp_path, log=None)
    resumed_hist: list = []
    resumed = train_member(train, val, CFG, TINY, seed=1, checkpoint_dir=tmp_path, log=None,
                           history=resumed_hist)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["loss"] for r in resumed_hist] == [r["loss"] for r in whole_hist]
    assert [r["step"] for r in resumed_hist] == [3, 6]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary file behind


def test_bad_checkpoints_raise_checkpoint_errors(tmp_path):
    train = TRAIN
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 1, "eval_every": 1})
    train_member(train, None, cfg, TINY, seed=0, checkpoint_dir=tmp_path, log=None)
    with pytest.raises(CheckpointError) as err:  # another seed must not resume this run
        train_member(train, None, cfg, TINY, seed=1, checkpoint_dir=tmp_path, log=None)
    assert err.value.code == "CHECKPOINT_MISMATCH"
    (tmp_path / "last.ckpt").write_bytes(b"\x93not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        train_member(train, None, cfg, TINY, seed=0, checkpoint_dir=tmp_path, log=None)
    assert err.value.code == "CORRUPT_CHECKPOINT"


def test_train_ensemble_stacks_members_with_different_seeds():
    train = TRAIN
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 2, "eval_every": 2})
    ens = train_ensemble(train, None, cfg, TINY, members=2, seeds=[0, 1], log=None)
    leaves = jax.tree.leaves(ens.variables["params"])
    assert all(leaf.shape[0] == 2 for leaf in leaves)
    assert any(not np.array_equal(np.asarray(leaf[0]), np.asarray(leaf[1])) for leaf in leaves)



def _with_negatives(data: TrainingSet, seed: int) -> TrainingSet:
    """The toy set plus hard negatives: bright 2x2x2 blobs that are not in the target."""
    rng = np.random.default_rng(seed)
    images, negatives = [], []
    for img, tgt in zip(data.images, data.targets):
        img, neg = img.copy(), np.zeros(tgt.shape, bool)
        z, y, x = (rng.integers(0, s - 2) for s in tgt.shape)
        neg[z:z + 2, y:y + 2, x:x + 2] = True
        neg &= ~tgt
        img[neg] = 0.8
        images.append(img)
        negatives.append(neg)
    return TrainingSet(images, data.targets, negatives=negatives)


def test_stratified_batches_pair_a_calcium_patch_with_a_hard_negative_patch():
    data = _with_negatives(_toy_set(3, 4, shape=(12, 40, 40)), 5)
    packed = _pack(data, (4, 8, 8))
    n, Z, Y, X = packed["images"].shape
    ids = np.arange(n * Z * Y * X, dtype=np.float32).reshape(n, Z, Y, X)
    packed = dict(packed, images=jnp.asarray(ids))
    negatives = np.zeros((n, Z, Y, X), bool)
    for i, neg in enumerate(data.negatives):
        negatives[i, :neg.shape[0], :neg.shape[1], :neg.shape[2]] = neg
    for k in range(8):
        x, y = _sample_batch(packed, jax.random.PRNGKey(k), patch=(4, 8, 8), batch=2, positive_fraction=0.5,
                             hard_negative_fraction=0.5)
        x, y = np.asarray(x), np.asarray(y)
        assert y[0].sum() > 0  # slot 0 is centred (with jitter) on calcium
        e, z0, y0, x0 = np.unravel_index(int(x[1, 0, 0, 0]), (n, Z, Y, X))
        assert negatives[e, z0:z0 + 4, y0:y0 + 8, x0:x0 + 8].any()  # slot 1 on a hard negative


def test_hard_negative_patches_fall_back_to_uniform_without_negatives():
    packed = _pack(_toy_set(2, 6), (8, 16, 16))
    assert not bool(packed["has_negative"])
    x, y = _sample_batch(packed, jax.random.PRNGKey(0), patch=(8, 16, 16), batch=3, positive_fraction=0.0,
                         hard_negative_fraction=1.0)
    assert x.shape == y.shape == (3, 8, 16, 16)


def test_fractions_are_checked():
    with pytest.raises(InputError) as err:
        TrainConfig(positive_fraction=0.7, hard_negative_fraction=0.5)
    assert err.value.code == "BAD_TRAIN_CONFIG"


def test_training_set_keeps_negatives_through_cache_add_and_subset(tmp_path):
    a = _with_negatives(_toy_set(2, 1), 2)
    b = _toy_set(1, 3)  # no negatives: joins as empty masks
    both = a + b
    assert len(both.negatives) == 3 and not both.negatives[2].any()
    both.save(tmp_path / "pairs.npz")
    back = TrainingSet.load(tmp_path / "pairs.npz")
    for got, want in zip(back.negatives, both.negatives):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.subset([1]).negatives[0], a.negatives[1])
    assert TrainingSet.load(_save(b, tmp_path / "plain.npz")).negatives == []


def _save(data, path):
    data.save(path)
    return path


def test_prepare_pairs_takes_negatives_to_the_coarse_grid():
    from agatax.volume import Volume

    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, (8, 32, 32)).astype(np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[3, 10, 10:12] = True
    hu[mask] = 500
    neg = np.zeros(hu.shape, bool)
    neg[5, 20, 21] = neg[6, 4, 30] = True
    neg[3, 11, 10] = True  # shares a coarse cell with the calcium: not a negative there
    hu[neg] = 300
    spacing = (3.0, 1.5, 1.5)  # coarse 3 mm: cell (z, y // 2, x // 2)
    data = prepare_pairs([(Volume(hu, spacing), mask, neg)])
    want_t = np.zeros(data.targets[0].shape, bool)
    want_n = np.zeros_like(want_t)
    for z, y, x in np.argwhere(mask):
        want_t[z, y // 2, x // 2] = True
    for z, y, x in np.argwhere(neg):
        want_n[z, y // 2, x // 2] = True
    want_n &= ~want_t
    np.testing.assert_array_equal(data.targets[0], want_t)
    np.testing.assert_array_equal(data.negatives[0], want_n)
    assert want_n.sum() == 2


def test_pairs_carry_their_enhancement_box_and_targets_ignore_it(tmp_path):
    """The image goes through the network's box; the target marks every cell holding a calcium voxel,
    box or not (a one-pixel speck averaged through a 1 mm box would fall under any image threshold)."""
    from agatax.preprocess import preprocess
    from agatax.volume import Volume

    hu = np.full((6, 40, 40), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[2, 20, 20] = True  # one 0.4 mm pixel
    hu[mask] = 600.0
    spacing = (3.0, 0.4, 0.4)
    boxed = prepare_pairs([(Volume(hu, spacing), mask)], cache=tmp_path / "p.npz", box_mm=1.0)
    assert boxed.box_mm == 1.0
    np.testing.assert_allclose(boxed.images[0], np.asarray(preprocess(hu, spacing, box_mm=1.0)), atol=1e-6)
    assert boxed.targets[0].sum() == 1 and boxed.targets[0][2, 2, 2]  # centre 20.5 x 0.4 mm: cell 2 of 3 mm
    raw = prepare_pairs([(Volume(hu, spacing), mask)], box_mm=0.0)
    np.testing.assert_array_equal(raw.targets[0], boxed.targets[0])
    assert not np.allclose(raw.images[0], boxed.images[0])
    # the cache remembers the box; asking for another is refused, not silently served or overwritten
    assert TrainingSet.load(tmp_path / "p.npz").box_mm == 1.0
    with pytest.raises(InputError) as err:
        prepare_pairs([(Volume(hu, spacing), mask)], cache=tmp_path / "p.npz", box_mm=0.0)
    assert err.value.code == "INPUT_MISMATCH"
    # networks are trained only on the input they will be given
    with pytest.raises(InputError) as err:
        train_member(raw, None, CFG, TINY, seed=0, log=None)  # TINY takes the default 1 mm box
    assert err.value.code == "INPUT_MISMATCH"
    with pytest.raises(InputError) as err:
        raw + boxed
    assert err.value.code == "INPUT_MISMATCH"


def test_a_validation_set_without_calcium_is_refused():
    """Its Dice is 0 whatever the network does: no best step to choose, and every network looks collapsed."""
    empty = TrainingSet([np.asarray(a) for a in TRAIN.images], [np.zeros(np.shape(t), bool) for t in TRAIN.targets])
    assert any(np.any(t) for t in TRAIN.targets)  # the training set itself has calcium
    with pytest.raises(InputError) as err:
        train_member(TRAIN, empty, CFG, TINY, seed=0, log=None)
    assert err.value.code == "NO_CALCIUM" and "validation" in err.value.message


def test_pairs_carry_their_dense_gain_and_training_keeps_its_range(tmp_path):
    """Pairs made with a dense gain remember it (cache and joins included), are refused by networks that
    take another input, and the augmentation clips them at their own top, not at 1."""
    import dataclasses

    from agatax.preprocess import preprocess
    from agatax.train import _augment, _pack
    from agatax.volume import Volume

    hu = np.full((6, 40, 40), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[2, 18:23, 18:23] = True
    hu[mask] = 1400.0
    spacing = (3.0, 0.4, 0.4)
    dense = prepare_pairs([(Volume(hu, spacing), mask)], cache=tmp_path / "d.npz", dense_gain=0.5)
    assert dense.dense_gain == 0.5 and TrainingSet.load(tmp_path / "d.npz").dense_gain == 0.5
    np.testing.assert_allclose(dense.images[0], np.asarray(preprocess(hu, spacing, dense_gain=0.5)), atol=1e-6)
    assert dense.images[0].max() > 1.0
    with pytest.raises(InputError) as err:
        prepare_pairs([(Volume(hu, spacing), mask)], cache=tmp_path / "d.npz")  # the cache's input differs
    assert err.value.code == "INPUT_MISMATCH"
    plain = prepare_pairs([(Volume(hu, spacing), mask)])
    assert plain.dense_gain == 0.0
    with pytest.raises(InputError) as err:
        plain + dense
    assert err.value.code == "INPUT_MISMATCH"
    with pytest.raises(InputError) as err:
        train_member(dense, None, CFG, TINY, seed=0, log=None)  # TINY takes the input clipped at 800 HU
    assert err.value.code == "INPUT_MISMATCH"
    top = float(_pack(dense, (8, 8, 8))["top"])
    assert top == pytest.approx(float(dense.images[0].max()), abs=1e-3)  # float16 storage
    assert float(_pack(plain, (8, 8, 8))["top"]) == 1.0
    x = jnp.full((1, 4, 4, 4), top, jnp.float32)
    out, _ = _augment(x, jnp.zeros_like(x), jax.random.PRNGKey(0), gain_std=0.0, shift_std=0.0, noise_std=0.0, top=top)
    np.testing.assert_allclose(np.asarray(out), top)  # not clipped back to 1
    cfg_dense = dataclasses.replace(TINY, input_dense_gain=0.5)
    train_member(dense, None, TrainConfig(**{**CFG.__dict__, "steps": 1, "eval_every": 1}), cfg_dense, seed=0, log=None)


def test_cosine_schedule_decays_and_ties_checkpoints_to_the_step_count(tmp_path):
    from agatax.train import _optimizer

    tx = _optimizer(1.0, 0.0, "cosine", 10)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    steps = []
    for _ in range(10):  # Adam's first update has size ~lr: read the schedule through it
        upd, state = tx.update({"w": jnp.ones(())}, state, params)
        steps.append(-float(upd["w"]))
    assert steps[0] == pytest.approx(1.0, rel=1e-3)
    assert steps[-1] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 9 / 10)), rel=1e-3)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 2, "eval_every": 2, "lr_schedule": "cosine"})
    train_member(TRAIN, None, cfg, TINY, seed=0, checkpoint_dir=tmp_path, log=None)
    with pytest.raises(CheckpointError) as err:  # another total changes the schedule: no silent resume
        train_member(TRAIN, None, TrainConfig(**{**cfg.__dict__, "steps": 4}), TINY, seed=0,
                     checkpoint_dir=tmp_path, log=None)
    assert err.value.code == "CHECKPOINT_MISMATCH"
    with pytest.raises(InputError):
        TrainConfig(lr_schedule="linear")


def test_synthetic_exams_bring_their_look_alike_calcium_as_negatives():
    from agatax.preprocess import restore_grid
    from agatax.synthetic import generate_exam

    exam = generate_exam(5, target_category="C", matrix=96, fov_mm=180.0)
    look_alike = exam.look_alike_mask
    assert look_alike.any() and not (look_alike & (exam.mask > 0)).any()
    assert not (look_alike & (exam.distractor_mask == 1)).any()  # plain bone is not a hard negative
    data = prepare_pairs([exam])
    neg = data.negatives[0]
    assert neg.any() and not (neg & data.targets[0]).any()
    # every look-alike voxel maps back into a negative cell unless that cell also holds calcium
    back_neg = np.asarray(restore_grid(jnp.asarray(neg), exam.volume.shape, exam.volume.spacing))
    back_tgt = np.asarray(restore_grid(jnp.asarray(data.targets[0]), exam.volume.shape, exam.volume.spacing))
    assert (back_neg | back_tgt)[look_alike].all()


def test_a_collapsed_member_is_trained_again_with_another_seed(monkeypatch):
    """A member whose validation Dice is 0 at every check is trained again (seed + 7919); the retry's
    variables and history are kept; a member that found calcium is not retried."""
    import agatax.train as train_mod

    calls, gave_up = [], []
    real = train_mod.train_member

    def fake(train, val, config, model_config, *, seed, checkpoint_dir=None, log=None, history=None, **extra):
        calls.append(seed)
        gave_up.append(extra.get("give_up_at"))
        dice = 0.03 if seed == 1 else 0.4  # under COLLAPSE_DICE: collapsed
        history.extend([{"step": 3, "loss": 1.0, "val_dice": dice}, {"step": 6, "loss": 1.0, "val_dice": dice}])
        cfg = TrainConfig(**{**config.__dict__, "steps": 1, "eval_every": 1})
        return real(train, None, cfg, model_config, seed=seed, log=None)

    monkeypatch.setattr(train_mod, "train_member", fake)
    hists: list = []
    logged: list = []
    ens = train_ensemble(TRAIN, TRAIN, CFG, TINY, members=2, seeds=[0, 1], log=logged.append, histories=hists)
    assert calls == [0, 1, 1 + train_mod.COLLAPSE_SEED_STEP]
    # every run but the last allowed may be abandoned early: at a quarter of the steps, at least two checks
    early = max(2 * CFG.eval_every, -(-CFG.steps // 4))
    assert gave_up == [early, early, early]
    assert [max(r["val_dice"] for r in h) for h in hists] == [0.4, 0.4]
    assert any("collapsed" in line for line in logged)
    assert jax.tree.leaves(ens.variables["params"])[0].shape[0] == 2
    # never more than collapse_retries extra runs: the last one is kept even if it collapsed too
    calls.clear()
    gave_up.clear()
    monkeypatch.setattr(train_mod, "COLLAPSE_SEED_STEP", 0)  # every retry collapses again
    train_ensemble(TRAIN, TRAIN, CFG, TINY, members=1, seeds=[1], log=None, collapse_retries=2)
    assert calls == [1, 1, 1]
    assert gave_up == [early, early, None]  # the last run is trained to the end


def test_a_member_still_at_dice_0_is_stopped_at_give_up_at_and_stays_stopped_on_resume(monkeypatch, tmp_path):
    """give_up_at: training stops at the first check at or after that step when every validation Dice so far
    is under COLLAPSE_DICE (a stray 0.04 too), or the last three are; a check above it among the last three
    keeps it going; a resumed collapsed run takes no further step."""
    import agatax.train as train_mod

    cfg = TrainConfig(**{**CFG.__dict__, "steps": 12, "eval_every": 2})
    assert train_mod.COLLAPSE_DICE == 0.05
    for scripted, want_steps in (([0.0] * 6, [2, 4, 6]), ([0.04, 0.0] + [0.0] * 4, [2, 4, 6]),
                                 ([0.3] + [0.0] * 5, [2, 4, 6, 8]),  # a blip, then three checks at 0
                                 ([0.0, 0.2, 0.0, 0.3, 0.0, 0.0], [2, 4, 6, 8, 10, 12])):
        dice = iter(scripted)
        monkeypatch.setattr(train_mod, "evaluate_dice", lambda *a, **k: next(dice))
        hist: list = []
        logged: list = []
        train_member(TRAIN, TRAIN, cfg, TINY, seed=0, log=logged.append, history=hist, give_up_at=5,
                     checkpoint_dir=tmp_path / f"{scripted[0]}-{len(want_steps)}")
        assert [r["step"] for r in hist] == want_steps
        assert any("collapsed, stopped" in line for line in logged) == (len(want_steps) < 6)
    steps_taken = []
    monkeypatch.setattr(train_mod, "evaluate_dice", lambda *a, **k: steps_taken.append(1) or 0.0)
    hist = []
    train_member(TRAIN, TRAIN, cfg, TINY, seed=0, log=None, history=hist, give_up_at=5,
                 checkpoint_dir=tmp_path / "0.0-3")
    assert steps_taken == [] and [r["step"] for r in hist] == [2, 4, 6]


def test_kernel_augmentation_filter_matches_scipy():
    from scipy import ndimage

    from agatax.train import _blur_inplane

    x = np.random.default_rng(0).random((2, 3, 9, 11)).astype(np.float32)
    want = ndimage.correlate1d(ndimage.correlate1d(x, [0.25, 0.5, 0.25], axis=2, mode="nearest"),
                               [0.25, 0.5, 0.25], axis=3, mode="nearest")
    np.testing.assert_allclose(np.asarray(_blur_inplane(jnp.asarray(x))), want, rtol=1e-6, atol=1e-6)


def test_border_cut_zeroes_image_and_target_beyond_one_line_and_keeps_the_centre():
    from agatax.train import _border_cut

    x = jnp.full((64, 4, 16, 16), 0.7)
    y = jnp.ones((64, 4, 16, 16))
    none_x, none_y = _border_cut(x, y, jax.random.key(0), 0.0)
    assert np.array_equal(np.asarray(none_x), np.asarray(x)) and np.array_equal(np.asarray(none_y), np.asarray(y))
    cx, cy = (np.asarray(a) for a in _border_cut(x, y, jax.random.key(1), 1.0))
    cut = cx == 0
    assert np.array_equal(cut, cy == 0)  # image and target cut together
    assert np.all(cut == cut[:, :1])  # the same line on every slice
    frac = cut[:, 0].mean(axis=(1, 2))
    assert frac.min() > 0.0 and frac.max() <= 0.3  # every patch cut, never past 25 % from the centre
    assert not cut[:, :, 6:10, 6:10].any()  # the centre is kept
    # the cut part is a half-plane: convex in every row and column
    for p in cut[:, 0]:
        for line in list(p) + list(p.T):
            idx = np.nonzero(line)[0]
            assert idx.size == 0 or idx.size == idx[-1] - idx[0] + 1


def test_end_cut_pads_past_one_slice_on_one_side_and_never_past_calcium():
    from agatax.train import _end_cut

    x = jnp.full((256, 32, 6, 6), 0.7)
    y = jnp.zeros((256, 32, 6, 6))
    none_x, none_y = _end_cut(x, y, jax.random.key(0), 0.0)
    assert np.array_equal(np.asarray(none_x), np.asarray(x)) and np.array_equal(np.asarray(none_y), np.asarray(y))
    cx = np.asarray(_end_cut(x, y, jax.random.key(1), 1.0)[0])
    cut = cx == 0
    assert np.all(cut == cut[:, :, :1, :1])  # whole slices
    slices = cut[:, :, 0, 0]
    n_cut = slices.sum(axis=1)
    assert n_cut.min() >= 2 and n_cut.max() <= 16  # never more than half the depth
    low = slices[:, 0]
    for s, k, from_low in zip(slices, n_cut, low):  # one run of slices from one end
        want = np.zeros(32, bool)
        if from_low:
            want[:k] = True
        else:
            want[32 - k:] = True
        assert np.array_equal(s, want)
    assert 0.35 < low.mean() < 0.65  # both ends
    assert n_cut.max() >= 15  # cuts reach the centre (calcium in a scan's last slice) ...
    assert np.percentile(n_cut, 25) < 9 and np.percentile(n_cut, 75) > 11  # ... spread, not one fixed cut
    half = np.asarray(_end_cut(x, y, jax.random.key(2), 0.5)[0] == 0)[:, :, 0, 0].any(axis=1)
    assert 0.35 < half.mean() < 0.65
    # calcium in slices 13 and 18 of every patch: the target is kept, no calcified slice is padded, and the
    # cuts that reach past it stop right beyond it (the calcium then lies in the last slice before the padding)
    yc = np.zeros((256, 32, 6, 6), np.float32)
    yc[:, 13, 2, 2] = yc[:, 18, 3, 3] = 1.0
    kx, ky = _end_cut(x, jnp.asarray(yc), jax.random.key(1), 1.0)
    assert np.array_equal(np.asarray(ky), yc)
    ks = (np.asarray(kx) == 0)[:, :, 0, 0]
    assert not ks[:, 13:19].any()
    assert ks[:, 19:].all(axis=1).any() and ks[:, :13].all(axis=1).any()  # cut right up to the calcium, both ends
    same = ~(slices[:, 13:19].any(axis=1))  # the cuts that stayed clear of the calcium are unchanged
    assert np.array_equal(ks[same], slices[same])


def test_per_object_sampling_draws_small_objects_as_often_as_large_ones():
    """A 3-voxel speck far from a 600-voxel plaque: voxel-uniform centring finds the speck in ~0.5 % of
    draws; with per_object=4 each object offers at most 4 voxels (checked against scipy's labelling), so
    the speck is drawn in about 3 of 7 draws."""
    from scipy import ndimage

    target = np.zeros((24, 48, 48), bool)
    target[2:8, 2:12, 2:12] = True  # 600 voxels
    target[20, 40, 40:43] = True  # 3 voxels
    image = np.where(target, 0.8, 0.1).astype(np.float32)
    data = TrainingSet([image], [target], ["toy"], [{}])
    labels, _ = ndimage.label(target, np.ones((3, 3, 3)))
    for per_object, plaque in ((0, 600), (4, 4)):
        coords = np.asarray(_pack(data, (8, 16, 16), per_object=per_object)["positives"])[:, 1:]
        assert target[tuple(coords.T)].all() and len(np.unique(coords, axis=0)) == len(coords)
        assert np.bincount(labels[tuple(coords.T)], minlength=3)[1:].tolist() == [plaque, 3]
    packed = _pack(data, (8, 16, 16), per_object=4)
    hits = draws = 0
    for k in range(40):
        x, y = _sample_batch(packed, jax.random.PRNGKey(k), patch=(8, 16, 16), batch=4, positive_fraction=1.0)
        y = np.asarray(y)
        for b in range(4):
            draws += 1
            hits += int(y[b].sum() == 3)  # the patch holds the speck (a plaque patch cannot reach it)
    assert 0.2 < hits / draws < 0.65  # ~3/7; voxel-uniform centring: ~0.005


def test_dense_objects_offer_more_patch_centres():
    """dense_per_object: a calcified object whose image reaches 1 (800 HU) anywhere offers that many voxels,
    the others per_object; a speck offers what it has; hard negatives keep per_object however dense."""
    from scipy import ndimage

    target = np.zeros((24, 48, 48), bool)
    target[2:8, 2:12, 2:12] = True  # 600 voxels, faint
    target[12:18, 30:40, 2:12] = True  # 600 voxels, one of them at the window's top
    target[20, 40, 40:43] = True  # 3 voxels, dense
    negative = np.zeros_like(target)
    negative[12:18, 2:12, 30:40] = True  # 600 voxels of dense look-alike
    image = np.where(target | negative, 0.8, 0.1).astype(np.float32)
    image[15, 35, 7] = 1.0
    image[20, 40, 41] = 1.0
    image[14, 5, 35] = 1.0
    data = TrainingSet([image], [target], ["toy"], [{}], [negative])
    labels, n = ndimage.label(target, np.ones((3, 3, 3)))
    order = [labels[4, 5, 5], labels[15, 35, 7], labels[20, 40, 40]]  # faint, dense, speck
    for dense, want in ((0, [4, 4, 3]), (12, [4, 12, 3])):
        packed = _pack(data, (8, 16, 16), per_object=4, dense_per_object=dense)
        coords = np.asarray(packed["positives"])[:, 1:]
        assert target[tuple(coords.T)].all() and len(np.unique(coords, axis=0)) == len(coords)
        assert np.bincount(labels[tuple(coords.T)], minlength=n + 1)[order].tolist() == want
        hard = np.asarray(packed["negatives"])[:, 1:]
        assert negative[tuple(hard.T)].all() and len(hard) == 4


def test_dense_hard_negatives_offer_more_patch_centres():
    """dense_hard_per_object: a hard-negative object reaching 1 (800 HU) offers that many voxels, a faint one
    per_object; calcium keeps its own counts."""
    from scipy import ndimage

    target = np.zeros((24, 48, 48), bool)
    target[2:8, 2:12, 2:12] = True  # 600 voxels of faint calcium
    negative = np.zeros_like(target)
    negative[12:18, 2:12, 30:40] = True  # 600 voxels, one at the window's top: dense look-alike
    negative[2:8, 30:40, 30:40] = True  # 600 voxels, faint look-alike
    negative[20, 40, 2:4] = True  # 2 voxels, dense
    image = np.where(target | negative, 0.8, 0.1).astype(np.float32)
    image[14, 5, 35] = 1.0
    image[20, 40, 3] = 1.0
    data = TrainingSet([image], [target], ["toy"], [{}], [negative])
    labels, n = ndimage.label(negative, np.ones((3, 3, 3)))
    order = [labels[14, 5, 35], labels[4, 35, 35], labels[20, 40, 2]]  # dense, faint, speck
    for dense_hard, want in ((0, [4, 4, 2]), (9, [9, 4, 2])):
        packed = _pack(data, (8, 16, 16), per_object=4, dense_per_object=12, dense_hard_per_object=dense_hard)
        hard = np.asarray(packed["negatives"])[:, 1:]
        assert negative[tuple(hard.T)].all() and len(np.unique(hard, axis=0)) == len(hard)
        assert np.bincount(labels[tuple(hard.T)], minlength=n + 1)[order].tolist() == want
        assert len(np.asarray(packed["positives"])) == 4


def test_dense_per_object_needs_per_object():
    with pytest.raises(InputError, match="dense_per_object"):
        TrainConfig(dense_per_object=8)
    with pytest.raises(InputError, match="dense_per_object"):
        TrainConfig(per_object=4, dense_per_object=-1)
    assert TrainConfig(per_object=4, dense_per_object=12).dense_per_object == 12
    with pytest.raises(InputError, match="dense_hard_per_object"):
        TrainConfig(dense_hard_per_object=8)
    with pytest.raises(InputError, match="dense_hard_per_object"):
        TrainConfig(per_object=4, dense_hard_per_object=2.5)
    assert TrainConfig(per_object=4, dense_hard_per_object=12).dense_hard_per_object == 12


def test_per_object_must_be_a_whole_number():
    with pytest.raises(InputError, match="per_object"):
        TrainConfig(per_object=-1)


# ---------------------------------------------------------------------------------------------------------
# geometric augmentation: rotation, scale and smooth displacement of the patches


def test_warp_without_change_is_the_plain_crop_and_a_quarter_turn_is_rot90():
    from agatax.train import _warp

    img = np.random.default_rng(0).random((20, 30, 30)).astype(np.float32)
    crop = img[2:10, 3:13, 4:14]
    same = _warp(img, jnp.array([2, 3, 4]), jnp.zeros(3), 1.0, None, patch=(8, 10, 10))
    np.testing.assert_allclose(np.asarray(same), crop, atol=1e-6)
    # +90 degrees about z: the voxel at in-plane offset (dy, dx) reads the image at (-dx, dy) from the centre
    turned = _warp(img, jnp.array([2, 3, 4]), jnp.array([np.pi / 2, 0.0, 0.0]), 1.0, None, patch=(8, 10, 10))
    np.testing.assert_allclose(np.asarray(turned), np.rot90(crop, -1, axes=(1, 2)), atol=1e-5)
    # +90 degrees about x turns the z-y plane (a cube, so the patch maps onto itself)
    cube = img[2:10, 3:11, 4:12]
    tilted = _warp(img, jnp.array([2, 3, 4]), jnp.array([0.0, 0.0, np.pi / 2]), 1.0, None, patch=(8, 8, 8))
    np.testing.assert_allclose(np.asarray(tilted), np.rot90(cube, -1, axes=(0, 1)), atol=1e-5)


def test_warp_scale_and_displacement_match_scipy_interpolation():
    from scipy import ndimage

    from agatax.train import _warp

    img = np.random.default_rng(1).random((16, 24, 24))
    patch, start, scale = (6, 8, 10), np.array([3, 5, 4]), 1.6
    disp = np.random.default_rng(2).uniform(-1.5, 1.5, (3, *patch))
    half = (np.array(patch) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(p) for p in patch], indexing="ij")).astype(float)
    coords = (grid - half[:, None, None, None]) / scale + disp + (start + half)[:, None, None, None]
    for order in (1, 0):
        want = ndimage.map_coordinates(img, coords, order=order, mode="constant", cval=0.0)
        got = _warp(img.astype(np.float32), jnp.asarray(start), jnp.zeros(3), scale,
                    jnp.asarray(disp, jnp.float32), patch=patch, order=order)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_warped_image_and_target_share_one_warp():
    from agatax.train import _warp_crop

    target = np.zeros((16, 32, 32), np.float32)
    target[6:10, 10:20, 12:15] = 1.0
    target[5:8, 20:23, 18:26] = 1.0
    target[8, 16, 8] = 1.0  # a one-voxel speck
    image = 0.9 * target
    for seed in range(12):
        x, y = _warp_crop(image, target, jnp.array([2, 6, 6]), jax.random.key(seed), patch=(12, 20, 20),
                          rotate_deg=30.0, scale_range=0.2, elastic_voxels=1.0)
        x, y = np.asarray(x), np.asarray(y)
        assert set(np.unique(y)) <= {0.0, 1.0} and y.sum() > 0
        # a target voxel's nearest source voxel is calcium, and its linear weight there is >= 1/8: the image
        # is bright wherever the target is (image and target read the same places)
        assert np.all(x[y == 1.0] >= 0.9 / 8 - 1e-6)
        # and where the image is all calcium, so is the target
        assert np.all(y[x >= 0.9 - 1e-6] == 1.0)


def test_one_voxel_specks_keep_their_target_through_the_warp():
    # a linearly interpolated target thresholded at 0.5 keeps a one-voxel speck in about a third of the draws
    # (the image still shows it, blurred): the networks would learn to leave specks out
    from agatax.train import _warp_crop

    speck = np.zeros((16, 32, 32), np.float32)
    speck[8, 16, 16] = 1.0
    kept = 0
    for seed in range(60):
        x, y = _warp_crop(speck, speck, jnp.array([2, 6, 6]), jax.random.key(seed), patch=(12, 20, 20),
                          rotate_deg=20.0, scale_range=0.15, elastic_voxels=1.0)
        assert np.asarray(x).max() > 0  # the speck's image is in every patch
        kept += bool(np.asarray(y).any())
    assert kept >= 0.7 * 60, kept


def test_geometric_patches_keep_their_centre_and_stay_within_the_limits():
    # a ramp along y: under rotation about z by a, scale s, the patch's centre row reads the ramp's centre and
    # the ramp's slope along the patch's y axis is cos(a) / s
    from agatax.train import _warp_crop

    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (12, 40, 40)) / 40.0
    patch = (1, 11, 11)
    for seed in range(20):
        x, _ = _warp_crop(ramp, np.zeros_like(ramp), jnp.array([5, 14, 14]), jax.random.key(seed), patch=patch,
                          rotate_deg=20.0, scale_range=0.1, elastic_voxels=0.0)
        x = np.asarray(x)[0] * 40.0
        assert abs(x[5, 5] - 19.0) < 1e-3  # the centre is the plain crop's
        slope = (x[10, 5] - x[0, 5]) / 10.0
        assert np.cos(np.deg2rad(20.0)) / 1.1 - 1e-3 <= slope <= 1.0 / 0.9 + 1e-3


def test_tilt_deg_turns_patches_about_y_and_x_alone():
    # a ramp along z: rotations about z leave it as it is; about y and x by (b, c) its slope along the patch's
    # z axis is cos(b) cos(c) (row 0 of R_z R_y R_x), so at most tilt_deg tilts it, and the centre is kept
    from agatax.train import _warp_crop

    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], (40, 24, 24)) / 40.0
    patch, low = (11, 1, 1), np.cos(np.deg2rad(20.0)) ** 2
    slopes = {}
    for rotate, tilt in ((20.0, 0.0), (0.0, 20.0)):
        for seed in range(16):
            x, _ = _warp_crop(ramp, np.zeros_like(ramp), jnp.array([14, 11, 11]), jax.random.key(seed),
                              patch=patch, rotate_deg=rotate, scale_range=0.0, elastic_voxels=0.0, tilt_deg=tilt)
            x = np.asarray(x)[:, 0, 0] * 40.0
            assert abs(x[5] - 19.0) < 1e-3
            slopes.setdefault(tilt, []).append((x[10] - x[0]) / 10.0)
    np.testing.assert_allclose(slopes[0.0], 1.0, atol=1e-5)  # a turn about z only
    assert all(low - 1e-4 <= v <= 1.0 + 1e-5 for v in slopes[20.0]) and min(slopes[20.0]) < 0.99
    assert TrainConfig(tilt_deg=15.0).geometric == (0.0, 0.0, 0.0, 15.0)
    assert TrainConfig(rotate_deg=12.0).geometric == (12.0, 0.0, 0.0, None)
    # unset, the limit about y and x is a third of rotate_deg, as before: the same patch as with it given
    for seed in range(4):
        a, b = (_warp_crop(ramp, ramp, jnp.array([14, 11, 11]), jax.random.key(seed), patch=(11, 5, 5),
                           rotate_deg=12.0, scale_range=0.0, elastic_voxels=0.0, tilt_deg=t) for t in (None, 4.0))
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert "tilt_deg" not in TrainConfig(rotate_deg=12.0).fingerprint_dict()
    assert TrainConfig(tilt_deg=15.0).fingerprint_dict()["tilt_deg"] == 15.0
    with pytest.raises(InputError, match="tilt_deg"):
        TrainConfig(tilt_deg=-1.0)


def test_training_with_geometric_augmentation_runs_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "rotate_deg": 15.0, "scale_range": 0.1, "elastic_voxels": 1.0})
    whole = train_member(TRAIN, None, cfg, TINY, seed=1, log=None)
    train_member(TRAIN, None, TrainConfig(**{**cfg.__dict__, "steps": 3}), TINY, seed=1, checkpoint_dir=tmp_path,
                 log=None)
    resumed = train_member(TRAIN, None, cfg, TINY, seed=1, checkpoint_dir=tmp_path, log=None)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    plain = train_member(TRAIN, None, CFG, TINY, seed=1, log=None)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(plain)))


def test_geometric_settings_are_checked_and_leave_old_fingerprints_alone():
    for bad in ({"rotate_deg": -1.0}, {"scale_range": 1.0}, {"elastic_voxels": -0.5}):
        with pytest.raises(InputError, match="rotate_deg"):
            TrainConfig(**bad)
    assert "rotate_deg" not in TrainConfig().fingerprint_dict()
    assert TrainConfig(rotate_deg=10.0).fingerprint_dict()["rotate_deg"] == 10.0


def test_a_run_resumes_whatever_noise_range_its_networks_are_labelled_with(tmp_path):
    """``UNetConfig.trained_noise_hu`` describes the data, not the training: a checkpoint written under one
    label resumes under another (the checkpoint identity of runs started before the field existed holds)."""
    import dataclasses

    half = TrainConfig(**{**CFG.__dict__, "steps": 3})
    train_member(TRAIN, None, half, TINY, seed=1, checkpoint_dir=tmp_path, log=None)
    logged: list = []
    train_member(TRAIN, None, CFG, dataclasses.replace(TINY, trained_noise_hu=(10.0, 55.0)), seed=1,
                 checkpoint_dir=tmp_path, log=logged.append)
    assert any(line.startswith("resumed from") and "step 3" in line for line in logged), logged

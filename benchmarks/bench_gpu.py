"""GPU speed under the protocol (benchmarks/protocol.py), against the issue's targets.

1. Five-member inference, network only: the paper's network (4 levels, 16 filters; five random members)
   on the 56 x 72 x 72 grid of a 56 x 512 x 512 exam at 3 x 0.4 x 0.4 mm; ``jax.vmap`` over the members
   vs one after another, each in float32 (precision "highest"), TF32 and bfloat16 compute; ms per exam
   and mask voxels differing from float32 (counted, not asserted). Target < 10 ms per exam.
2. HU volume on the device -> Agatston score in one jit (``segment_and_score(score_on="device")``, JAX's
   default precision) on a synthetic 56 x 512 x 512 exam: localisation off / on (on = host work, ~1-2 s
   per exam on a busy CPU), bf16 networks, the shipped trained ensemble. Target < 50 ms per exam.
3. B exams per call (network only), ms per exam.
4. The JAX labelling kernel (label_volume 26-conn., label_slices 8-conn.) on a 64 x 512 x 512 blob mask,
   ~1 % foreground, partition checked against scipy.ndimage.label first. Target >= 1e9 voxels/s.

Each variant is compiled (time printed) before the interleaved rounds; timed calls block until ready.

    python benchmarks/bench_gpu.py --out benchmarks/gpu_results.jsonl     # one H200, full size
    python benchmarks/bench_gpu.py --tiny --force                        # CPU smoke test
    [--rounds 7] [--sections 1,2,3,4] [--batch-precisions float32,bf16] [--cache-dir DIR] [--force]

``--force`` measures although the load is above the protocol's limit (figures flagged BUSY);
``--cache-dir`` keeps compiled executables for a rerun of some ``--sections`` on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from protocol import Session  # noqa: E402

TARGET_NETWORK_MS = 10.0  # five networks, per exam
TARGET_PIPELINE_MS = 50.0  # HU volume on the device -> Agatston score, per exam
TARGET_LABEL_VPS = 1e9  # labelling, voxels per second

# name -> (matmul precision context, compute dtype name); parameters stay float32
PRECISIONS = {"float32": ("highest", "float32"), "tf32": ("tensorfloat32", "float32"), "bf16": (None, "bfloat16")}
STRATEGIES = ("vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class Sizes:
    tiny: bool
    exam_matrix: int  # in-plane pixels of the synthetic exam (field of view 204.8 mm)
    exam_slices: int  # 3 mm slices
    grid: tuple[int, int, int]  # network grid of sections 1 and 3
    label_shape: tuple[int, int, int]
    batches: tuple[int, ...]
    members: int = 5


FULL = Sizes(tiny=False, exam_matrix=512, exam_slices=56, grid=(56, 72, 72), label_shape=(64, 512, 512),
             batches=(1, 4, 16))
# 8 x 128 x 128 rather than 64 x 64: the synthetic generator fails on some 64-pixel exams
TINY = Sizes(tiny=True, exam_matrix=128, exam_slices=8, grid=(8, 16, 16), label_shape=(8, 64, 64), batches=(1, 2))
FOV_MM, SLICE_MM = 204.8, 3.0


def block(tree):
    import jax

    return jax.block_until_ready(tree)


def first_call(fn):
    """(seconds, result) of the first call: compilation included."""
    t0 = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t0, out


def precision(name: str | None):
    import jax

    return contextlib.nullcontext() if name is None else jax.default_matmul_precision(name)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def met(ok: bool) -> str:
    return "yes" if ok else "no"


def table(header: list[str], rows: list[list[object]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(flush=True)


class Recorder:
    """Session.report, plus the derived figures appended with each record to --out (JSON lines)."""

    def __init__(self, session: Session, out: str | None) -> None:
        self.session, self.out = session, out

    def report(self, section: int, times, derived: dict, **kwargs) -> dict:
        record = self.session.report(times, **kwargs)
        sys.stdout.flush()
        if self.out:
            with open(self.out, "a") as f:
                f.write(json.dumps({**record, "section": section, "derived": derived}, default=str) + "\n")
        return record


# ------------------------------------------------------------------------------------------------ inputs


def synthetic_exam(sizes: Sizes):
    """A synthetic exam in the canonical layout: (hu float32 (z, y, x), spacing (dz, dy, dx) mm, note)."""
    from agatax.orientation import to_canonical
    from agatax.synthetic import generate_exam

    try:
        exam = generate_exam(0, target_category="C", matrix=sizes.exam_matrix, n_slices=sizes.exam_slices,
                             fov_mm=FOV_MM, slice_increment_mm=SLICE_MM, slice_thickness_mm=SLICE_MM)
        volume, _ = to_canonical(exam.volume)
        return (np.ascontiguousarray(volume.hu, np.float32), tuple(float(s) for s in volume.spacing),
                f"synthetic exam (seed 0, category C, true Agatston {exam.agatston:.1f})")
    except Exception as err:  # the generator is not this benchmark's subject: fall back to a plain phantom
        return (*ellipse_phantom(sizes), f"ellipse phantom (generate_exam failed: {type(err).__name__}: {err})")


def ellipse_phantom(sizes: Sizes):
    """Air around a water ellipse, two dark lung lobes, a few bright calcium spots."""
    z, n = sizes.exam_slices, sizes.exam_matrix
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
    hu = np.full((n, n), -1000.0, np.float32)
    hu[(yy / 0.35) ** 2 + (xx / 0.45) ** 2 < 1] = 40.0
    for cx in (-0.22, 0.22):
        hu[(yy / 0.22) ** 2 + ((xx - cx) / 0.13) ** 2 < 1] = -850.0
    hu = np.repeat(hu[None], z, axis=0) + rng.normal(0, 15, (z, n, n)).astype(np.float32)
    for _ in range(12):
        k, j, i = rng.integers(0, z), rng.integers(n // 3, 2 * n // 3), rng.integers(n // 3, 2 * n // 3)
        hu[k, j : j + max(2, n // 128), i : i + max(2, n // 128)] = rng.uniform(200, 900)
    return np.ascontiguousarray(hu), (SLICE_MM, FOV_MM / n, FOV_MM / n)


def network_input(hu, spacing, sizes: Sizes, multiple: int):
    """The exam's network input (1, z, y, x, 1), centre-cropped / zero-padded to ``sizes.grid``."""
    import jax.numpy as jnp

    import agatax

    x = np.asarray(agatax.preprocess(hu, spacing, multiple=multiple))
    out = np.zeros(sizes.grid, np.float32)
    src, dst = [], []
    for have, want in zip(x.shape, sizes.grid):
        n = min(have, want)
        a, b = (have - n) // 2, (want - n) // 2
        src.append(slice(a, a + n))
        dst.append(slice(b, b + n))
    out[tuple(dst)] = x[tuple(src)]
    return jnp.asarray(out[None, ..., None]), x.shape


def paper_ensemble(config, members: int):
    """``members`` U-Nets, each initialised from its own seed, stacked (agatax.ensemble.stack_members)."""
    import jax
    import jax.numpy as jnp

    from agatax.ensemble import stack_members
    from agatax.model import UNet

    m = config.multiple
    init = jax.jit(lambda key: UNet(config).init(key, jnp.zeros((1, m, m, m, 1), jnp.float32), train=False))
    return stack_members([dict(init(jax.random.key(seed))) for seed in range(members)], config)


def with_dtype(ensemble, dtype_name: str):
    import jax.numpy as jnp

    return ensemble.replace(config=dataclasses.replace(ensemble.config, dtype=jnp.dtype(dtype_name).type))


def votes_function(strategy: str):
    """One jitted function per strategy; jit caches one executable per input shape, dtype config and
    matmul precision, so the batch section reuses the B = 1 executables of section 1."""
    import jax

    from agatax.ensemble import ensemble_votes

    return jax.jit(lambda ens, x: ensemble_votes(ens, x, strategy=strategy))


def timed_call(fn, args, prec):
    def call():
        with precision(prec):
            return block(fn(*args))

    return call


# -------------------------------------------------------------------------------------------- section 1


def section_networks(rec: Recorder, sizes: Sizes, rounds: int, ensemble, x, jitted) -> None:
    print(f"### 1. five-member inference, network only, grid {sizes.grid}\n", flush=True)
    variants, compile_s, masks = {}, {}, {}
    for strategy in STRATEGIES:
        for pname, (prec, dtype) in PRECISIONS.items():
            name = f"{strategy} {pname}"
            call = timed_call(jitted[strategy], (with_dtype(ensemble, dtype), x), prec)
            compile_s[name], (mask, _) = first_call(call)
            masks[name] = np.asarray(mask)
            print(f"compile + first call {name}: {compile_s[name]:.1f} s", flush=True)
            variants[name] = call
    times = rec.session.interleave(variants, rounds=rounds)
    voxels = int(masks["vmap float32"].size)
    diff = {name: int(np.count_nonzero(masks[name] != masks[f"{name.split()[0]} float32"])) for name in variants}
    diff["vmap float32 vs sequential float32"] = int(np.count_nonzero(masks["vmap float32"] != masks["sequential float32"]))
    best = min(variants, key=lambda n: min(times[n]))
    derived = {"ms_per_exam_min": {n: min(t) * 1e3 for n, t in times.items()},
               "ms_per_exam_median": {n: float(np.median(t)) * 1e3 for n, t in times.items()},
               "mask_voxels_differing_from_float32_same_strategy": diff, "mask_voxels": voxels,
               "mask_voxels_float32": int(masks["vmap float32"].sum()), "compile_and_first_s": compile_s,
               "target_ms": TARGET_NETWORK_MS, "best": best, "target_met_by_best": min(times[best]) * 1e3 < TARGET_NETWORK_MS}
    rec.report(1, times, derived, baseline="sequential float32",
               shapes={"network_input": tuple(x.shape), "members": sizes.members, "config": ensemble.config.to_dict()},
               title=f"bench_gpu 1: five-member inference, network only, grid {sizes.grid}",
               notes=(f"float32 = matmul precision 'highest'; tf32 = 'tensorfloat32'; bf16 = UNetConfig(dtype=bfloat16), "
                      f"float32 parameters; random members (seeds 0-{sizes.members - 1}); mask voxels differing from "
                      f"float32 (same strategy, of {voxels}): " + ", ".join(f"{k} {v}" for k, v in diff.items())))
    rows = [[n, ms(min(t)), ms(float(np.median(t))), diff[n] if not n.endswith("float32") else "-",
             f"{compile_s[n]:.1f}", f"< {TARGET_NETWORK_MS:g}", met(min(t) * 1e3 < TARGET_NETWORK_MS)] for n, t in times.items()]
    table(["variant", "ms / exam (min)", "ms / exam (median)", f"mask voxels != float32 (of {voxels})",
           "compile + first (s)", "target ms", "met"], rows)
    print(f"vmap float32 vs sequential float32: {diff['vmap float32 vs sequential float32']} mask voxels differ; "
          f"float32 mask holds {derived['mask_voxels_float32']} voxels (random weights)\n", flush=True)


# -------------------------------------------------------------------------------------------- section 2


def section_pipeline(rec: Recorder, sizes: Sizes, rounds: int, ensemble, hu, spacing, exam_note) -> None:
    import jax

    import agatax
    from agatax.ensemble import resolve_strategy
    from agatax.pipeline import segment_and_score

    print(f"### 2. HU volume on the device -> Agatston score, exam {hu.shape}\n", flush=True)
    hu_dev = block(jax.device_put(hu))
    shipped = agatax.load_default_ensemble()
    runs = {
        "paper, localise off": (ensemble, False),
        "paper, localise on (host)": (ensemble, True),
        "paper bf16, localise off": (with_dtype(ensemble, "bfloat16"), False),
        f"shipped {shipped.config.levels} levels / {shipped.config.base_filters} filters, localise on (host)": (shipped, True),
    }
    variants, compile_s, outputs = {}, {}, {}
    for name, (ens, localise) in runs.items():
        call = (lambda e=ens, lo=localise: block(segment_and_score(e, hu_dev, spacing=spacing, score_on="device",
                                                                   localise=lo, allow_phantom=True)))
        compile_s[name], out = first_call(call)
        outputs[name] = {"agatston": float(out["scores"]["agatston"]), "lesions": int(out["scores"]["lesions"]),
                         "mask_voxels": int(np.count_nonzero(np.asarray(out["mask"])))}
        print(f"compile + first call {name}: {compile_s[name]:.1f} s; {outputs[name]}", flush=True)
        variants[name] = call
    times = rec.session.interleave(variants, rounds=rounds)
    derived = {"ms_per_exam_min": {n: min(t) * 1e3 for n, t in times.items()},
               "ms_per_exam_median": {n: float(np.median(t)) * 1e3 for n, t in times.items()},
               "outputs": outputs, "compile_and_first_s": compile_s, "target_ms": TARGET_PIPELINE_MS,
               "strategy": resolve_strategy("auto")}
    rec.report(2, times, derived, baseline="paper, localise off",
               shapes={"exam": hu.shape, "spacing_mm": spacing, "members": sizes.members},
               title=f"bench_gpu 2: HU volume on the device -> Agatston score (one jit), exam {hu.shape}",
               notes=(f"{exam_note}; segment_and_score(score_on='device', strategy='auto'), JAX default matmul "
                      "precision; localisation runs on the host (HU copied to the host, region copied back); "
                      "paper = 4 levels / 16 filters, random members"))
    rows = [[n, ms(min(t)), ms(float(np.median(t))), f"{compile_s[n]:.1f}", outputs[n]["mask_voxels"],
             f"{outputs[n]['agatston']:.1f}", f"< {TARGET_PIPELINE_MS:g}", met(min(t) * 1e3 < TARGET_PIPELINE_MS)]
            for n, t in times.items()]
    table(["variant", "ms / exam (min)", "ms / exam (median)", "compile + first (s)", "mask voxels", "Agatston",
           "target ms", "met"], rows)


# -------------------------------------------------------------------------------------------- section 3


def section_batches(rec: Recorder, sizes: Sizes, rounds: int, ensemble, x, jitted, precisions) -> None:
    import jax.numpy as jnp

    from agatax.ensemble import resolve_strategy

    strategy = resolve_strategy("auto")
    print(f"### 3. batches of exams per call, grid {sizes.grid}, strategy {strategy}\n", flush=True)
    variants, compile_s, per = {}, {}, {}
    for pname in precisions:
        prec, dtype = PRECISIONS[pname]
        ens = with_dtype(ensemble, dtype)
        for b in sizes.batches:
            xb = block(jnp.tile(x, (b, 1, 1, 1, 1)))
            name = f"B={b} {pname}"
            call = timed_call(jitted[strategy], (ens, xb), prec)
            compile_s[name], _ = first_call(call)
            print(f"compile + first call {name}: {compile_s[name]:.1f} s", flush=True)
            variants[name], per[name] = call, b
    times = rec.session.interleave(variants, rounds=rounds)
    derived = {"ms_per_exam_min": {n: min(t) * 1e3 / per[n] for n, t in times.items()},
               "ms_per_exam_median": {n: float(np.median(t)) * 1e3 / per[n] for n, t in times.items()},
               "batch": per, "compile_and_first_s": compile_s, "target_ms": TARGET_NETWORK_MS, "strategy": strategy}
    first = next(iter(variants))
    rec.report(3, times, derived, baseline=first,
               shapes={"network_input_per_exam": tuple(x.shape[1:]), "batches": sizes.batches, "members": sizes.members},
               title=f"bench_gpu 3: B exams per call, network only, grid {sizes.grid}",
               notes=(f"times are per call (B exams); ms per exam in 'derived'; ensemble_votes(strategy='{strategy}'); "
                      "float32 = precision 'highest', tf32 = 'tensorfloat32', bf16 = bfloat16 compute"))
    rows = [[n, per[n], ms(min(t) / per[n]), ms(float(np.median(t)) / per[n]), f"{compile_s[n]:.1f}",
             f"< {TARGET_NETWORK_MS:g}", met(min(t) * 1e3 / per[n] < TARGET_NETWORK_MS)] for n, t in times.items()]
    table(["variant", "B", "ms / exam (min)", "ms / exam (median)", "compile + first (s)", "target ms", "met"], rows)


# -------------------------------------------------------------------------------------------- section 4


def blob_mask(shape, fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """Random blobs a few voxels across: Gaussian-smoothed noise (sigma 1.5) above its (1 - fraction) quantile."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape, dtype=np.float32), 1.5)
    return noise > np.quantile(noise, 1.0 - fraction)


def same_partition(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    """True when labelings ``a`` and ``b`` (0 = background) split the foreground into the same components,
    whatever their numbering: same foreground, and label pairs (a, b) one-to-one."""
    fa, fb = a != 0, b != 0
    if not np.array_equal(fa, fb):
        return False, f"foregrounds differ in {int(np.count_nonzero(fa != fb))} voxels"
    la, lb = a[fa].astype(np.int64), b[fb].astype(np.int64)
    na, nb = np.unique(la).size, np.unique(lb).size
    pairs = np.unique(la * (int(lb.max(initial=0)) + 1) + lb).size
    ok = na == nb == pairs
    return ok, f"{na} vs {nb} components, {pairs} distinct label pairs"


def section_labelling(rec: Recorder, sizes: Sizes, rounds: int) -> None:
    import jax
    from scipy import ndimage

    from agatax.scoring.components import label_slices, label_volume

    shape = sizes.label_shape
    n_vox = int(np.prod(shape))
    print(f"### 4. JAX connected-component labelling, mask {shape}\n", flush=True)
    mask = blob_mask(shape)
    mask_dev = block(jax.device_put(mask))
    kinds = {
        "label_volume 26-connected (jax)": (jax.jit(lambda m: label_volume(m, connectivity=26, backend="jax")),
                                            ndimage.generate_binary_structure(3, 3)),
        "label_slices 8-connected (jax)": (jax.jit(lambda m: label_slices(m, connectivity=8, backend="jax")),
                                           np.stack([np.zeros((3, 3), bool), np.ones((3, 3), bool), np.zeros((3, 3), bool)])),
    }
    variants, compile_s, checks = {}, {}, {}
    for name, (fn, structure) in kinds.items():
        compile_s[name], labels = first_call(lambda fn=fn: fn(mask_dev))
        ref, n_ref = ndimage.label(mask, structure=structure)
        ok, detail = same_partition(np.asarray(labels), ref)
        checks[name] = {"same_partition_as_scipy": ok, "detail": detail, "scipy_components": int(n_ref),
                        "same_numbering_as_scipy": bool(np.array_equal(np.asarray(labels), ref))}
        print(f"compile + first call {name}: {compile_s[name]:.1f} s; against scipy.ndimage.label: {checks[name]}",
              flush=True)
        if not ok:
            raise SystemExit(f"{name}: partition differs from scipy.ndimage.label ({detail})")
        variants[name] = lambda fn=fn: block(fn(mask_dev))
    times = rec.session.interleave(variants, rounds=rounds)
    derived = {"voxels_per_s_min_time": {n: n_vox / min(t) for n, t in times.items()},
               "voxels_per_s_median_time": {n: n_vox / float(np.median(t)) for n, t in times.items()},
               "foreground_fraction": float(mask.mean()), "checks": checks, "compile_and_first_s": compile_s,
               "target_voxels_per_s": TARGET_LABEL_VPS}
    rec.report(4, times, derived, baseline=next(iter(variants)),
               shapes={"mask": shape, "foreground_fraction": round(float(mask.mean()), 5)},
               title=f"bench_gpu 4: JAX labelling kernel, mask {shape}",
               notes="random blobs (Gaussian-smoothed noise, sigma 1.5, above its 99 % quantile); partition checked "
                     "equal to scipy.ndimage.label before timing; voxels/s in 'derived'")
    rows = [[n, ms(min(t)), f"{n_vox / min(t):.3g}", f"{n_vox / float(np.median(t)):.3g}", f"{compile_s[n]:.1f}",
             checks[n]["same_partition_as_scipy"], f">= {TARGET_LABEL_VPS:.0e}", met(n_vox / min(t) >= TARGET_LABEL_VPS)]
            for n, t in times.items()]
    table(["variant", "ms (min)", "voxels/s (min time)", "voxels/s (median time)", "compile + first (s)",
           "partition = scipy", "target voxels/s", "met"], rows)


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and network (a CPU smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 7; 2 with --tiny)")
    parser.add_argument("--force", action="store_true", help="measure on a busy machine (figures flagged BUSY)")
    parser.add_argument("--out", help="append the JSON records (with derived figures) to this file, one per line")
    parser.add_argument("--sections", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    parser.add_argument("--batch-precisions", default="float32,bf16",
                        help=f"section 3's precisions, comma-separated, of {','.join(PRECISIONS)}")
    parser.add_argument("--cache-dir", help="JAX persistent compilation cache here (a rerun on the same machine "
                        "loads instead of compiling; compile + first call times then show the load)")
    args = parser.parse_args(argv)
    session = Session("bench_gpu", force=args.force)  # before any set-up work of ours
    sections = {int(s) for s in args.sections.split(",") if s.strip()}
    batch_precisions = [p.strip() for p in args.batch_precisions.split(",") if p.strip()]
    if not sections <= {1, 2, 3, 4} or not set(batch_precisions) <= set(PRECISIONS):
        parser.error("--sections takes 1-4; --batch-precisions takes " + ", ".join(PRECISIONS))
    sizes = TINY if args.tiny else FULL
    rounds = args.rounds if args.rounds is not None else (2 if args.tiny else 7)
    if rounds < 1:
        parser.error("--rounds must be at least 1")

    import jax

    from agatax.model import UNetConfig, resolve_conv_impl

    if args.cache_dir:
        from agatax.compile_cache import enable

        print(f"compilation cache: {enable(args.cache_dir)}")
    started = time.perf_counter()
    print(f"# bench_gpu{' --tiny' if args.tiny else ''}: jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {jax.devices()}")
    for d in jax.devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        limit = (stats or {}).get("bytes_limit")
        print(f"- {d.platform} {getattr(d, 'device_kind', '')}" + (f", {limit / 2**30:.1f} GiB" if limit else ""))
    config = UNetConfig.tiny() if args.tiny else UNetConfig(levels=4, base_filters=16)
    print(f"network: levels {config.levels}, base filters {config.base_filters}, conv_impl "
          f"{resolve_conv_impl(config.conv_impl)}, {sizes.members} members; rounds {rounds}\n", flush=True)
    rec = Recorder(session, args.out)

    need_exam = sections & {1, 2, 3}
    if need_exam:
        t0 = time.perf_counter()
        hu, spacing, exam_note = synthetic_exam(sizes)
        ensemble = paper_ensemble(config, sizes.members)
        x, native_grid = network_input(hu, spacing, sizes, config.multiple)
        jitted = {s: votes_function(s) for s in STRATEGIES}
        print(f"set-up {time.perf_counter() - t0:.1f} s: {exam_note}, {hu.shape} at {spacing} mm, network grid of "
              f"the exam {native_grid}, network input {tuple(x.shape)}\n", flush=True)
    runs = {1: lambda: section_networks(rec, sizes, rounds, ensemble, x, jitted),
            2: lambda: section_pipeline(rec, sizes, rounds, ensemble, hu, spacing, exam_note),
            3: lambda: section_batches(rec, sizes, rounds, ensemble, x, jitted, batch_precisions),
            4: lambda: section_labelling(rec, sizes, rounds)}
    for k in sorted(sections):
        t0 = time.perf_counter()
        runs[k]()
        print(f"section {k} took {time.perf_counter() - t0:.1f} s (elapsed {time.perf_counter() - started:.1f} s)\n",
              flush=True)
    print(f"bench_gpu done in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()

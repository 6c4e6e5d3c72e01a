"""Two or more ensembles on the same planted lesions: found counts and paired gains and losses.

Reads one or more ``branch_lesions.json`` files (``branch_lesions.py`` run with several ``--weights`` on the
same exams; several draws are pooled), keeps the lesions whose own Agatston score is at least
``--min-agatston`` (10: the shipping rules in RESULTS.md count these), and prints per ensemble how many it
finds, then, against the first ensemble (the reference), each other's gains (found by it, not by the
reference) and losses, lesion by lesion with the members' mean votes, and the lesions no ensemble finds:

    python experiments/compare_lesions.py W1/branch_lesions.json W2/branch_lesions.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LESION_KEYS = {"seed", "lesion", "classes", "agatston", "voxels", "peak_hu", "eccentric", "vessel"}


def ensembles_of(lesions: list[dict]) -> list[str]:
    """The ensemble names of branch_lesions.py's per-lesion records, in the order they were run."""
    if not lesions:
        raise ValueError("no lesions: pass branch_lesions.json files of runs that drew exams")
    return [k for k in lesions[0] if k not in LESION_KEYS and not k.endswith(" mean vote")]


def compare(lesions: list[dict], min_agatston: float = 10.0) -> dict:
    """{"counted": n, "found": {name: k}, "paired": {name: (gained, lost)}, "missed_by_all": [...]}: lesions of
    own Agatston >= ``min_agatston``; gained / lost are lists of lesion records, against the first ensemble."""
    names = ensembles_of(lesions)
    for name in names:
        if any(name not in lesion for lesion in lesions):
            raise ValueError(f"ensemble {name!r} is not in every lesion record: pool only runs of the same ensembles")
    kept = [lesion for lesion in lesions if lesion["agatston"] >= min_agatston]
    ref = names[0]
    return {
        "counted": len(kept),
        "found": {name: sum(bool(lesion[name]) for lesion in kept) for name in names},
        "paired": {name: ([x for x in kept if x[name] and not x[ref]], [x for x in kept if x[ref] and not x[name]])
                   for name in names[1:]},
        "missed_by_all": [x for x in kept if not any(x[name] for name in names)],
    }


def _line(lesion: dict, names: list[str]) -> str:
    votes = " / ".join(f"{lesion[f'{n} mean vote']:.2f}" for n in names)
    return (f"seed {lesion['seed']} lesion {lesion['lesion']}: {lesion['vessel']}, {lesion['voxels']} voxels, peak "
            f"{lesion['peak_hu']:.0f} HU, own Agatston {lesion['agatston']:.1f}; mean votes {votes}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="branch_lesions.json files (pooled)")
    ap.add_argument("--min-agatston", type=float, default=10.0)
    args = ap.parse_args(argv)
    lesions = [x for path in args.runs for x in json.loads(Path(path).read_text())["lesions"]]
    names = ensembles_of(lesions)
    out = compare(lesions, args.min_agatston)
    print(f"{out['counted']} lesions of own Agatston >= {args.min_agatston:g} ({len(lesions)} in all)")
    for name, k in out["found"].items():
        print(f"  {name}: {k} found")
    for name, (gained, lost) in out["paired"].items():
        print(f"{name} against {names[0]}: +{len(gained)} / -{len(lost)} (mean votes {' / '.join(names)})")
        for tag, group in (("gained", gained), ("lost", lost)):
            for lesion in group:
                print(f"  {tag}: {_line(lesion, names)}")
    print(f"found by none: {len(out['missed_by_all'])}")
    for lesion in out["missed_by_all"]:
        print(f"  {_line(lesion, names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

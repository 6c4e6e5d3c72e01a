"""What the object rules after the networks cost: the in-air rule (agatax.pipeline.exclude_in_air) and the
noise-level rule (agatax.pipeline.exclude_noise_level), beside the pipeline itself.

    python3 benchmarks/bench_object_rules.py [--rounds 7] [--force]

Under benchmarks/protocol.py (refuses a busy machine; variants interleaved). Exams: synthetic, matrix 512,
an E-category cardiac exam (seed 2), a chest CT (seed 3, category C) and a calcium-free cardiac exam at 45 HU
of noise (seed 30: noise specks, the noise rule's worst case); the shipped default ensemble. Variants per exam:
``agatax.run_pipeline`` as shipped, the same with both rules off (``air_share=None, noise_snr=None``), and
each rule alone on the pipeline's mask before the rules (the noise-level rule reading the noise near each
object, ``local=True``, and the exam's one SD, ``local=False``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import Session, command_line  # noqa: E402


def main() -> int:
    args = command_line(__doc__)
    session = Session("the in-air and noise-level rules beside run_pipeline", force=args.force)

    from agatax.defaults import load_default_ensemble
    from agatax.pipeline import exclude_in_air, exclude_noise_level, run_pipeline
    from agatax.quality import image_noise_hu
    from agatax.synthetic import generate_exam

    ensemble = load_default_ensemble()
    off = dict(air_share=None, noise_snr=None)
    for name, seed, cat, protocol, sd in (("cardiac E", 2, "E", "cardiac", None), ("chest C", 3, "C", "chest", None),
                                          ("cardiac A, 45 HU", 30, "A", "cardiac", 45.0)):
        noisy = {} if sd is None else {"noise_sigma_hu": sd}
        volume = generate_exam(seed, target_category=cat, protocol=protocol, matrix=512, **noisy).volume
        before = run_pipeline(ensemble, volume, **off)
        hu, mask, votes, spacing = volume.hu, before.mask, before.votes, volume.spacing
        noise = image_noise_hu(hu, spacing)
        times = session.interleave({
            "run_pipeline (shipped)": lambda: run_pipeline(ensemble, volume),
            "run_pipeline, rules off": lambda: run_pipeline(ensemble, volume, **off),
            "exclude_in_air alone": lambda: exclude_in_air(hu, mask, votes, spacing),
            "exclude_noise_level alone, local": lambda: exclude_noise_level(hu, mask, votes, spacing, noise, local=True),
            "exclude_noise_level alone, exam-wide": lambda: exclude_noise_level(hu, mask, votes, spacing, noise,
                                                                                local=False),
        }, rounds=args.rounds)
        session.report(times, baseline="run_pipeline, rules off",
                       shapes={name: volume.shape, "objects before the rules": int(_objects(mask))})
    return 0


def _objects(mask) -> int:
    from scipy import ndimage

    return ndimage.label(mask, structure=[[[1] * 3] * 3] * 3)[1]


if __name__ == "__main__":
    raise SystemExit(main())

"""Test-wide settings: deterministic hypothesis profiles, strict JAX rank promotion, shared data paths."""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

# The command line's compilation cache goes to a scratch folder, not the user's ~/.cache.
os.environ.setdefault("AGATAX_CACHE_DIR", os.path.join(__import__("tempfile").gettempdir(), "agatax-test-xla"))
# `agatax score` in a subprocess runs in that process, never in a user's running `agatax serve`.
os.environ["AGATAX_SERVER"] = os.path.join(__import__("tempfile").mkdtemp(prefix="agatax-test-"), "none.sock")

# Catch accidental broadcasting between arrays of different rank.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Compilation under jit breaks time deadlines: no deadline, derandomized, bounded examples.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# the shared data folder: $AGATAX_SHARED, else ../shared beside the checkout
SHARED = Path(os.environ.get("AGATAX_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
PHANTOM_DIR = SHARED / "data" / "qrm-phantom-canon"


@pytest.fixture(scope="session")
def phantom_dir() -> Path:
    """The real QRM phantom series beside the project; the test is skipped when it is absent."""
    dicom = PHANTOM_DIR / "dicom"
    if not dicom.is_dir():
        pytest.skip(f"shared phantom data not found at {dicom}")
    return PHANTOM_DIR

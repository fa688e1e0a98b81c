"""Shared paths: real data and the authors' fixtures live in ../shared beside the repository, never inside it."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures" / "official"


@pytest.fixture(scope="session")
def official_fixtures():
    if not (FIXTURES / "batch_and_outputs.pt").is_file():
        pytest.skip(f"official fixtures absent: {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def brain_mri():
    root = DATA / "brain_tumor_mri"
    if not (root / "Training").is_dir():
        pytest.skip(f"Brain Tumor MRI data absent: {root}")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's ~/.cache/hdkd."""
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hdkd-cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that runs a command in-process with --threads (as `hdkd benchmark` sets torch's thread count for the
    process it owns) must not leave the next tests on another thread count: some kernels depend on it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

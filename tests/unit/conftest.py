"""Unit tier: tests import their helper modules (parity_helpers) from this folder by plain name."""
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def parity(parity_dir):
    """The official parity fixture (parity_helpers.Parity: weights, reference tensors, config), read once per test
    process and shared by every module of the tier: never modify its dicts or tensors in place."""
    from parity_helpers import load_parity

    return load_parity(parity_dir)

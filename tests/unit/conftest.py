"""Unit tier: tests import their helper modules (parity_helpers) from this folder by plain name."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

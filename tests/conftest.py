"""Fixtures shared by every test tier.

One pytest process tests against one ComfyUI copy: ``SUPIR_COMFY_ROOT`` names its folder (default
``<SUPIR_RUNTIMES or repo/.runtime>/comfy-0.3.75``, built by ``scripts/setup_env.sh``). That folder goes first on
``sys.path`` at collection time, and ComfyUI is told to stay on the CPU before anything imports
``comfy.model_management``.

The pack itself is imported under the name ``fsupir_under_test``, never the repository's folder name, the way
ComfyUI imports it from ``custom_nodes/<any name>/``: so a test fails if the pack relies on its folder name.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .tiny_models import PACK_MODULE_NAME, pack_package

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEFAULT_RUNTIME = "comfy-0.3.75"


def _runtime_root() -> Path:
    env = os.environ.get("SUPIR_COMFY_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    runtimes = Path(os.environ.get("SUPIR_RUNTIMES") or REPO / ".runtime").expanduser().resolve()
    return runtimes / DEFAULT_RUNTIME


COMFY_ROOT = _runtime_root()


def _put_comfy_on_path(root: Path) -> bool:
    """Makes ``root``'s ComfyUI importable and CPU-only; False when the folder holds no ComfyUI."""
    if not (root / "comfy" / "cli_args.py").is_file():
        return False
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "comfy.model_management" in sys.modules:
        raise RuntimeError("comfy.model_management was imported before tests/conftest.py could set --cpu")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return True


COMFY_AVAILABLE = _put_comfy_on_path(COMFY_ROOT)


class _RepoRootIsNotAPackage:
    """The repository root holds the pack's ``__init__.py``, so pytest would collect it as a ``Package`` and
    import that file under the checkout's folder name before any test. A plain ``Dir`` imports nothing."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == REPO:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # A plugin, not a hook of this conftest: conftest hooks do not apply to directories above tests/.
    config.pluginmanager.register(_RepoRootIsNotAPackage(), "fsupir-repo-root-is-not-a-package")


def pytest_report_header(config):
    state = "on sys.path" if COMFY_AVAILABLE else "MISSING (run scripts/setup_env.sh)"
    return f"FSUPIR: ComfyUI runtime {COMFY_ROOT} ({state}); pack imported as {PACK_MODULE_NAME}"


def _existing(path: Path, what: str) -> Path:
    """``path`` if it exists; otherwise a skip, or a failure when SUPIR_REQUIRE_FIXTURES=1."""
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("SUPIR_REQUIRE_FIXTURES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """Folder of the ComfyUI copy this process tests against (already first on sys.path)."""
    if not COMFY_AVAILABLE:
        pytest.fail(f"no ComfyUI at {COMFY_ROOT}: run scripts/setup_env.sh (or set SUPIR_COMFY_ROOT)")
    return COMFY_ROOT


# The repository as the package ``fsupir_under_test``, its ``__init__.py`` not run (tests/tiny_models.py's
# pack_package): test files import submodules at their top (``from fsupir_under_test.supir_modules import
# checkpoint``) without the node layer; the ``pack`` fixture runs ``__init__.py`` on this same module object.
_PACK = pack_package()
_pack_state: dict = {"ran": False, "error": None}


@pytest.fixture(scope="session")
def pack():
    """The pack's root package ``fsupir_under_test`` with its ``__init__.py`` run (with ComfyUI on sys.path
    that imports ``nodes/`` too, so a broken node file fails the tests that use this fixture).

    In the comfy tier ``comfy_pack`` is the copy ComfyUI itself loaded: a distinct module object, distinct classes.
    """
    if _pack_state["error"] is not None:
        raise _pack_state["error"]
    if not _pack_state["ran"]:
        try:
            _PACK.__spec__.loader.exec_module(_PACK)
        except BaseException as error:
            _pack_state["error"] = error
            raise
        _pack_state["ran"] = True
    return _PACK


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Official-code parity fixtures (tiny SUPIR weights and reference tensors); see shared/fixtures/README.md."""
    env = os.environ.get("SUPIR_PARITY_FIXTURES")
    path = Path(env).expanduser().resolve() if env else SHARED / "fixtures" / "parity"
    return _existing(path, "parity fixtures (SUPIR_PARITY_FIXTURES)")


@pytest.fixture(scope="session")
def layout_json() -> Path:
    """Names and shapes of the full-size official SUPIR-v0 checkpoint (``SUPIR_LAYOUT_JSON`` overrides)."""
    env = os.environ.get("SUPIR_LAYOUT_JSON")
    path = Path(env).expanduser().resolve() if env else SHARED / "fixtures" / "supir_v0_layout.json"
    return _existing(path, "SUPIR-v0 layout fixture (SUPIR_LAYOUT_JSON)")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """Tiny models (written by the tests, official key layout) under every name the shipped workflows pick;
    written once per test process and shared by every server started in it."""
    from .server.workflow_server import tiny_models_root

    return tiny_models_root(tmp_path_factory)


@pytest.fixture
def sdpa_attention(monkeypatch):
    """ComfyUI's attention as CUDA runs pick it (PyTorch SDPA); on the CPU it would pick a memory-probing kernel
    that cannot run on the meta device."""
    import comfy.ldm.modules.attention as attention

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    monkeypatch.setattr(attention, "optimized_attention_masked", attention.attention_pytorch, raising=False)

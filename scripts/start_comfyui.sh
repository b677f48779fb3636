#!/usr/bin/env bash
# Starts ComfyUI with this pack (THE main command):
#
#   scripts/start_comfyui.sh [extra ComfyUI arguments, e.g. --lowvram]
#
# Builds/refreshes the environment for one runtime (scripts/setup_env.sh), then runs that runtime's main.py on
# http://127.0.0.1:8188 (local only). --cpu is added when torch sees no GPU (CUDA/ROCm, XPU or MPS).
# Extra arguments go to main.py and win over these defaults (e.g. --listen 0.0.0.0 to serve the network).
#
# Environment: SUPIR_RUNTIME (comfy-0.3.75, the default, or comfy-2024.03), SUPIR_PORT (default 8188), and
# SUPIR_VENV / SUPIR_RUNTIMES / SUPIR_TORCH / SUPIR_PACK_LINK as for setup_env.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SUPIR_VENV:-$repo/.venv}"
runtimes="${SUPIR_RUNTIMES:-$repo/.runtime}"
runtime="${SUPIR_RUNTIME:-comfy-0.3.75}"
port="${SUPIR_PORT:-8188}"

"$repo/scripts/setup_env.sh" "$runtime"

device_args=()
if ! "$venv/bin/python" - <<'PY'
import sys
import torch
gpu = torch.cuda.is_available()
gpu = gpu or (hasattr(torch, "xpu") and torch.xpu.is_available())
gpu = gpu or torch.backends.mps.is_available()
sys.exit(0 if gpu else 1)
PY
then
  echo "[start_comfyui] torch sees no GPU: starting ComfyUI with --cpu (slow)" >&2
  device_args=(--cpu)
fi

cd "$runtimes/$runtime"
exec "$venv/bin/python" main.py --listen 127.0.0.1 --port "$port" ${device_args[@]+"${device_args[@]}"} "$@"

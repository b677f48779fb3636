#!/usr/bin/env bash
# The GPU measurements of README "Performance", in parts that each fit one 10-minute command of the workplace's
# device tool (a bare machine with python3 + PyTorch, no network, no ../shared, no .venv).
#
# Here, once (needs scripts/setup_env.sh's .runtime and the shared fixtures):
#     benchmarks/gpu_session.sh bundle        # .device/: ComfyUI 0.3.75 without caches + the official layout JSON
# There, one part per call, carry [".device"]; results and logs go to $OUT (else test-artifacts/gpu):
#     benchmarks/gpu_session.sh check         # every fast path vs the plain path (exits 1 on a mismatch)
#     benchmarks/gpu_session.sh speed         # fp16 1024 + 2048 (graph auto/off), bf16 + fp8 1024 + 2048 (auto)
#     benchmarks/gpu_session.sh budgets       # fp16 at a 9 GiB card, fp8 at 5.5 GiB (1024)
#     benchmarks/gpu_session.sh tiled         # 4096 tiled, fp16, at a 12 GiB card and unlimited
# Each benchmark command appends to its part's JSON, so a part cut off at its limit keeps the rows before.
# PYTHON (default python3), BUNDLE (default .device) and BENCH_ARGS (extra arguments, e.g. --tiny for a CPU smoke
# run) can be set.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="${BUNDLE:-$REPO/.device}"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-$REPO/test-artifacts/gpu}"
read -r -a EXTRA <<<"${BENCH_ARGS:-}"
RUNTIME=(--comfy-root "$BUNDLE/comfy" --layout "$BUNDLE/supir_v0_layout.json")  # the bundle, not ../shared

bundle() {
    local comfy="${SUPIR_COMFY_ROOT:-$REPO/.runtime/comfy-0.3.75}"
    local layout="${SUPIR_LAYOUT_JSON:-$REPO/../shared/fixtures/supir_v0_layout.json}"
    [[ -f "$comfy/comfy/cli_args.py" ]] || { echo "no ComfyUI 0.3.75 at $comfy: run scripts/setup_env.sh" >&2; exit 2; }
    [[ -f "$layout" ]] || { echo "no layout at $layout: set SUPIR_LAYOUT_JSON" >&2; exit 2; }
    rm -rf "$BUNDLE.partial"
    mkdir -p "$BUNDLE.partial/comfy"
    # custom_nodes is left out: it holds the pack's link (which would not travel) and nothing the benchmark imports.
    tar -C "$comfy" --exclude=__pycache__ --exclude=./custom_nodes --exclude=./models --exclude=./output \
        --exclude=./input --exclude=./user -cf - . | tar -C "$BUNDLE.partial/comfy" -xf -
    cp "$layout" "$BUNDLE.partial/supir_v0_layout.json"
    rm -rf "$BUNDLE"
    mv "$BUNDLE.partial" "$BUNDLE"
    echo "bundle: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1); the device tool carries at most 64 MiB)"
}

run_logged() {  # run_logged NAME COMMAND...: output to the terminal and $OUT_DIR/NAME.log
    local name="$1"
    shift
    echo "== $name: $*" | tee -a "$OUT_DIR/$name.log"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$OUT_DIR/$name.log"
    echo "== $name: $((SECONDS - start)) s" | tee -a "$OUT_DIR/$name.log"
}

bench() {  # bench PART ARGS...: one bench_supir.py run appended to $OUT_DIR/PART.json
    local part="$1"
    shift
    local append=()
    [[ -f "$OUT_DIR/$part.json" ]] && append=(--append)
    run_logged "$part" "$PYTHON" "$REPO/benchmarks/bench_supir.py" "${RUNTIME[@]}" --json "$OUT_DIR/$part.json" \
        "${append[@]}" "$@" "${EXTRA[@]}"
}

part="${1:-}"
case "$part" in
    bundle) bundle; exit 0 ;;
    check|speed|budgets|tiled) ;;
    *) echo "usage: $0 bundle|check|speed|budgets|tiled" >&2; exit 2 ;;
esac
[[ -f "$BUNDLE/supir_v0_layout.json" ]] || { echo "no bundle at $BUNDLE: run '$0 bundle' first" >&2; exit 2; }
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
case "$part" in
    check)
        run_logged check "$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
        run_logged check "$PYTHON" "$REPO/benchmarks/check_fast_paths.py" "${RUNTIME[@]}" \
            --json "$OUT_DIR/check.json" "${EXTRA[@]}"
        ;;
    speed)
        bench speed --dtypes fp16 --resolutions 1024 2048 --cuda-graph auto off
        bench speed --dtypes bf16 fp8_e4m3fn --resolutions 1024 2048
        ;;
    budgets)
        bench budget-9 --vram-budget 9 --dtypes fp16 --resolutions 1024
        bench budget-5.5 --vram-budget 5.5 --dtypes fp8_e4m3fn --resolutions 1024
        ;;
    tiled)
        bench tiled-12 --vram-budget 12 --dtypes fp16 --resolutions 4096t
        bench tiled --dtypes fp16 --resolutions 4096t
        ;;
esac

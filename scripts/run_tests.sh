#!/usr/bin/env bash
# Runs every test tier (THE test command):
#
#   scripts/run_tests.sh [-- extra pytest arguments, given to every pytest call]
#
# First builds/refreshes the environment (SUPIR_WITH_TEST_TOOLS=1 scripts/setup_env.sh), then runs one pytest
# process per tier and ComfyUI runtime, because one Python process can import only one ComfyUI copy:
#   unit@<runtime>, comfy@<runtime>   for each runtime (SUPIR_COMFY_ROOT names it)
#   server                            once (its tests start real servers of every runtime themselves)
#   browser                           once (ComfyUI's frontends in headless Chromium, servers of every runtime;
#                                     screenshots in <artifacts>/screenshots/)
# A tier without tests (pytest exit code 5) counts as passed. The last line of output is
# "N passed, N failed, N skipped", summed over all tiers from pytest's JUnit XML; the exit status is non-zero
# if any test failed or errored, or any tier or the setup broke (each counts as one failure).
#
# Environment: SUPIR_VENV, SUPIR_RUNTIMES (as for setup_env.sh); SUPIR_TEST_TIERS (default
# "unit comfy server browser");
# SUPIR_TEST_RUNTIMES (default "comfy-0.3.75 comfy-2024.03"); SUPIR_TEST_ARTIFACTS (JUnit XML folder,
# default <repo>/test-artifacts).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${SUPIR_VENV:-$repo/.venv}"
runtimes_dir="${SUPIR_RUNTIMES:-$repo/.runtime}"
tiers="${SUPIR_TEST_TIERS:-unit comfy server browser}"
runtimes="${SUPIR_TEST_RUNTIMES:-comfy-0.3.75 comfy-2024.03}"
artifacts="${SUPIR_TEST_ARTIFACTS:-$repo/test-artifacts}"

extra=()
if [ $# -gt 0 ]; then
  if [ "$1" != "--" ]; then
    echo "usage: $0 [-- pytest arguments]" >&2
    exit 2
  fi
  shift
  extra=("$@")
fi

total_passed=0 total_failed=0 total_skipped=0
results=()

finish() {
  echo
  echo "== results"
  for r in ${results[@]+"${results[@]}"}; do echo "  $r"; done
  echo "${total_passed} passed, ${total_failed} failed, ${total_skipped} skipped"
  if [ "$total_failed" -gt 0 ]; then exit 1; fi
  exit 0
}

echo "== setup: SUPIR_WITH_TEST_TOOLS=1 scripts/setup_env.sh $runtimes"
# shellcheck disable=SC2086
if ! SUPIR_WITH_TEST_TOOLS=1 "$repo/scripts/setup_env.sh" $runtimes </dev/null; then
  results+=("setup: FAILED (scripts/setup_env.sh)")
  total_failed=$((total_failed + 1))
  finish
fi

rm -rf "$artifacts"
mkdir -p "$artifacts"

# Prints "passed failed skipped" for a JUnit XML file, counting test cases (a teardown error fails its test).
count_junit() {
  "$venv/bin/python" - "$1" <<'PY'
import sys
import xml.etree.ElementTree as ET
passed = failed = skipped = 0
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    tags = {child.tag for child in case}
    if tags & {"failure", "error"}:
        failed += 1
    elif "skipped" in tags:
        skipped += 1
    else:
        passed += 1
sys.stdout.write(f"{passed} {failed} {skipped}\n")
PY
}

# run_tier NAME TEST_DIR [VAR=value ...]: one pytest process with the given environment.
run_tier() {
  local name="$1" dir="$2"
  shift 2
  local xml="$artifacts/${name//@/-}.xml" start rc counts p f s note=""
  echo
  echo "== tier $name: pytest $dir ${extra[*]:-}"
  if [ ! -d "$dir" ]; then
    results+=("$name: no tests ($dir missing)")
    return
  fi
  start=$SECONDS
  env "$@" "$venv/bin/pytest" -p no:cacheprovider --junitxml="$xml" -o junit_family=xunit2 "$dir" \
    ${extra[@]+"${extra[@]}"} </dev/null
  rc=$?
  if [ -f "$xml" ] && counts="$(count_junit "$xml")"; then
    read -r p f s <<<"$counts"
  else
    p=0 f=0 s=0
  fi
  case "$rc" in
    0) ;;
    5) note=" (no tests collected)" ;;
    1) [ "$f" -gt 0 ] || { f=$((f + 1)); note=" (pytest reported failure without a failed test)"; } ;;
    *) f=$((f + 1)); note=" (pytest exit code $rc: interrupted, internal or usage error)" ;;
  esac
  total_passed=$((total_passed + p)); total_failed=$((total_failed + f)); total_skipped=$((total_skipped + s))
  results+=("$name: $p passed, $f failed, $s skipped in $((SECONDS - start)) s$note")
}

for tier in $tiers; do
  case "$tier" in
    unit|comfy)
      for rt in $runtimes; do
        run_tier "$tier@$rt" "tests/$tier" "SUPIR_COMFY_ROOT=$runtimes_dir/$rt" "SUPIR_RUNTIMES=$runtimes_dir"
      done ;;
    server)
      run_tier server tests/server "SUPIR_RUNTIMES=$runtimes_dir" "SUPIR_SERVER_RUNTIMES=$runtimes" ;;
    browser)
      run_tier browser tests/browser "SUPIR_RUNTIMES=$runtimes_dir" "SUPIR_SERVER_RUNTIMES=$runtimes" \
        "SUPIR_TEST_ARTIFACTS=$artifacts" ;;
    *)
      results+=("$tier: unknown tier (known: unit comfy server browser)")
      total_failed=$((total_failed + 1)) ;;
  esac
done
finish

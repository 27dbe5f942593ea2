#!/usr/bin/env bash
# Build dcn with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# DCN_SANITIZE=ON, plus -fsanitize=float-cast-overflow, which -fsanitize=undefined
# does not include in GCC) into a separate prefix, then run a subset of the
# Python suite against that build with the sanitizer runtimes preloaded.
# Any ASan/UBSan report fails the run (halt_on_error / exitcode, and a grep of
# the log as a second net).
#
#   bash tests/sanitize.sh                 # default subset
#   bash tests/sanitize.sh tests/test_x.py # other pytest arguments
#
# Env: DCN_ASAN_PREFIX (default /tmp/dcn_asan), DCN_ASAN_BUILD (build dir).
# The normal installed package is untouched: the sanitized one is put first
# on PYTHONPATH for the test run only.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${DCN_ASAN_PREFIX:-/tmp/dcn_asan}
BUILD=${DCN_ASAN_BUILD:-/tmp/dcn_asan_build}
CXX=${CXX:-g++}

EXTRA="-fsanitize=float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer"
if ! echo 'int main(){}' | "$CXX" -x c++ -fsanitize=float-cast-overflow -o /dev/null - 2>/dev/null; then
  EXTRA="-fno-sanitize-recover=all -fno-omit-frame-pointer"
fi

echo "== building the sanitized extension into $PREFIX (build dir $BUILD)"
rm -rf "$PREFIX"
# reuse the environment's build requirements when present (fast, offline),
# else let pip build in isolation as a plain `pip install .` does
ISO=""
if python -c "import scikit_build_core, nanobind; assert nanobind.__version__ == '3.0.1'" 2>/dev/null; then
  ISO="--no-build-isolation"
fi
pip install $ISO --no-deps --quiet --target "$PREFIX" \
  -C build-dir="$BUILD" \
  -C cmake.build-type=RelWithDebInfo \
  -C cmake.define.DCN_SANITIZE=ON \
  -C cmake.define.DCN_CUDA=OFF \
  -C "cmake.define.CMAKE_CXX_FLAGS=$EXTRA" \
  .

ASAN_LIB=$("$CXX" -print-file-name=libasan.so)
UBSAN_LIB=$("$CXX" -print-file-name=libubsan.so)
[ -f "$ASAN_LIB" ] || { echo "libasan.so not found ($ASAN_LIB)"; exit 1; }

if [ $# -eq 0 ]; then
  set -- tests/conformance tests/test_errors.py tests/test_nonfinite.py tests/test_fuzz.py \
         tests/test_torch_op.py tests/test_mlx_frontend.py
fi

LOG=$(mktemp /tmp/dcn_sanitize.XXXXXX.log)
echo "== pytest $* (sanitizer runtimes preloaded; log $LOG)"
set +e
env PYTHONPATH="$PREFIX${PYTHONPATH:+:$PYTHONPATH}" \
    LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87" \
    DCN_FUZZ_EXAMPLES="${DCN_FUZZ_EXAMPLES:-20}" \
    pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
# the run must have used the sanitized, instrumented build (checked from
# outside the repository, whose dcn_torch/ would shadow it for `python -c`)
( cd /tmp && env PYTHONPATH="$PREFIX" LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" ASAN_OPTIONS=detect_leaks=0 \
  python -c "import dcn_torch; assert dcn_torch.__file__.startswith('$PREFIX'), dcn_torch.__file__" ) \
  || { echo "sanitized build was not the one imported"; exit 1; }
nm -D "$PREFIX"/dcn_torch/_C*.so | grep -c __asan_report >/dev/null || { echo "dcn_torch._C is not instrumented"; exit 1; }
if grep -Eq 'ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer' "$LOG"; then
  echo "== sanitizer report found (see $LOG)"; exit 1
fi
[ "$rc" -eq 0 ] || { echo "== pytest failed (rc $rc)"; exit "$rc"; }
echo "== sanitizers clean"

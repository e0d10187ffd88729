# Sourced by the device-*.sh scripts on the GPU machine: logs in $OUT
# (default /tmp/msagen-out), the CLI and a fresh kernel cache for the
# Python benches, and gpu_tests.
OUT=${OUT:-/tmp/msagen-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MSAGEN_BIN=$PWD/build/msagen
export MSAGEN_CACHE_DIR=${MSAGEN_CACHE_DIR:-$(mktemp -d)}

# gpu_tests TEST...: run each test binary (TEST_TIMEOUT seconds, default
# 600) with its TAP in $OUT, print its counts and failing lines.
gpu_tests() {
	local t tap
	for t in "$@"; do
		tap="$OUT/$(basename "$t").tap"
		echo "== $t"
		timeout "${TEST_TIMEOUT:-600}" "$t" > "$tap" 2>&1
		echo "rc=$? $(grep -c '^ok' "$tap") ok, $(grep -c '^not ok' "$tap") not ok"
		grep '^not ok' "$tap"
	done
}

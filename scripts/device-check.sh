#!/usr/bin/env bash
# On a GPU machine, after `make` elsewhere: every test (GPU ones included),
# the dense test again under compute-sanitizer, and the JIT figures.
# Logs go to $OUT (default /tmp/msagen-out).
set -u
B=${B:-build}
DEST=${OUT:-/tmp/msagen-out}
OUT=$DEST/logs	# bundled into logs.tgz at the end (few files come back)
mkdir -p "$OUT"
export MSAGEN_CACHE_DIR=$(mktemp -d) MSAGEN_BIN=$PWD/$B/msagen
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
fail=0
for t in ${TESTS:-$B/tests/t_*}; do
	echo "== $t"
	"$t" > "$OUT/$(basename "$t").tap" 2>&1
	rc=$?
	grep -E "^(not ok|1\.\.|# )" "$OUT/$(basename "$t").tap" | head -40
	echo "$(grep -c '^ok' "$OUT/$(basename "$t").tap") ok, $(grep -c '^not ok' "$OUT/$(basename "$t").tap") not ok, rc=$rc"
	[ $rc = 0 ] || fail=1
done
if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
	for t in $B/tests/t_*_gpu; do
		echo "== compute-sanitizer $t"
		compute-sanitizer --tool memcheck --error-exitcode 9 "$t" > "$OUT/san-$(basename "$t").log" 2>&1
		echo "rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/san-$(basename "$t").log")"
	done
fi
if [ "${CHECK:-1}" = 1 ]; then
	for spec in ${SPECS:-specs/*.lua}; do
		echo "== msagen check $spec"
		/usr/bin/time -f "(%e s)" $B/msagen check "$spec" > "$OUT/check-$(basename "$spec" .lua).log" 2>&1
		rc=$?
		grep -E "FAIL|checks,|s\)$|msagen:" "$OUT/check-$(basename "$spec" .lua).log" | head -20
		[ $rc = 0 ] || fail=1
	done
fi
if [ "${JIT:-1}" = 1 ]; then
	echo "== JIT figures"
	$B/bench/jit specs/minimax-m3.lua 2>&1 | tee "$OUT/jit.log" | grep -v "^cold compile"
fi
echo "overall: $([ $fail = 0 ] && echo PASS || echo FAIL)"
tar czf "$DEST/logs.tgz" -C "$DEST" logs && rm -rf "$OUT"

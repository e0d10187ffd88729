#!/usr/bin/env bash
# On the GPU machine: the Python tests, then bench/compare.py; files in $OUT.
set -u
OUT=${OUT:-/tmp/msagen-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MSAGEN_BIN=$PWD/build/msagen MSAGEN_CACHE_DIR=${MSAGEN_CACHE_DIR:-$(mktemp -d)}
if [ "${PYTEST:-1}" = 1 ]; then
	echo "== tests/t_python.py"
	python3 tests/t_python.py > "$OUT/t_python.tap" 2>&1
	echo "rc=$? $(grep -c '^ok' "$OUT/t_python.tap") ok, $(grep -c '^not ok' "$OUT/t_python.tap") not ok"
	grep -A3 '^not ok' "$OUT/t_python.tap" | head -40
fi
if [ "${BENCH:-1}" = 1 ]; then
	echo "== bench/compare.py ${COMPARE_ARGS:-}"
	python3 bench/compare.py --out "$OUT" ${COMPARE_ARGS:-} 2>&1 | tee "$OUT/compare.log"
fi

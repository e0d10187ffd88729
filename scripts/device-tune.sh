#!/usr/bin/env bash
# On the GPU machine: tune MiniMax-M3 twice (the second run reuses the
# records), check --frozen, then compare tuned against default variants.
set -u
OUT=${OUT:-/tmp/msagen-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MSAGEN_CACHE_DIR=${MSAGEN_CACHE_DIR:-$(mktemp -d)}
M=build/msagen
echo "== tune (first run)"
/usr/bin/time -f "(%e s)" $M tune specs/minimax-m3.lua --tokens ${TOKENS:-8192,32768,131072} --budget ${BUDGET:-300} --report "$OUT" 2>"$OUT/tune1.err"
echo "rc=$?"; tail -3 "$OUT/tune1.err"
echo "== tune (second run)"
/usr/bin/time -f "(%e s)" $M tune specs/minimax-m3.lua --tokens ${TOKENS:-8192,32768,131072}; echo "rc=$?"
echo "== tune --frozen"
$M tune specs/minimax-m3.lua --tokens ${TOKENS:-8192,32768,131072} --frozen | tail -1; echo "rc=$?"
$M tune --export "$OUT/tune-export.db" | tail -1
if [ "${BENCH:-1}" = 1 ]; then
	echo "== compare.py --only tuned"
	python3 bench/compare.py --out "$OUT/cmp" --only tuned 2>&1 | grep -v -i deprecat
	cp "$OUT/cmp/compare.md" "$OUT/compare-tuned.md"
fi

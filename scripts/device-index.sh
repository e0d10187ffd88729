#!/usr/bin/env bash
# On the GPU machine: the MSA GPU test (index kernels included), then the
# index branch (scores alone, fused top-k bf16 and fp8) by bench/index_ab.py.
# With OLD=DIR (a second build carried along, e.g. of the previous commit)
# the two builds run in turns, ROUNDS rounds, for an A/B on one card.
# Logs in $OUT.
set -u
OUT=${OUT:-/tmp/msagen-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MSAGEN_BIN=$PWD/build/msagen
export MSAGEN_CACHE_DIR=${MSAGEN_CACHE_DIR:-$(mktemp -d)}
if [ "${TEST:-1}" = 1 ]; then
	echo "== t_msa_gpu"
	timeout ${TEST_TIMEOUT:-600} build/tests/t_msa_gpu > "$OUT/t_msa_gpu.tap" 2>&1
	echo "rc=$? $(grep -c '^ok' "$OUT/t_msa_gpu.tap") ok, $(grep -c '^not ok' "$OUT/t_msa_gpu.tap") not ok"
	grep '^not ok' "$OUT/t_msa_gpu.tap"
fi
for round in $(seq ${ROUNDS:-2}); do
	for b in ${OLD:-} build; do
		echo "== index_ab $b (round $round)"
		MSAGEN_LIB=$PWD/$b/libmsagen.so MSAGEN_CACHE_DIR=$(mktemp -d) timeout 300 \
			python3 bench/index_ab.py --tag "$b" --sizes "${SIZES:-32768,131072}" 2>&1
	done
	[ -n "${OLD:-}" ] || break
done

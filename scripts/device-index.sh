#!/usr/bin/env bash
# On the GPU machine: the MSA GPU test (index kernels included), then the
# index branch (scores alone, fused top-k bf16 and fp8) by bench/index_ab.py.
# With OLD=DIR (a second build carried along, e.g. of the previous commit)
# the two builds run in turns, ROUNDS rounds, for an A/B on one card.
# Logs in $OUT.
set -u
. "$(dirname "$0")/device-env.sh"
[ "${TEST:-1}" = 1 ] && gpu_tests build/tests/t_msa_gpu
for round in $(seq ${ROUNDS:-2}); do
	for b in ${OLD:-} build; do
		echo "== index_ab $b (round $round)"
		MSAGEN_LIB=$PWD/$b/libmsagen.so MSAGEN_CACHE_DIR=$(mktemp -d) timeout 300 \
			python3 bench/index_ab.py --tag "$b" --sizes "${SIZES:-32768,131072}" 2>&1
	done
	[ -n "${OLD:-}" ] || break
done

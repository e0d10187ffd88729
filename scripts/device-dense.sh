#!/usr/bin/env bash
# On the GPU machine: the dense test, then the dense_fwd90 schedules and
# ring depths side by side (dense_tiles, variants in turns), then dense
# against cuDNN (compare.py).  With OLD=DIR (a second build carried along,
# e.g. of the previous commit) its dense_tiles runs in turns with ours, two
# rounds each, for an A/B on one card.  Logs in $OUT.
set -u
. "$(dirname "$0")/device-env.sh"
SIZES=${SIZES:-8192 32768}
gpu_tests build/tests/t_dense_gpu
nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv -lms 500 > "$OUT/smi.csv" &
smi=$!
for round in 1 2; do
	for b in ${OLD:-} build; do
		echo "== dense_tiles $b (round $round)"
		MSAGEN_CACHE_DIR=$(mktemp -d) DENSE_TILES_STAGES=${STAGES:-2} \
			timeout 300 "$b/bench/dense_tiles" specs/minimax-m3.lua $SIZES 2>&1 |
			grep dense_fwd90 | sed 's/.bf16.bf16.hq64.hkv4.d128.bk128//'
	done
	[ -n "${OLD:-}" ] || break
done
kill $smi
echo "== SM clock (MHz) during dense_tiles: $(awk -F, 'NR > 1 {print $1 + 0}' "$OUT/smi.csv" | sort -n | awk '{a[NR] = $1} END {print "min", a[1], "median", a[int((NR + 1) / 2)], "max", a[NR]}')"
if [ "${COMPARE:-1}" = 1 ]; then
	echo "== compare.py --only dense --quick"
	python3 bench/compare.py --out "$OUT/cmp" --only dense --quick 2>&1 | grep -E '^dense'
fi

#!/usr/bin/env bash
# On the GPU machine: the GPU tests, then MSA decode alone by
# bench/decode_ab.py.  With OLD=DIR (a second build carried along, e.g. of
# the previous commit: copy all of build/, whose libmsagen.so loads the
# liblua5.4.so.0 beside it) the two builds run in turns, ROUNDS rounds, for an
# A/B on one card; with ENVS="A=1 A=0" settings of an environment variable
# take turns instead.  Logs in $OUT.
set -u
. "$(dirname "$0")/device-env.sh"
[ "${TEST:-1}" = 1 ] && gpu_tests build/tests/t_msa_gpu build/tests/t_dense_gpu
for round in $(seq ${ROUNDS:-2}); do
	if [ -n "${OLD:-}" ]; then
		for b in $OLD build; do
			MSAGEN_LIB=$PWD/$b/libmsagen.so timeout 300 python3 bench/decode_ab.py --tag "$b" ${SHAPES:+--shapes $SHAPES}
		done
	else
		for e in ${ENVS:-MSAGEN_VERBOSE=0}; do
			env "$e" timeout 300 python3 bench/decode_ab.py --tag "$e" ${SHAPES:+--shapes $SHAPES}
		done
		[ -n "${ENVS:-}" ] || break
	fi
done

#!/usr/bin/env bash
# Install what msagen needs to build and test, where it is missing: a C
# compiler, make, prove (perl) and Lua 5.4's development files.  The CUDA
# toolkit (NVRTC and its headers) must already be at $CUDA_HOME.
set -euo pipefail
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
need=()
[ -f /usr/include/lua5.4/lua.h ] || need+=(liblua5.4-dev)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v prove >/dev/null || need+=(perl)
if [ ${#need[@]} -gt 0 ]; then
	echo "setup: installing ${need[*]}"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -f "$CUDA_HOME/include/nvrtc.h" ]; then
	echo "setup: no CUDA toolkit at $CUDA_HOME (set CUDA_HOME)" >&2
	exit 1
fi
echo "setup: ok (CUDA at $CUDA_HOME)"

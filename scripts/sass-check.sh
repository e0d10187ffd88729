#!/usr/bin/env bash
# SASS of every cached kernel: wgmma (HGMMA/QGMMA) and TMA (UTMALDG)
# instruction counts and local-memory traffic (LDL/STL: spills).
# Usage: bash scripts/sass-check.sh CACHE_DIR   (needs cuobjdump)
set -eu
dir=${1:?cache directory}
tmp=$(mktemp -d)
for f in "$dir"/*.msac; do
	name=$(python3 - "$f" "$tmp/k.cubin" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
kl, ml, bl = struct.unpack_from("<QQQ", d, 16)
meta = d[72 + kl:72 + kl + ml].decode()
open(sys.argv[2], "wb").write(d[72 + kl + ml:72 + kl + ml + bl])
print(dict(l.split("=", 1) for l in meta.splitlines() if "=" in l).get("name", "?"))
PY
)
	sass=$(cuobjdump -sass "$tmp/k.cubin")
	printf '%-70s HGMMA %4d  QGMMA %4d  HMMA %4d  UTMALDG %3d  LDL/STL %d\n' "$name" \
		"$(grep -c 'HGMMA' <<<"$sass" || true)" "$(grep -c 'QGMMA' <<<"$sass" || true)" \
		"$(grep -c 'HMMA' <<<"$sass" || true)" "$(grep -c 'UTMALDG' <<<"$sass" || true)" \
		"$(grep -cE 'LDL|STL' <<<"$sass" || true)"
done
rm -rf "$tmp"

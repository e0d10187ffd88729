"""Host-side arguments of a plan (lengths, page table, fp8 scales) turned
into what msa_batch wants.  Pure Python, so it is tested without a GPU."""

import operator

from .errors import MSA_EINVAL, Error

INT32_MAX = 2**31 - 1
SCALE_KEYS = ("q", "k", "v", "qi", "ki")


def _host(x):
    """Tensors and arrays (CUDA ones included) to nested Python lists."""
    return x.tolist() if hasattr(x, "tolist") else x


def int_list(name, x):
    """A 1-D sequence of int32 values; floats and nested lists are errors,
    not silently truncated."""
    x = _host(x)
    try:
        vals = [operator.index(v) for v in x]
    except TypeError:
        raise Error("%s: expected a 1-D sequence of ints, got %s" % (name, _describe(x)),
                    MSA_EINVAL) from None
    for v in vals:
        if not -INT32_MAX - 1 <= v <= INT32_MAX:
            raise Error("%s: %d does not fit in int32" % (name, v), MSA_EINVAL)
    return vals


def _describe(x):
    if isinstance(x, (list, tuple)) and x:
        return "%s of %s" % (type(x).__name__, type(x[0]).__name__)
    return type(x).__name__


def lengths(cu_q, cu_kv):
    """cu_q, cu_kv (batch+1 cumulative counts each) as int lists; the C
    plan checks monotonicity and causality and names the request."""
    q, kv = int_list("cu_q", cu_q), int_list("cu_kv", cu_kv)
    if len(q) < 2:
        raise Error("cu_q: expected batch+1 >= 2 cumulative counts, got %d" % len(q), MSA_EINVAL)
    if len(q) != len(kv):
        raise Error("cu_kv: expected %d cumulative counts like cu_q, got %d" % (len(q), len(kv)),
                    MSA_EINVAL)
    return q, kv


def page_table(table, batch):
    """[batch, pages_per_req] -> (flat row-major list, pages_per_req)."""
    rows = _host(table)
    try:
        rows = list(rows)
    except TypeError:
        raise Error("page_table: expected a 2-D [batch, pages_per_req] table, got %s"
                    % type(rows).__name__, MSA_EINVAL) from None
    if len(rows) != batch:
        raise Error("page_table: expected %d rows (one per request), got %d" % (batch, len(rows)),
                    MSA_EINVAL)
    flat, per = [], None
    for r, row in enumerate(rows):
        vals = int_list("page_table[%d]" % r, row)
        if per is None:
            per = len(vals)
        elif len(vals) != per:
            raise Error("page_table[%d]: expected %d pages like row 0, got %d" % (r, per, len(vals)),
                        MSA_EINVAL)
        flat.extend(vals)
    return flat, per


def pages_needed(flat, per, cu_kv, block):
    """One past the highest page id the requests use: the least num_pages
    a cache tensor may have when the caller gives none."""
    top = -1
    for r in range(len(cu_kv) - 1):
        need = (cu_kv[r + 1] - cu_kv[r] + block - 1) // block
        for pg in flat[r * per:r * per + min(need, per)]:
            top = max(top, pg)
    return top + 1


def scales(s):
    """{"q", "k", "v", "qi", "ki"} -> floats (0: 1, as msa_batch says)."""
    if s is None:
        return {k: 0.0 for k in SCALE_KEYS}
    if not hasattr(s, "items"):
        raise Error("scales: expected a dict with keys %s, got %s"
                    % ("/".join(SCALE_KEYS), type(s).__name__), MSA_EINVAL)
    bad = [k for k in s if k not in SCALE_KEYS]
    if bad:
        raise Error("scales: unknown key %r (expected %s)" % (bad[0], ", ".join(SCALE_KEYS)),
                    MSA_EINVAL)
    out = {}
    for k in SCALE_KEYS:
        v = s.get(k, 0.0)
        v = v.item() if hasattr(v, "item") else v
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise Error("scales[%r]: expected a number, got %s" % (k, type(v).__name__),
                        MSA_EINVAL) from None
        if out[k] < 0 or out[k] != out[k]:
            raise Error("scales[%r] = %r must be >= 0 (0 means 1)" % (k, out[k]), MSA_EINVAL)
    return out

/* spec.c - load a spec: run the Lua file in a sandbox, check every layer{}
 * it declares and hand the layers back as an msa_spec.
 *
 * A spec is code (sweeps are loops), so it runs with a memory cap, an
 * instruction budget and only the base, string, table and math libraries.
 * Every check fails with "file:line: field = value <why>", the line being
 * that of the offending field when the source text shows it.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SPEC_MEM_LIMIT ((size_t)64 << 20)	/* say so in MEM_MSG too */
#define MEM_MSG "memory limit (64 MiB) exceeded"
#define BUDGET_MSG "instruction budget exceeded (infinite loop?)"
#define SPEC_BUDGET 100000000L	/* VM instructions, ~0.5 s */
#define SPEC_HOOK_EVERY 1000
#define SPEC_MAX_LAYERS 1024
#define SPEC_MAX_HEADS 1024
#define NAME_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

/* One run of one spec.  It is the allocator's ud, so hooks and library
 * functions reach it through lua_getallocf. */
struct loader {
	const char *chunk;	/* name in messages: the path as given */
	const char *src;	/* spec text, searched for a field's line */
	size_t srclen;
	size_t mem_used;	/* bytes the Lua state holds */
	int mem_hit;		/* the cap failed a request for good */
	int refused;		/* the cap refused the last growth request... */
	const void *refused_ptr;	/* ...this one, which Lua may retry */
	size_t refused_size;
	long steps_left;	/* instructions left in the budget */
	int budget_hit;
	int budget_line;
	char layer_err[512];	/* first layer{} failure, even if pcall'd away */
	msa_layer *layers;	/* grown by layer{}; not Lua memory, so a
				   longjmp cannot leak it */
	int nlayers;
	int cap;
};

/* Checking one layer{} call. */
struct lctx {
	lua_State *L;
	struct loader *ld;
	int line;		/* of the layer{} call */
	msa_layer *lay;
};

struct range {
	int lo, hi, step;
};

static const struct range R_HEADS = {1, SPEC_MAX_HEADS, 1};
static const struct range R_DIM = {64, 128, 64};
static const struct range R_TOPK = {1, 64, 1};
static const struct range R_BIT = {0, 1, 1};
static const struct range R_SINK = {0, 64, 1};
static const struct range R_POS = {1, INT_MAX, 1};

static const char *const layer_keys[] = {
	"name", "heads", "head_dim", "index_dim", "block", "topk",
	"local_blocks", "sink_blocks", "dtype", "causal", "scale", "arch",
	"tune", NULL};
static const char *const heads_keys[] = {"q", "kv", "index", NULL};
static const char *const dtype_keys[] = {"q", "kv", "index", "out", NULL};
static const char *const arch_names[] = {"sm_80", "sm_86", "sm_89", "sm_90a", NULL};

static struct loader *loader_of(lua_State *L)
{
	void *ud;
	lua_getallocf(L, &ud);
	return ud;
}

/* ------------------------------------------------------------ limits */

static void *spec_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct loader *ld = ud;
	void *p;
	if (!ptr)
		osize = 0;	/* it was a type tag */
	if (nsize == 0) {
		free(ptr);
		ld->mem_used -= osize;
		return NULL;
	}
	if (nsize > osize) {
		/* After a refusal Lua runs an emergency GC and asks again; only
		 * when that retry fails too did the script see an error. */
		if (ld->refused && (ptr != ld->refused_ptr || nsize != ld->refused_size))
			ld->mem_hit = 1;
		ld->refused = 0;
		if (nsize - osize > SPEC_MEM_LIMIT - ld->mem_used) {
			ld->refused = 1;
			ld->refused_ptr = ptr;
			ld->refused_size = nsize;
			return NULL;
		}
	}
	p = realloc(ptr, nsize);
	if (p)
		ld->mem_used = ld->mem_used - osize + nsize;
	return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Once spent, the budget stays spent: the hook fires on every instruction
 * and raises again, so a pcall in the spec cannot swallow the error. */
__attribute__((noreturn)) static void out_of_budget(lua_State *L, int line)
{
	struct loader *ld = loader_of(L);
	if (!ld->budget_hit)
		ld->budget_line = line;
	ld->budget_hit = 1;
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
	lua_pushliteral(L, BUDGET_MSG);
	lua_error(L);
	__builtin_unreachable();	/* lua_error longjmps */
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
	struct loader *ld = loader_of(L);
	if (!ld->budget_hit && ld->steps_left > SPEC_HOOK_EVERY) {
		ld->steps_left -= SPEC_HOOK_EVERY;
		return;
	}
	out_of_budget(L, lua_getinfo(L, "l", ar) ? ar->currentline : 0);
}

/* Charges work a C function does in a loop the count hook cannot see. */
static void charge(lua_State *L, lua_Unsigned n)
{
	struct loader *ld = loader_of(L);
	lua_Debug ar;
	if (!ld->budget_hit && n < (lua_Unsigned)ld->steps_left) {
		ld->steps_left -= (long)n;
		return;
	}
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar))
		out_of_budget(L, ar.currentline);
	out_of_budget(L, 0);
}

/* ------------------------------------------------------------ sandbox */

/* The library function a wrapper stands in front of (upvalue 1).  Called
 * in our frame, so its errors still name the spec's line. */
static int call_orig(lua_State *L)
{
	return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* A finalizer runs with hooks off (lgc.c GCTM), out of the budget's reach. */
static int sb_setmetatable(lua_State *L)
{
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "__gc metamethods are not allowed in specs");
		lua_pop(L, 1);
	}
	return call_orig(L);
}

/* string.rep("", 2^62) allocates nothing and loops forever in C.  A result
 * over the cap fails as the allocator would (rep's own "too large" only
 * starts at 2 GiB). */
static int sb_rep(lua_State *L)
{
	size_t len, seplen = 0;
	lua_Integer n;

	luaL_checklstring(L, 1, &len);
	n = luaL_checkinteger(L, 2);
	luaL_optlstring(L, 3, "", &seplen);
	if (n > 0 && len + seplen == 0) {
		lua_pushliteral(L, "");
		return 1;
	}
	if (n > 0 && (lua_Unsigned)n > SPEC_MEM_LIMIT / (len + seplen)) {
		loader_of(L)->mem_hit = 1;
		return luaL_error(L, MEM_MSG);
	}
	return call_orig(L);
}

/* table.insert(t, pos, v) and table.remove(t, pos) shift #t - pos
 * elements in C; __len could lie about #t, so only plain tables. */
static void charge_shift(lua_State *L)
{
	lua_Integer n, pos;

	luaL_checktype(L, 1, LUA_TTABLE);
	if (lua_getmetatable(L, 1))
		luaL_error(L, "table.insert/remove at a position need a table without a metatable");
	n = (lua_Integer)lua_rawlen(L, 1);
	pos = luaL_optinteger(L, 2, n);
	if (pos >= 1 && pos <= n)
		charge(L, (lua_Unsigned)(n - pos) + 1);
}

static int sb_insert(lua_State *L)
{
	if (lua_gettop(L) == 3)
		charge_shift(L);
	return call_orig(L);
}

static int sb_remove(lua_State *L)
{
	if (lua_gettop(L) >= 2)
		charge_shift(L);
	return call_orig(L);
}

/* table.move(a, f, e, t) loops e - f + 1 times even over nils. */
static int sb_move(lua_State *L)
{
	lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
	if (e >= f)
		charge(L, (lua_Unsigned)e - (lua_Unsigned)f + 1);
	return call_orig(L);
}

static int sb_print(lua_State *L)
{
	int n = lua_gettop(L);
	for (int i = 1; i <= n; i++) {
		size_t len;
		const char *s = luaL_tolstring(L, i, &len);
		if (i > 1)
			fputc('\t', stderr);
		fwrite(s, 1, len, stderr);
		lua_pop(L, 1);
	}
	fputc('\n', stderr);
	return 0;
}

static void set_fields(lua_State *L, const char *const *names, lua_CFunction fn)
{
	for (; *names; names++) {
		if (fn) {
			lua_getfield(L, -1, *names);
			lua_pushcclosure(L, fn, 1);
		} else {
			lua_pushnil(L);
		}
		lua_setfield(L, -2, *names);
	}
}

static int l_layer(lua_State *L);

/* Nothing that reaches files, processes, other chunks or bytecode.  Pattern
 * matching is out, since it can backtrack for ages inside C; so is xpcall:
 * after the budget hook raises, hooks stay off until the error reaches a
 * pcall, and xpcall's handler runs before that, unbounded. */
static void open_sandbox(lua_State *L)
{
	static const luaL_Reg libs[] = {
		{LUA_GNAME, luaopen_base}, {LUA_STRLIBNAME, luaopen_string},
		{LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math}};
	static const char *const gone[] = {"dofile", "loadfile", "load", "require",
		"collectgarbage", "warn", "xpcall", NULL};
	static const char *const gone_str[] = {"dump", "find", "match", "gmatch",
		"gsub", "pack", "packsize", "unpack", NULL};

	for (int i = 0; i < MSA_COUNT(libs); i++) {
		luaL_requiref(L, libs[i].name, libs[i].func, 1);
		lua_pop(L, 1);
	}
	lua_pushglobaltable(L);
	set_fields(L, gone, NULL);
	set_fields(L, (const char *const[]){"setmetatable", NULL}, sb_setmetatable);
	lua_pushcfunction(L, sb_print);
	lua_setfield(L, -2, "print");
	lua_pushcfunction(L, l_layer);
	lua_setfield(L, -2, "layer");
	lua_getfield(L, -1, LUA_STRLIBNAME);	/* also the strings' __index */
	set_fields(L, gone_str, NULL);
	set_fields(L, (const char *const[]){"rep", NULL}, sb_rep);
	lua_getfield(L, -2, LUA_TABLIBNAME);
	set_fields(L, (const char *const[]){"insert", NULL}, sb_insert);
	set_fields(L, (const char *const[]){"remove", NULL}, sb_remove);
	set_fields(L, (const char *const[]){"move", NULL}, sb_move);
	lua_pop(L, 3);
}

/* ------------------------------------------------------------ field lines */

struct scan {
	const char *p, *end;
	int line;
};

/* Level of a long bracket "[==[" at p, or -1. */
static int long_level(const char *p, const char *end)
{
	int n = 0;
	if (p >= end || *p != '[')
		return -1;
	for (p++; p < end && *p == '='; p++)
		n++;
	return p < end && *p == '[' ? n : -1;
}

/* Past the "]==]" closing the long bracket of this level opened at p. */
static const char *skip_long(struct scan *s, const char *p, int level)
{
	for (p += level + 2; p < s->end; p++) {
		int i = 1;
		if (*p == '\n')
			s->line++;
		if (*p != ']' || s->end - p < level + 2)
			continue;
		while (i <= level && p[i] == '=')
			i++;
		if (i > level && p[i] == ']')
			return p + level + 2;
	}
	return s->end;
}

/* Skips a comment or string at s->p; 0 if none starts there. */
static int skip_noise(struct scan *s)
{
	const char *p = s->p, *e = s->end;
	int level;
	char q;
	if (e - p >= 2 && p[0] == '-' && p[1] == '-') {
		if ((level = long_level(p + 2, e)) >= 0) {
			s->p = skip_long(s, p + 2, level);
			return 1;
		}
		while (p < e && *p != '\n')
			p++;
		s->p = p;
		return 1;
	}
	if ((level = long_level(p, e)) >= 0) {
		s->p = skip_long(s, p, level);
		return 1;
	}
	if (*p != '"' && *p != '\'')
		return 0;
	for (q = *p++; p < e && *p != q && *p != '\n'; p++)
		if (*p == '\\' && p + 1 < e && p[1] != '\n')
			p++;
	s->p = p < e && *p == q ? p + 1 : p;
	return 1;
}

static int is_word(char c, int first)
{
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (!first && c >= '0' && c <= '9');
}

/* Whether p (after a name) starts "=" but not "==". */
static int is_assign(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
		p++;
	return p < end && *p == '=' && (p + 1 == end || p[1] != '=');
}

/* Whether p (after the name "layer") starts a call: layer{ or layer(. */
static int is_call(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return p < end && (*p == '{' || *p == '(');
}

/* The line of a field path ("heads.q", "tune.k.p[2]") in the spec text:
 * each key as "key =" in turn, from the call line up to the next layer
 * call.  Keys not found: the line of the last one found, or the call's. */
static int field_line(const struct loader *ld, int from, const char *path)
{
	char buf[160], *keys[4], *tok, *save;
	struct scan s = {ld->src, ld->src + ld->srclen, 1};
	int nkeys = 0, found = 0, line = from, calls = 0;

	msa_fmt(buf, sizeof buf, "%s", path);
	buf[strcspn(buf, "[")] = '\0';
	for (tok = strtok_r(buf, ".", &save); tok && nkeys < 4; tok = strtok_r(NULL, ".", &save))
		keys[nkeys++] = tok;
	if (from <= 0 || nkeys == 0)
		return from;
	for (; s.p < s.end && s.line < from; s.p++)
		s.line += *s.p == '\n';
	while (s.p < s.end && found < nkeys) {
		const char *w = s.p;
		size_t n = 0;
		if (skip_noise(&s))
			continue;
		s.p++;
		if (*w == '\n')
			s.line++;
		if (!is_word(*w, 1) || (w > ld->src && is_word(w[-1], 0)))
			continue;
		while (w + n < s.end && is_word(w[n], 0))
			n++;
		s.p = w + n;
		if (n == 5 && !memcmp(w, "layer", 5) && is_call(s.p, s.end)) {
			if (calls++)
				break;
		} else if (strlen(keys[found]) == n && !memcmp(w, keys[found], n) &&
			   is_assign(s.p, s.end)) {
			found++;
			line = s.line;
		}
	}
	return line;
}

/* ------------------------------------------------------------ checks */

/* Raises "file:line: message"; the line is that of path's field if the
 * text shows it, else of the layer{} call.  The first failure is also kept
 * on the loader, so a spec cannot pcall a bad layer away. */
__attribute__((noreturn, format(printf, 3, 4)))
static void fail(struct lctx *c, const char *path, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	int line = path[0] ? field_line(c->ld, c->line, path) : c->line;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (line > 0)
		lua_pushfstring(c->L, "%s:%d: %s", c->ld->chunk, line, msg);
	else
		lua_pushfstring(c->L, "%s: %s", c->ld->chunk, msg);
	if (!c->ld->layer_err[0])
		msa_fmt(c->ld->layer_err, sizeof c->ld->layer_err, "%s", lua_tostring(c->L, -1));
	lua_error(c->L);
	__builtin_unreachable();
}

/* The value at idx as a message shows it: 128, 64.5, "128", {...}, nil. */
static void repr(lua_State *L, int idx, char *buf, size_t n)
{
	size_t len;
	const char *s;
	switch (lua_type(L, idx)) {
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			msa_fmt(buf, n, "%lld", (long long)lua_tointeger(L, idx));
		else
			msa_fmt(buf, n, "%.14g", (double)lua_tonumber(L, idx));
		break;
	case LUA_TSTRING:
		s = lua_tolstring(L, idx, &len);
		msa_fmt(buf, n, "\"%.*s%s\"", len > 40 ? 40 : (int)len, s, len > 40 ? "..." : "");
		break;
	case LUA_TBOOLEAN:
		msa_fmt(buf, n, "%s", lua_toboolean(L, idx) ? "true" : "false");
		break;
	case LUA_TTABLE:
		msa_fmt(buf, n, "{...}");
		break;
	default:
		msa_fmt(buf, n, "%s", luaL_typename(L, idx));
	}
}

/* A table key as a path part: "name", or "[1]" for a non-string key. */
static void key_name(lua_State *L, int idx, char *buf, size_t n)
{
	char r[64];
	if (lua_type(L, idx) == LUA_TSTRING) {
		msa_fmt(buf, n, "%.40s", lua_tostring(L, idx));
		return;
	}
	repr(L, idx, r, sizeof r);
	msa_fmt(buf, n, "[%s]", r);
}

static int in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (!strcmp(s, *list))
			return 1;
	return 0;
}

/* Pushes t[key] without metamethods: checking runs no spec code. */
static int rawfield(lua_State *L, int t, const char *key)
{
	lua_pushstring(L, key);
	return lua_rawget(L, t);
}

/* Fails on a key of table t not in keys (a misspelt field would otherwise
 * be ignored); of several, the first in sort order, for stable messages. */
static void check_keys(struct lctx *c, int t, const char *prefix, const char *const *keys)
{
	lua_State *L = c->L;
	char bad[64] = "", name[64], want[160] = "", path[160];
	int nbad = 0;

	lua_pushnil(L);
	while (lua_next(L, t)) {
		key_name(L, -2, name, sizeof name);
		if (!(lua_type(L, -2) == LUA_TSTRING && in_list(lua_tostring(L, -2), keys)) &&
		    (!nbad++ || strcmp(name, bad) < 0))
			memcpy(bad, name, sizeof bad);
		lua_pop(L, 1);
	}
	if (!nbad)
		return;
	for (; *keys; keys++)
		msa_fmt(want + strlen(want), sizeof want - strlen(want), "%s%s",
			want[0] ? ", " : "", *keys);
	msa_fmt(path, sizeof path, "%s%s%s", prefix, prefix[0] && bad[0] != '[' ? "." : "", bad);
	fail(c, path, "%s is not a field (expected %s)", path, want);
}

/* The integer at idx (an integral float will do), within r. */
static int to_int(struct lctx *c, int idx, const char *path, const struct range *r)
{
	lua_Integer v = 0;
	int isint = 0;
	char s[64];

	if (lua_type(c->L, idx) == LUA_TNUMBER)
		v = lua_tointegerx(c->L, idx, &isint);
	if (!isint) {
		repr(c->L, idx, s, sizeof s);
		fail(c, path, "%s = %s must be an integer", path, s);
	}
	if (v >= r->lo && v <= r->hi && (v - r->lo) % r->step == 0)
		return (int)v;
	if (r->hi - r->lo == r->step)
		msa_fmt(s, sizeof s, "%d or %d", r->lo, r->hi);
	else if (r->hi == INT_MAX)
		msa_fmt(s, sizeof s, ">= %d", r->lo);
	else
		msa_fmt(s, sizeof s, "%d..%d", r->lo, r->hi);
	fail(c, path, "%s = %lld is out of range (%s)", path, (long long)v, s);
}

/* t[key] into *v (left as the default when absent); 1 if present. */
static int int_field(struct lctx *c, int t, const char *key, const char *path,
		     const struct range *r, int *v)
{
	int present = rawfield(c->L, t, key) != LUA_TNIL;
	if (present)
		*v = to_int(c, -1, path, r);
	lua_pop(c->L, 1);
	return present;
}

static void need_int(struct lctx *c, int t, const char *key, const char *path,
		     const struct range *r, int *v)
{
	if (!int_field(c, t, key, path, r, v))
		fail(c, strchr(path, '.') ? path : "", "%s is required", path);
}

/* Length of the list at idx; fails unless its keys are exactly 1..n. */
static int list_len(struct lctx *c, int idx, const char *path, const char *what)
{
	lua_State *L = c->L;
	lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
	int ok = 1;

	lua_pushnil(L);
	while (lua_next(L, idx)) {
		count++;
		ok &= lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= n;
		lua_pop(L, 1);
	}
	if (!ok || count != n || n > INT_MAX)
		fail(c, path, "%s = {...} must be %s", path, what);
	return (int)n;
}

static void parse_name(struct lctx *c, int t)
{
	struct loader *ld = c->ld;
	char r[64];
	size_t n;
	const char *s;
	int type = rawfield(c->L, t, "name");

	if (type == LUA_TNIL)
		fail(c, "", "name is required");
	repr(c->L, -1, r, sizeof r);
	if (type != LUA_TSTRING)
		fail(c, "name", "name = %s must be a string", r);
	s = lua_tolstring(c->L, -1, &n);
	if (n == 0 || n >= sizeof c->lay->name || strspn(s, NAME_CHARS) != n)
		fail(c, "name", "name = %s must be 1 to %d characters of [A-Za-z0-9_.-]",
		     r, (int)sizeof c->lay->name - 1);
	for (int i = 0; i < ld->nlayers; i++)
		if (!strcmp(ld->layers[i].name, s))
			fail(c, "name", "name = %s is used twice (first at line %d)", r, ld->layers[i].line);
	memcpy(c->lay->name, s, n + 1);
	lua_pop(c->L, 1);
}

static void parse_heads(struct lctx *c, int t)
{
	msa_layer *l = c->lay;
	char r[64];
	int type = rawfield(c->L, t, "heads"), h = lua_gettop(c->L);

	if (type == LUA_TNIL)
		fail(c, "", "heads is required");
	if (type != LUA_TTABLE) {
		repr(c->L, h, r, sizeof r);
		fail(c, "heads", "heads = %s must be a table {q = ..., kv = ...}", r);
	}
	check_keys(c, h, "heads", heads_keys);
	need_int(c, h, "q", "heads.q", &R_HEADS, &l->heads_q);
	need_int(c, h, "kv", "heads.kv", &R_HEADS, &l->heads_kv);
	l->index_heads = l->heads_kv;
	int_field(c, h, "index", "heads.index", &R_HEADS, &l->index_heads);
	if (l->heads_q % l->heads_kv)
		fail(c, "heads.q", "heads.q = %d is not a multiple of heads.kv = %d",
		     l->heads_q, l->heads_kv);
	if (l->index_heads != l->heads_kv)
		fail(c, "heads.index", "heads.index = %d must equal heads.kv = %d (one index head per KV group)",
		     l->index_heads, l->heads_kv);
	l->group = l->heads_q / l->heads_kv;
	lua_pop(c->L, 1);
}

static void parse_sizes(struct lctx *c, int t)
{
	msa_layer *l = c->lay;

	need_int(c, t, "head_dim", "head_dim", &R_DIM, &l->head_dim);
	l->index_dim = l->head_dim;
	int_field(c, t, "index_dim", "index_dim", &R_DIM, &l->index_dim);
	l->block = 128;
	int_field(c, t, "block", "block", &R_DIM, &l->block);
	l->topk = 16;
	int_field(c, t, "topk", "topk", &R_TOPK, &l->topk);
	l->local_blocks = 1;
	int_field(c, t, "local_blocks", "local_blocks", &R_BIT, &l->local_blocks);
	l->sink_blocks = 0;
	int_field(c, t, "sink_blocks", "sink_blocks", &R_SINK, &l->sink_blocks);
	if (l->local_blocks + l->sink_blocks > l->topk)
		fail(c, "sink_blocks", "local_blocks + sink_blocks = %d exceeds topk = %d",
		     l->local_blocks + l->sink_blocks, l->topk);
}

static msa_dtype to_dtype(struct lctx *c, int idx, const char *path)
{
	char r[64];
	repr(c->L, idx, r, sizeof r);
	if (lua_type(c->L, idx) != LUA_TSTRING)
		fail(c, path, "%s = %s must be a string", path, r);
	for (int d = MSA_DT_BF16; d <= MSA_DT_FP8_E4M3; d++)
		if (!strcmp(lua_tostring(c->L, idx), msa_dtype_name((msa_dtype)d)))
			return (msa_dtype)d;
	fail(c, path, "%s = %s is not a dtype (expected bf16, fp16, fp8_e4m3)", path, r);
}

static int dtype_field(struct lctx *c, int t, const char *key, const char *path, msa_dtype *d)
{
	int present = rawfield(c->L, t, key) != LUA_TNIL;
	if (present)
		*d = to_dtype(c, -1, path);
	lua_pop(c->L, 1);
	return present;
}

/* dtype = "fp16" sets q, kv and index; out follows q unless q is fp8,
 * whose output is bf16 (no fp8 output). */
static void parse_dtypes(struct lctx *c, int t)
{
	msa_layer *l = c->lay;
	char r[64];
	int type = rawfield(c->L, t, "dtype"), d = lua_gettop(c->L), have_index = 0, have_out = 0;

	l->dtype_q = l->dtype_kv = MSA_DT_BF16;
	if (type == LUA_TSTRING) {
		l->dtype_q = l->dtype_kv = to_dtype(c, d, "dtype");
	} else if (type == LUA_TTABLE) {
		check_keys(c, d, "dtype", dtype_keys);
		dtype_field(c, d, "q", "dtype.q", &l->dtype_q);
		dtype_field(c, d, "kv", "dtype.kv", &l->dtype_kv);
		have_index = dtype_field(c, d, "index", "dtype.index", &l->dtype_index);
		have_out = dtype_field(c, d, "out", "dtype.out", &l->dtype_out);
	} else if (type != LUA_TNIL) {
		repr(c->L, d, r, sizeof r);
		fail(c, "dtype", "dtype = %s must be a dtype name or a table {q = ..., kv = ..., index = ..., out = ...}", r);
	}
	if (!have_index)
		l->dtype_index = l->dtype_q;
	if (!have_out)
		l->dtype_out = l->dtype_q == MSA_DT_FP8_E4M3 ? MSA_DT_BF16 : l->dtype_q;
	if (l->dtype_out == MSA_DT_FP8_E4M3)
		fail(c, "dtype.out", "dtype.out = fp8_e4m3 is not supported (use bf16 or fp16)");
	lua_pop(c->L, 1);
}

static void parse_flags(struct lctx *c, int t)
{
	msa_layer *l = c->lay;
	char r[64];
	int type = rawfield(c->L, t, "causal");

	repr(c->L, -1, r, sizeof r);
	if (type != LUA_TNIL && type != LUA_TBOOLEAN)
		fail(c, "causal", "causal = %s must be a boolean", r);
	l->causal = type == LUA_TNIL || lua_toboolean(c->L, -1);
	lua_pop(c->L, 1);

	type = rawfield(c->L, t, "scale");
	repr(c->L, -1, r, sizeof r);
	l->scale = 1.0 / sqrt((double)l->head_dim);
	if (type == LUA_TNUMBER)
		l->scale = (double)lua_tonumber(c->L, -1);
	else if (type != LUA_TNIL)
		fail(c, "scale", "scale = %s must be a number", r);
	if (!(l->scale > 0) || !isfinite(l->scale))
		fail(c, "scale", "scale = %s is out of range (a finite number > 0)", r);
	lua_pop(c->L, 1);
}

static void add_arch(struct lctx *c, int idx, const char *path)
{
	msa_layer *l = c->lay;
	char r[64];
	const char *s;

	repr(c->L, idx, r, sizeof r);
	if (lua_type(c->L, idx) != LUA_TSTRING)
		fail(c, path, "%s = %s must be a string", path, r);
	s = lua_tostring(c->L, idx);
	if (!in_list(s, arch_names))
		fail(c, path, "%s = %s is not a supported arch (expected sm_80, sm_86, sm_89, sm_90a)", path, r);
	for (int i = 0; i < l->narch; i++)
		if (!strcmp(l->arch[i], s))
			fail(c, path, "%s = %s is listed twice", path, r);
	msa_fmt(l->arch[l->narch++], sizeof l->arch[0], "%s", s);
}

static void parse_arch(struct lctx *c, int t)
{
	msa_layer *l = c->lay;
	char r[64], path[32];
	int type = rawfield(c->L, t, "arch"), a = lua_gettop(c->L), n;

	if (type == LUA_TNIL) {
		msa_fmt(l->arch[l->narch++], sizeof l->arch[0], "sm_90a");
	} else if (type == LUA_TSTRING) {
		add_arch(c, a, "arch");
	} else if (type == LUA_TTABLE) {
		n = list_len(c, a, "arch", "a list of arch names");
		if (n == 0)
			fail(c, "arch", "arch = {} lists no arch");
		if (n > MSA_MAX_ARCH)
			fail(c, "arch", "arch lists %d archs (at most %d)", n, MSA_MAX_ARCH);
		for (int i = 1; i <= n; i++) {
			lua_rawgeti(c->L, a, i);
			msa_fmt(path, sizeof path, "arch[%d]", i);
			add_arch(c, -1, path);
			lua_pop(c->L, 1);
		}
	} else {
		repr(c->L, a, r, sizeof r);
		fail(c, "arch", "arch = %s must be an arch name or a list of them", r);
	}
	lua_pop(c->L, 1);
}

/* The string key at idx (1 to 31 characters); path becomes prefix.key. */
static const char *tune_key(struct lctx *c, int idx, const char *prefix, const char *what,
			    char *path, size_t n)
{
	char kn[64];
	size_t len;
	const char *k;

	if (lua_type(c->L, idx) != LUA_TSTRING) {
		key_name(c->L, idx, kn, sizeof kn);
		msa_fmt(path, n, "%s%s", prefix, kn);
		fail(c, path, "%s is not a %s name (keys must be strings)", path, what);
	}
	k = lua_tolstring(c->L, idx, &len);
	msa_fmt(path, n, "%s.%s", prefix, k);
	if (len == 0 || len > 31 || strlen(k) != len)
		fail(c, path, "%s: a %s name must be 1 to 31 characters", path, what);
	return k;
}

static void parse_tune_values(struct lctx *c, int v, const char *path, msa_tune_param *p)
{
	char r[64], ipath[160];
	int n;

	if (lua_type(c->L, v) == LUA_TNUMBER) {
		p->values[p->nvalues++] = to_int(c, v, path, &R_POS);
		return;
	}
	repr(c->L, v, r, sizeof r);
	if (lua_type(c->L, v) != LUA_TTABLE)
		fail(c, path, "%s = %s must be an integer or a list of integers", path, r);
	n = list_len(c, v, path, "an integer or a list of integers");
	if (n == 0)
		fail(c, path, "%s = {} lists no value", path);
	if (n > MSA_MAX_TUNE_VALUES)
		fail(c, path, "%s lists %d values (at most %d)", path, n, MSA_MAX_TUNE_VALUES);
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(c->L, v, i);
		msa_fmt(ipath, sizeof ipath, "%s[%d]", path, i);
		p->values[p->nvalues] = to_int(c, -1, ipath, &R_POS);
		for (int j = 0; j < p->nvalues; j++)
			if (p->values[j] == p->values[p->nvalues])
				fail(c, ipath, "%s = %d is listed twice", ipath, p->values[j]);
		p->nvalues++;
		lua_pop(c->L, 1);
	}
}

static int cmp_kernel(const void *a, const void *b)
{
	return strcmp(((const msa_tune_space *)a)->kernel, ((const msa_tune_space *)b)->kernel);
}

static int cmp_param(const void *a, const void *b)
{
	return strcmp(((const msa_tune_param *)a)->name, ((const msa_tune_param *)b)->name);
}

/* Keys are sorted: table order varies from run to run (string hashes are
 * seeded), and variant lists should not. */
static void parse_tune_kernel(struct lctx *c, int k, const char *kpath, msa_tune_space *ks)
{
	char r[64], path[160];
	const char *name;

	if (lua_type(c->L, k) != LUA_TTABLE) {
		repr(c->L, k, r, sizeof r);
		fail(c, kpath, "%s = %s must be a table {param = {values}}", kpath, r);
	}
	lua_pushnil(c->L);
	while (lua_next(c->L, k)) {
		name = tune_key(c, -2, kpath, "parameter", path, sizeof path);
		if (ks->nparams == MSA_MAX_TUNE_PARAMS)
			fail(c, kpath, "%s lists more than %d parameters", kpath, MSA_MAX_TUNE_PARAMS);
		msa_fmt(ks->params[ks->nparams].name, sizeof ks->params[0].name, "%s", name);
		parse_tune_values(c, lua_gettop(c->L), path, &ks->params[ks->nparams++]);
		lua_pop(c->L, 1);
	}
	qsort(ks->params, (size_t)ks->nparams, sizeof ks->params[0], cmp_param);
}

static void parse_tune(struct lctx *c, int t)
{
	msa_layer *l = c->lay;
	char r[64], path[160];
	const char *name;
	int type = rawfield(c->L, t, "tune"), tt = lua_gettop(c->L);

	if (type != LUA_TNIL && type != LUA_TTABLE) {
		repr(c->L, tt, r, sizeof r);
		fail(c, "tune", "tune = %s must be a table {kernel = {param = {values}}}", r);
	}
	if (type == LUA_TTABLE) {
		lua_pushnil(c->L);
		while (lua_next(c->L, tt)) {
			name = tune_key(c, -2, "tune", "kernel", path, sizeof path);
			if (l->ntune == MSA_MAX_TUNE_KERNELS)
				fail(c, "tune", "tune lists more than %d kernels", MSA_MAX_TUNE_KERNELS);
			msa_fmt(l->tune[l->ntune].kernel, sizeof l->tune[0].kernel, "%s", name);
			parse_tune_kernel(c, lua_gettop(c->L), path, &l->tune[l->ntune++]);
			lua_pop(c->L, 1);
		}
		qsort(l->tune, (size_t)l->ntune, sizeof l->tune[0], cmp_kernel);
	}
	lua_pop(c->L, 1);
}

/* ------------------------------------------------------------ running */

/* The line of the Lua code calling layer{} (past C frames such as pcall). */
static int caller_line(lua_State *L)
{
	lua_Debug ar;
	for (int level = 1; lua_getstack(L, level, &ar); level++)
		if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
			return ar.currentline;
	return 0;
}

static void add_layer(struct lctx *c)
{
	struct loader *ld = c->ld;
	msa_layer *p;
	int cap;

	if (ld->nlayers == SPEC_MAX_LAYERS)
		fail(c, "", "too many layers (at most %d)", SPEC_MAX_LAYERS);
	if (ld->nlayers == ld->cap) {
		cap = ld->cap ? 2 * ld->cap : 8;
		p = realloc(ld->layers, (size_t)cap * sizeof *p);
		if (!p)
			fail(c, "", "out of memory");
		ld->layers = p;
		ld->cap = cap;
	}
	ld->layers[ld->nlayers++] = *c->lay;
}

/* layer{...}: check one layer and record it. */
static int l_layer(lua_State *L)
{
	msa_layer lay;
	struct lctx c = {L, loader_of(L), caller_line(L), &lay};

	memset(&lay, 0, sizeof lay);
	if (lua_gettop(L) != 1 || lua_type(L, 1) != LUA_TTABLE)
		fail(&c, "", "layer{...} takes one table, got %s",
		     lua_gettop(L) ? luaL_typename(L, 1) : "nothing");
	check_keys(&c, 1, "", layer_keys);
	parse_name(&c, 1);
	parse_heads(&c, 1);
	parse_sizes(&c, 1);
	parse_dtypes(&c, 1);
	parse_flags(&c, 1);
	parse_arch(&c, 1);
	parse_tune(&c, 1);
	msa_fmt(lay.file, sizeof lay.file, "%s", c.ld->chunk);
	lay.line = c.line;
	add_layer(&c);
	return 0;
}

/* Keeps "file:line: msg" as it is: specs are short, a traceback is noise. */
static int msghandler(lua_State *L)
{
	if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER)
		lua_tostring(L, 1);
	else
		lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	return 1;
}

/* The one protected entry: everything that can raise happens in here. */
static int pmain(lua_State *L)
{
	struct loader *ld = loader_of(L);
	const char *name;

	open_sandbox(L);
	name = lua_pushfstring(L, "@%s", ld->chunk);
	if (luaL_loadbufferx(L, ld->src, ld->srclen, name, "t") != LUA_OK)
		return lua_error(L);
	lua_call(L, 0, 0);
	return 0;
}

/* The outcome of a run, from the first thing that went wrong. */
static int report(struct loader *ld, lua_State *L, int status, char *err, size_t errlen)
{
	const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown error";
	size_t n = strlen(ld->chunk);

	if (ld->mem_hit || ld->refused)
		msa_fmt(err, errlen, "%s: " MEM_MSG, ld->chunk);
	else if (ld->budget_hit && ld->budget_line > 0)
		msa_fmt(err, errlen, "%s:%d: " BUDGET_MSG, ld->chunk, ld->budget_line);
	else if (ld->budget_hit)
		msa_fmt(err, errlen, "%s: " BUDGET_MSG, ld->chunk);
	else if (ld->layer_err[0])
		msa_fmt(err, errlen, "%s", ld->layer_err);
	else if (status != LUA_OK && (!strncmp(msg, ld->chunk, n) && msg[n] == ':'))
		msa_fmt(err, errlen, "%s", msg);
	else if (status != LUA_OK)	/* e.g. error("x", 0), binary chunk */
		msa_fmt(err, errlen, "%s: %s", ld->chunk, msg);
	else if (ld->nlayers == 0)
		msa_fmt(err, errlen, "%s: declares no layer; call layer{...}", ld->chunk);
	else
		return MSA_OK;
	return MSA_ESPEC;
}

static int run_spec(struct loader *ld, char *err, size_t errlen)
{
	int rc, status;
	lua_State *L = lua_newstate(spec_alloc, ld);

	if (!L) {
		msa_fmt(err, errlen, "%s: cannot create a Lua state", ld->chunk);
		return MSA_ENOMEM;
	}
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, SPEC_HOOK_EVERY);
	lua_pushcfunction(L, msghandler);
	lua_pushcfunction(L, pmain);
	status = lua_pcall(L, 0, 0, 1);
	rc = report(ld, L, status, err, errlen);
	lua_close(L);
	return rc;
}

/* ------------------------------------------------------------ public */

int msa_spec_load_string(const char *chunkname, const char *text, size_t len,
			 msa_spec **out, char *err, size_t errlen)
{
	struct loader ld;
	msa_spec *spec = NULL;
	int rc;

	msa_fmt(err, errlen, "%s", "");
	if (out)
		*out = NULL;
	if (!chunkname || !text || !out) {
		msa_fmt(err, errlen, "msa_spec_load_string: NULL argument");
		return MSA_EINVAL;
	}
	memset(&ld, 0, sizeof ld);
	ld.chunk = chunkname;
	ld.src = text;
	ld.srclen = len;
	ld.steps_left = SPEC_BUDGET;
	rc = run_spec(&ld, err, errlen);
	if (rc == MSA_OK && !(spec = calloc(1, sizeof *spec))) {
		msa_fmt(err, errlen, "%s: out of memory", chunkname);
		rc = MSA_ENOMEM;
	}
	if (rc == MSA_OK) {
		msa_fmt(spec->path, sizeof spec->path, "%s", chunkname);
		spec->layers = ld.layers;	/* the spec owns them now */
		spec->nlayers = ld.nlayers;
		ld.layers = NULL;
		*out = spec;
	}
	free(ld.layers);
	return rc;
}

int msa_spec_load(const char *path, msa_spec **out, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len;
	int rc;

	msa_fmt(err, errlen, "%s", "");
	if (out)
		*out = NULL;
	if (!path || !out) {
		msa_fmt(err, errlen, "msa_spec_load: NULL argument");
		return MSA_EINVAL;
	}
	rc = msa_read_file(path, &text, &len);
	if (rc != MSA_OK) {
		msa_fmt(err, errlen, "%s: cannot read spec file", path);
		return rc;
	}
	rc = msa_spec_load_string(path, text, len, out, err, errlen);
	free(text);
	return rc;
}

void msa_spec_free(msa_spec *spec)
{
	if (!spec)
		return;
	free(spec->layers);
	free(spec);
}

/* t_cli.c - the msagen command end to end (no GPU): help, build twice (the
 * second is all cache hits), concurrent builds of one key, a corrupt entry,
 * emit determinism, spec errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"

static char bin[1024], dir[256];
/* Variants of tiny.lua (two archs), counted by the library: the
 * sm_90a-only families and block-128-only ones drop out. */
static int NV;

static int count_variants(void)
{
	msa_spec *s;
	msa_variant *vs;
	char err[256];
	int n, total = 0;
	if (msa_spec_load("specs/tiny.lua", &s, err, sizeof err) != MSA_OK)
		bail("%s", err);
	for (int a = 0; a < s->layers[0].narch; a++) {
		if (msa_variants_for_layer(&s->layers[0], s->layers[0].arch[a], &vs, &n, err, sizeof err) != MSA_OK)
			bail("%s", err);
		total += n;
		free(vs);
	}
	msa_spec_free(s);
	return total;
}
static char want[128];

static const char *fmtw(const char *fmt, ...) MSA_FMT(1, 2);
static const char *fmtw(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(want, sizeof want, fmt, ap);
	va_end(ap);
	return want;
}

/* Run a shell command; returns its exit status and its output in out. */
static int run(char *out, size_t n, const char *fmt, ...) MSA_FMT(3, 4);
static int run(char *out, size_t n, const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	size_t got = 0;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	FILE *p = popen(cmd, "r");
	if (!p)
		bail("popen %s", cmd);
	while (got + 1 < n) {
		size_t r = fread(out + got, 1, n - 1 - got, p);
		if (r == 0)
			break;
		got += r;
	}
	out[got] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void check_help(void)
{
	char out[8192];
	is_int(run(out, sizeof out, "%s --help", bin), 0, "msagen --help exits 0");
	like(out, "build SPEC", "help lists build");
	is_int(run(out, sizeof out, "%s build --help", bin), 0, "build --help exits 0");
	like(out, "usage: msagen build", "build has its own help");
	static const char *const cmds[] = {"emit", "build", "cache", "tune", "check"};
	for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
		is_int(run(out, sizeof out, "%s %s --help", bin, cmds[i]), 0, "%s --help exits 0", cmds[i]);
		like(out, fmtw("usage: msagen %s", cmds[i]), "%s has its own help", cmds[i]);
		ok(!strstr(out, "%%"), "%s help has no doubled %%%% (it is printed verbatim)", cmds[i]);
	}
	is_int(run(out, sizeof out, "%s frobnicate 2>&1", bin), 2, "unknown command exits 2");
	is_int(run(out, sizeof out, "%s build specs/tiny.lua --arch sm_99 2>&1", bin), 2,
	       "unknown arch exits 2");
	/* checked before any GPU is looked for, so these run here */
	is_int(run(out, sizeof out, "%s check specs/tiny.lua --index-amp 500 2>&1", bin), 2,
	       "check --index-amp past e4m3's 448 exits 2");
	like(out, "--index-amp 500: want a number in (0, 448]", "message names the option and its range");
	is_int(run(out, sizeof out, "%s check specs/tiny.lua --index-amp 2x 2>&1", bin), 2,
	       "check --index-amp with trailing junk exits 2");
	is_int(run(out, sizeof out, "%s build specs/tiny.lua --index-amp 3 2>&1", bin), 2,
	       "--index-amp is check's alone");
	like(out, "unknown option '--index-amp'", "build names the option it does not know");
}

static void check_build(void)
{
	char out[16384];
	is_int(run(out, sizeof out, "%s build specs/tiny.lua --cache-dir %s -q 2>&1", bin, dir), 0,
	       "cold build succeeds");
	like(out, fmtw("%d variants: %d compiled, 0 from cache, 0 failed", NV, NV), "cold build compiles every variant");
	is_int(run(out, sizeof out, "%s build specs/tiny.lua --cache-dir %s -q 2>&1", bin, dir), 0,
	       "warm build succeeds");
	like(out, fmtw("%d variants: 0 compiled, %d from cache, 0 failed", NV, NV), "warm build is all cache hits");
	is_int(run(out, sizeof out, "%s cache ls --cache-dir %s", bin, dir), 0, "cache ls");
	like(out, "dense_fwd.bf16.bf16.hq4.hkv2.d64.bk64.causal", "ls shows readable variant names");
	like(out, fmtw("%d entries", NV), "ls counts entries");
}

static void check_corrupt(void)
{
	char out[16384], path[512];
	FILE *f;
	is_int(run(out, sizeof out, "ls %s/*.msac | head -n 1", dir), 0, "find an entry");
	out[strcspn(out, "\n")] = '\0';
	msa_fmt(path, sizeof path, "%s", out);
	f = fopen(path, "r+b");
	ok(f && fseek(f, -100, SEEK_END) == 0 && fputc('#', f) != EOF && fclose(f) == 0,
	   "flip a byte near the end of %s", path);
	is_int(run(out, sizeof out, "%s cache verify --cache-dir %s", bin, dir), 1,
	       "verify fails on the corrupt entry");
	like(out, "BAD: checksum", "verify says why");
	is_int(run(out, sizeof out, "%s build specs/tiny.lua --cache-dir %s -q 2>&1", bin, dir), 0,
	       "build over a corrupt entry succeeds");
	like(out, fmtw("1 compiled, %d from cache", NV - 1), "the corrupt entry is a miss, recompiled");
	is_int(run(out, sizeof out, "%s cache verify --cache-dir %s", bin, dir), 0, "verify passes again");
	if (!truncate(path, 37))
		is_int(run(out, sizeof out, "%s build specs/tiny.lua --cache-dir %s -q 2>&1", bin, dir), 0,
		       "build over a truncated entry succeeds");
	else
		ok(0, "truncate");
	is_int(run(out, sizeof out, "%s cache clear --cache-dir %s", bin, dir), 0, "cache clear");
	like(out, fmtw("removed %d entries", NV), "clear removes every entry");
}

/* Four builds of the same spec into one empty cache at once. */
static void check_race(void)
{
	char out[16384];
	is_int(run(out, sizeof out,
		   "( for i in 1 2 3 4; do ( %s build specs/tiny.lua --cache-dir %s/race -q -j 1 "
		   ">/dev/null 2>&1; echo rc=$? ) & done; wait ) | grep -c rc=0", bin, dir), 0,
	       "race script ran");
	is_int(atoi(out), 4, "four concurrent builds of one key all succeed");
	is_int(run(out, sizeof out, "%s cache verify --cache-dir %s/race", bin, dir), 0,
	       "the raced entries verify");
	like(out, fmtw("%d entries, ", NV), "one entry per key, no temp files counted");
	is_int(run(out, sizeof out, "ls -a %s/race | grep -c tmp", dir), 1, "no temp files left");
}

static void check_emit(void)
{
	char out[16384];
	is_int(run(out, sizeof out, "%s emit specs/tiny.lua -o %s/e1 >/dev/null && %s emit specs/tiny.lua -o %s/e2 >/dev/null "
		   "&& diff -r %s/e1 %s/e2 && ls %s/e1 | wc -l", bin, dir, bin, dir, dir, dir, dir), 0,
	       "emit twice, same bytes");
	ok(atoi(out) == NV, "one source per variant (%d)", atoi(out));
	is_int(run(out, sizeof out, "printf 'layer { name = \"x\",\\n heads = { q = 48, kv = 5 }, head_dim = 64 }\\n' > %s/bad.lua"
		   " && %s build %s/bad.lua --cache-dir %s 2>&1", dir, bin, dir, dir), 1, "bad spec exits 1");
	like(out, "bad.lua:2: heads.q = 48 is not a multiple of heads.kv = 5", "error names file, line, field");
}

int main(void)
{
	const char *b = getenv("MSAGEN_BIN");
	char tmpl[] = "/tmp/msagen-cli-XXXXXX", out[64];
	plan(6 + 5 * 3 + 5 + 7 + 10 + 5 + 4);
	NV = count_variants();
	msa_fmt(bin, sizeof bin, "%s", b && *b ? b : "build/msagen");
	if (access(bin, X_OK) != 0)
		bail("no msagen binary at %s (set MSAGEN_BIN)", bin);
	if (!mkdtemp(tmpl))
		bail("mkdtemp");
	msa_fmt(dir, sizeof dir, "%s", tmpl);
	check_help();
	check_build();
	check_corrupt();
	check_race();
	check_emit();
	run(out, sizeof out, "rm -rf %s", dir);
	return done_testing();
}

/* t_kvdb.c - the tuning database file (runtime/kvdb.c).
 * No GPU needed.  Works in a fresh directory under /tmp, removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"
#include "files.h"

#define HEADER "# msagen tuning db v1\n"

static char root[64];		/* the test's temp dir */

/* ------------------------------------------------------------ helpers */

static void db_path(char *buf, size_t n, const char *name)
{
	msa_fmt(buf, n, "%s/%s", root, name);
}

static int put(const char *path, const char *key, const char *value)
{
	char err[512];
	int rc = msa_kvdb_put(path, key, value, err, sizeof err);
	if (rc != MSA_OK)
		diag("put %s: %s", key, err);
	return rc;
}

/* The value of key, or "(absent)" / "(error N)"; static storage. */
static const char *get(const char *path, const char *key)
{
	static char out[4096];
	char *v = NULL;
	int rc = msa_kvdb_get(path, key, &v);
	if (rc == 1)
		msa_fmt(out, sizeof out, "%s", v);
	else if (rc == 0)
		msa_fmt(out, sizeof out, "(absent)");
	else
		msa_fmt(out, sizeof out, "(error %d)", rc);
	free(v);
	return out;
}

/* The line a record must be written as. */
static void record_line(char *buf, size_t n, const char *key, const char *value)
{
	char kv[512], hex[65];
	msa_fmt(kv, sizeof kv, "%s\t%s", key, value);
	msa_sha256_hex(kv, strlen(kv), hex);
	msa_fmt(buf, n, "%.16s %s\t%s\n", hex, key, value);
}

/* Every record concatenated as "key=value;" by each(). */
typedef struct listing {
	char *text;
	size_t len, cap;
} listing;

static void list_one(void *arg, const char *key, const char *value)
{
	listing *l = arg;
	size_t need = strlen(key) + strlen(value) + 3;
	if (l->len + need > l->cap) {
		l->cap = 2 * (l->len + need);
		l->text = realloc(l->text, l->cap);
		if (!l->text)
			bail("out of memory");
	}
	l->len += (size_t)sprintf(l->text + l->len, "%s=%s;", key, value);
}

/* each() into a string the caller frees; *n gets each's return. */
static char *list(const char *path, int *n, int *bad)
{
	listing l = {NULL, 0, 0};
	*n = msa_kvdb_each(path, list_one, &l, bad);
	if (!l.text)
		l.text = strdup("");
	return l.text;
}

static int count(const char *path, int *bad)
{
	return msa_kvdb_each(path, NULL, NULL, bad);
}

static int count_temps(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += strstr(de->d_name, ".tmp.") != NULL;
	closedir(d);
	return n;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

/* ------------------------------------------------------------ basics */

static void test_basic(void)
{
	char path[128], want[512], line[256], err[512];
	char *text, *v = (char *)1;
	size_t len;
	int bad = -1, n;
	struct stat st1, st2;

	db_path(path, sizeof path, "sub/dir/basic.db");
	is_int(msa_kvdb_get(path, "k", &v), 0, "get on a missing file: absent");
	ok(v == NULL, "and *value is NULL");
	is_int(msa_kvdb_each(path, NULL, NULL, &bad), 0, "each on a missing file: 0 records");
	is_int(bad, 0, "and nothing bad");
	is_int(msa_kvdb_del(path, "k", err, sizeof err), MSA_OK, "del on a missing file is fine");
	ok(access(path, F_OK) != 0, "and creates no file");

	is_int(put(path, "dense_fwd.bf16.d128", "bm=64 bn=64 us=12.5"), MSA_OK,
	       "put creates the parent directories");
	is_string(get(path, "dense_fwd.bf16.d128"), "bm=64 bn=64 us=12.5", "get returns the value");
	is_string(get(path, "dense_fwd.bf16.d64"), "(absent)", "another key is absent");

	text = slurp(path, &len);
	record_line(line, sizeof line, "dense_fwd.bf16.d128", "bm=64 bn=64 us=12.5");
	msa_fmt(want, sizeof want, "%s%s", HEADER, line);
	is_string(text, want, "the file is the header and one checksummed line");
	free(text);

	is_int(put(path, "dense_fwd.bf16.d128", "bm=128 bn=64 us=9.5"), MSA_OK, "replace the value");
	is_string(get(path, "dense_fwd.bf16.d128"), "bm=128 bn=64 us=9.5", "get sees the new value");
	is_int(count(path, &bad), 1, "still one record");

	put(path, "b", "2");
	put(path, "c", "");
	is_string(get(path, "c"), "", "an empty value round-trips");
	stat(path, &st1);
	is_int(put(path, "b", "2"), MSA_OK, "putting the same value again");
	stat(path, &st2);
	ok(st1.st_ino == st2.st_ino, "does not rewrite the file");
	is_int(msa_kvdb_del(path, "b", err, sizeof err), MSA_OK, "del an existing key");
	is_string(get(path, "b"), "(absent)", "it is gone");
	is_int(msa_kvdb_del(path, "b", err, sizeof err), MSA_OK, "del an absent key is fine");
	text = list(path, &n, &bad);
	is_string(text, "dense_fwd.bf16.d128=bm=128 bn=64 us=9.5;c=;", "the others remain, in order");
	free(text);
	db_path(want, sizeof want, "sub/dir");
	is_int(count_temps(want), 0, "no temp file is left in the directory");
	msa_fmt(want, sizeof want, "%s.lock", path);
	ok(access(want, F_OK) == 0, "the lock file stays");
}

static void test_many(void)
{
	char path[128], key[32], val[64], *first, *again;
	int n = 0, m = 0, bad = 0, same = 1;

	db_path(path, sizeof path, "many.db");
	for (int i = 0; i < 1000; i++) {
		msa_fmt(key, sizeof key, "key%04d", (i * 389) % 1000);
		msa_fmt(val, sizeof val, "value %d", i);
		if (put(path, key, val) != MSA_OK)
			break;
	}
	first = list(path, &n, &bad);
	is_int(n, 1000, "1000 distinct keys stored");
	for (int i = 0; i < 1000 && same; i++) {
		char *v = NULL;
		msa_fmt(key, sizeof key, "key%04d", (i * 389) % 1000);
		msa_fmt(val, sizeof val, "value %d", i);
		same = msa_kvdb_get(path, key, &v) == 1 && strcmp(v, val) == 0;
		free(v);
	}
	ok(same, "each key has its value");
	ok(strncmp(first, "key0000=value 0;key0389=value 1;key0778=value 2;", 48) == 0,
	   "each visits in insertion order");
	put(path, "key0389", "changed");
	again = list(path, &m, &bad);
	ok(m == 1000 && strncmp(again, "key0000=value 0;key0389=changed;key0778=value 2;", 48) == 0 &&
	   strlen(again) == strlen(first) - strlen("value 1") + strlen("changed"),
	   "replacing a key keeps its place and everyone else's");
	free(first);
	free(again);
}

static void test_invalid(void)
{
	char path[128], err[512];
	char *v = NULL;
	int bad;

	db_path(path, sizeof path, "inval.db");
	put(path, "ok", "1");
	is_int(msa_kvdb_put(path, "a\tb", "v", err, sizeof err), MSA_EINVAL, "a key with TAB is rejected");
	is_int(msa_kvdb_put(path, "a\nb", "v", err, sizeof err), MSA_EINVAL, "a key with newline is rejected");
	is_int(msa_kvdb_put(path, "", "v", err, sizeof err), MSA_EINVAL, "an empty key is rejected");
	is_int(msa_kvdb_put(path, "k", "x\ty", err, sizeof err), MSA_EINVAL, "a value with TAB is rejected");
	is_int(msa_kvdb_put(path, "k", "x\ny", err, sizeof err), MSA_EINVAL, "a value with newline is rejected");
	is_int(msa_kvdb_put(path, "k", "x\ry", err, sizeof err), MSA_EINVAL, "a value with CR is rejected");
	is_int(msa_kvdb_put(path, "k", NULL, err, sizeof err), MSA_EINVAL, "a NULL value is rejected");
	is_int(msa_kvdb_get(path, "a\tb", &v), -MSA_EINVAL, "get with a TAB key is rejected");
	is_int(msa_kvdb_get(path, "", &v), -MSA_EINVAL, "get with an empty key is rejected");
	is_int(msa_kvdb_del(path, "a\nb", err, sizeof err), MSA_EINVAL, "del with a newline key is rejected");
	ok(count(path, &bad) == 1 && bad == 0, "the file still holds just the one record");
	is_int(put(path, "unicode.\xc3\xa9", "caf\xc3\xa9"), MSA_OK, "UTF-8 text is allowed");
	is_string(get(path, "unicode.\xc3\xa9"), "caf\xc3\xa9", "and round-trips");
}

/* ------------------------------------------------------------ damage */

static void test_corrupt(void)
{
	char path[128], *text, *p;
	size_t len;
	int n, bad;

	db_path(path, sizeof path, "corrupt.db");
	put(path, "alpha", "one");
	put(path, "beta", "two-original");
	put(path, "gamma", "three");
	text = slurp(path, &len);
	p = strstr(text, "two-original");
	p[4] ^= 0x01;		/* 'o' -> 'n': still printable, checksum wrong */
	write_file(path, text, len);
	free(text);

	n = count(path, &bad);
	ok(n == 2 && bad == 1, "a flipped byte costs one record (%d valid, %d bad)", n, bad);
	is_string(get(path, "alpha"), "one", "the line before is readable");
	is_string(get(path, "gamma"), "three", "the line after is readable");
	is_string(get(path, "beta"), "(absent)", "the corrupt record is absent");

	is_int(put(path, "delta", "four"), MSA_OK, "put after corruption");
	text = slurp(path, &len);
	ok(strstr(text, "two-nriginal") == NULL && strstr(text, "beta") == NULL,
	   "the rewrite dropped the corrupt line");
	free(text);
	text = list(path, &n, &bad);
	is_string(text, "alpha=one;gamma=three;delta=four;", "the rest survive, in order");
	is_int(bad, 0, "and nothing is bad any more");
	free(text);

	/* Cut the last line in half. */
	text = slurp(path, &len);
	write_file(path, text, len - 3);
	free(text);
	text = list(path, &n, &bad);
	ok(n == 2 && strcmp(text, "alpha=one;gamma=three;") == 0 && bad == 1,
	   "a truncated file loses only its last record (%s, %d bad)", text, bad);
	free(text);
	/* Cut exactly before the final newline: the checksum still vouches. */
	put(path, "delta", "four");
	text = slurp(path, &len);
	write_file(path, text, len - 1);
	free(text);
	ok(count(path, &bad) == 3 && bad == 0, "a last line missing only its newline still counts");
}

static uint32_t rng = 12345;

static uint32_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static void test_garbage(void)
{
	char path[128], *buf, *orig;
	size_t olen;
	int bad = 0, fine = 0, n;

	db_path(path, sizeof path, "garbage.db");
	buf = malloc(8192);
	if (!buf)
		bail("out of memory");
	for (int i = 0; i < 8192; i++)
		buf[i] = (char)next_rand();
	write_file(path, buf, 8192);
	is_int(count(path, &bad), 0, "random bytes: no valid records");
	ok(bad > 0, "and the lines count as bad (%d)", bad);
	is_string(get(path, "k"), "(absent)", "get on random bytes: absent");
	is_int(put(path, "k", "v"), MSA_OK, "put over random bytes works");
	ok(count(path, &bad) == 1 && bad == 0, "leaving one clean record");

	/* Our header, then a well-formed line whose value hides a NUL behind
	 * a matching checksum, then a run of zeros. */
	{
		const char kv[] = "k\tv\0x";
		char hex[65];
		size_t at = 0;
		msa_sha256_hex(kv, sizeof kv - 1, hex);
		at += (size_t)sprintf(buf, HEADER "%.16s ", hex);
		memcpy(buf + at, kv, sizeof kv - 1);
		at += sizeof kv - 1;
		buf[at++] = '\n';
		memset(buf + at, 0, 1000);
		at += 1000;
		write_file(path, buf, at);
	}
	n = count(path, &bad);
	ok(n == 0 && bad == 2, "a binary file with NULs: no valid records (%d bad)", bad);
	is_string(get(path, "k"), "(absent)", "a NUL inside a value is not read as a shorter value");
	memset(buf, 0, 4096);
	write_file(path, buf, 4096);
	is_int(count(path, &bad), 0, "4096 zero bytes: no valid records");
	is_int(put(path, "k", "v2"), MSA_OK, "put over a binary file works");
	is_string(get(path, "k"), "v2", "and reads back");

	/* Random damage to a good file: whatever still verifies must be a
	 * record that was written, byte for byte. */
	put(path, "a", "1");
	put(path, "bb", "22");
	orig = slurp(path, &olen);
	for (int i = 0; i < 500; i++) {
		char *v = NULL, *all, *tok, *save = NULL;
		size_t cut = olen;
		int rc, exact = 1;
		memcpy(buf, orig, olen);
		for (int j = 0; j < 1 + (int)(next_rand() % 3); j++)
			buf[next_rand() % olen] = (char)next_rand();
		if (i % 4 == 0)
			cut = next_rand() % olen;
		write_file(path, buf, cut);
		rc = msa_kvdb_get(path, "bb", &v);
		all = list(path, &n, NULL);
		for (tok = strtok_r(all, ";", &save); tok; tok = strtok_r(NULL, ";", &save))
			exact &= strcmp(tok, "k=v2") == 0 || strcmp(tok, "a=1") == 0 || strcmp(tok, "bb=22") == 0;
		fine += exact && n <= 3 && (rc == 0 || (rc == 1 && strcmp(v, "22") == 0));
		free(all);
		free(v);
	}
	is_int(fine, 500, "500 randomly damaged files: every record read is one written, exactly");
	free(orig);
	free(buf);
}

static void test_header(void)
{
	char path[128], line[256], text[512], err[512];
	char *got;
	size_t len;
	int bad, n;

	db_path(path, sizeof path, "header.db");
	record_line(line, sizeof line, "k", "v");
	msa_fmt(text, sizeof text, "# some other tool's file\n%s", line);
	write_file(path, text, strlen(text));
	n = count(path, &bad);
	ok(n == 0 && bad == 2, "a wrong header: no valid records, %d lines bad", bad);
	is_string(get(path, "k"), "(absent)", "even a line with a right checksum");
	is_int(put(path, "n", "1"), MSA_OK, "put over a wrong header");
	got = slurp(path, &len);
	record_line(line, sizeof line, "n", "1");
	msa_fmt(text, sizeof text, "%s%s", HEADER, line);
	is_string(got, text, "rewrote it as a fresh database");
	free(got);

	/* A newer format is not ours to rewrite. */
	record_line(line, sizeof line, "k", "v");
	msa_fmt(text, sizeof text, "# msagen tuning db v2\n%s", line);
	write_file(path, text, strlen(text));
	is_int(count(path, &bad), 0, "a v2 file holds nothing this build reads");
	is_int(msa_kvdb_put(path, "n", "1", err, sizeof err), MSA_EUNSUPPORTED, "put refuses to overwrite a v2 file");
	like(err, "v2", "saying why (%s)", err);
	got = slurp(path, &len);
	is_string(got, text, "the v2 file is untouched");
	free(got);
}

/* ------------------------------------------------------------ concurrency */

#define NWRITERS 8
#define NREADERS 2
#define PER_WRITER 50

/* Shared with the children: [0] raised once every writer has exited,
 * [1] gets the readers made, [2] of them hits. */
static long *stop;

static void race_value(char *buf, size_t n, int i, int j)
{
	/* Long enough that a torn read would show. */
	msa_fmt(buf, n, "v%d-%d.%0200d", i, j, i * 1000 + j);
}

static int race_child(int who, void *arg)
{
	const char *path = arg;
	char key[32], want[256], err[512];

	rng = 777u + (uint32_t)who;
	if (who < NWRITERS) {
		for (int j = 0; j < PER_WRITER; j++) {
			msa_fmt(key, sizeof key, "k%d-%d", who, j);
			race_value(want, sizeof want, who, j);
			if (msa_kvdb_put(path, key, want, err, sizeof err) != MSA_OK) {
				fprintf(stderr, "put: %s\n", err);
				return 3;
			}
		}
		return 0;
	}
	for (long iter = 0; !__atomic_load_n(&stop[0], __ATOMIC_ACQUIRE); iter++) {
		int i = (int)(next_rand() % NWRITERS), j = (int)(next_rand() % PER_WRITER), rc, bad;
		char *v = NULL;

		msa_fmt(key, sizeof key, "k%d-%d", i, j);
		race_value(want, sizeof want, i, j);
		rc = msa_kvdb_get(path, key, &v);
		if (rc < 0 || (rc == 1 && strcmp(v, want) != 0)) {
			fprintf(stderr, "get %s: rc %d, %s\n", key, rc, v ? v : "");
			free(v);
			return 4;
		}
		free(v);
		__atomic_fetch_add(&stop[1], 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&stop[2], rc, __ATOMIC_RELAXED);
		if (iter % 16 == 0 && (msa_kvdb_each(path, NULL, NULL, &bad) < 0 || bad != 0))
			return 5;
	}
	return 0;
}

static void test_race(void)
{
	char path[128], key[32], want[256], lock[160];
	int good, right = 0, bad = -1;

	db_path(path, sizeof path, "race/tune.db");
	stop = mmap(NULL, 3 * sizeof *stop, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (stop == MAP_FAILED)
		bail("race setup: %s", strerror(errno));
	good = race_run(NWRITERS + NREADERS, NWRITERS, race_child, path, &stop[0], "writer", "reader");
	diag("race: readers made %ld gets, %ld of them hits", stop[1], stop[2]);
	munmap(stop, 3 * sizeof *stop);
	is_int(good, NWRITERS + NREADERS,
	       "8 writers x 50 keys with 2 readers meanwhile: all exit 0, no torn read");
	is_int(count(path, &bad), NWRITERS * PER_WRITER, "all 400 keys are present");
	is_int(bad, 0, "and no line is bad");
	for (int i = 0; i < NWRITERS; i++) {
		for (int j = 0; j < PER_WRITER; j++) {
			msa_fmt(key, sizeof key, "k%d-%d", i, j);
			race_value(want, sizeof want, i, j);
			right += strcmp(get(path, key), want) == 0;
		}
	}
	is_int(right, NWRITERS * PER_WRITER, "each with its writer's value");
	db_path(lock, sizeof lock, "race");
	is_int(count_temps(lock), 0, "no temp files left behind");
}

static void test_stale_temp(void)
{
	char path[128], stale[160], other[160];

	db_path(path, sizeof path, "stale.db");
	db_path(stale, sizeof stale, ".stale.db.tmp.99999.7");
	db_path(other, sizeof other, ".stale.db.tmp.notours");
	write_file(stale, "half a", 6);
	write_file(other, "x", 1);
	put(path, "k", "v");
	ok(access(stale, F_OK) != 0, "a dead writer's temp file is swept under the lock");
	ok(access(other, F_OK) == 0, "a file that only looks similar is left alone");
	unlink(other);
}

/* ------------------------------------------------------------ merge */

static void test_merge(void)
{
	char dst[128], src[128], file[128], bad_dst[160], err[512], *text, *p;
	size_t len;
	int merged = -1, n, bad;

	db_path(dst, sizeof dst, "merge/dst.db");
	db_path(src, sizeof src, "merge/src.db");
	put(dst, "a", "1");
	put(dst, "b", "2");
	put(src, "b", "20");
	put(src, "c", "30");
	put(src, "d", "40");
	is_int(msa_kvdb_merge(dst, src, &merged, err, sizeof err), MSA_OK, "merge");
	is_int(merged, 3, "took 3 records");
	text = list(dst, &n, &bad);
	is_string(text, "a=1;b=20;c=30;d=40;", "dst has the union, src's value on the overlap");
	free(text);
	text = list(src, &n, &bad);
	is_string(text, "b=20;c=30;d=40;", "src is unchanged");
	free(text);

	/* A corrupt line in src stays out of dst. */
	unlink(src);
	put(src, "x", "1");
	put(src, "y", "2-good");
	put(src, "z", "3");
	text = slurp(src, &len);
	p = strstr(text, "2-good");
	p[2] = 'G';
	write_file(src, text, len);
	free(text);
	is_int(msa_kvdb_merge(dst, src, &merged, err, sizeof err), MSA_OK, "merge a damaged src");
	is_int(merged, 2, "took its 2 valid records");
	text = list(dst, &n, &bad);
	ok(strcmp(text, "a=1;b=20;c=30;d=40;x=1;z=3;") == 0 && bad == 0,
	   "the corrupt record was not imported (%s)", text);
	free(text);

	db_path(file, sizeof file, "merge/missing.db");
	err[0] = '\0';
	ok(msa_kvdb_merge(dst, file, &merged, err, sizeof err) == MSA_EIO && strstr(err, file) &&
	   merged == 0, "a missing src is an error naming it (%s)", err);

	/* A destination under a regular file cannot be created. */
	db_path(file, sizeof file, "plainfile");
	write_file(file, "x", 1);
	msa_fmt(bad_dst, sizeof bad_dst, "%s/sub/dst.db", file);
	err[0] = '\0';
	ok(msa_kvdb_merge(bad_dst, src, &merged, err, sizeof err) == MSA_EIO && strstr(err, bad_dst) &&
	   merged == 0, "an unwritable dst fails naming the path (%s)", err);
	like(err, "Not a directory", "with the cause");
	msa_fmt(bad_dst, sizeof bad_dst, "%s/dst.db", file);
	err[0] = '\0';
	ok(msa_kvdb_put(bad_dst, "k", "v", err, sizeof err) == MSA_EIO && strstr(err, bad_dst),
	   "put directly under a regular file fails naming the path (%s)", err);
	{
		char *v = NULL;
		is_int(msa_kvdb_get(bad_dst, "k", &v), -MSA_EIO, "and get there is an I/O error");
		free(v);
	}
}

int main(void)
{
	plan(88);
	msa_fmt(root, sizeof root, "/tmp/t_kvdb.XXXXXX");
	if (!mkdtemp(root))
		bail("mkdtemp: %s", strerror(errno));

	test_basic();
	test_many();
	test_invalid();
	test_corrupt();
	test_garbage();
	test_header();
	test_race();
	test_stale_temp();
	test_merge();

	nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	ok(access(root, F_OK) != 0, "temp dir removed");
	return done_testing();
}

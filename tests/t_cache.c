/* t_cache.c - SHA-256, the in-memory table and the on-disk cache.
 * No GPU needed.  Works in a fresh directory under /tmp, removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"
#include "files.h"

#define HDR 72

static char root[64];		/* the test's temp dir */
static char cdir[128];		/* the cache dir inside it */

/* ------------------------------------------------------------ helpers */

static void hex_of(const void *data, size_t len, char hex[65])
{
	msa_sha256_hex(data, len, hex);
}

static void entry_path(const char *dir, const char *key, char *path, size_t n)
{
	char name[80];
	msa_disk_name(key, strlen(key), name);
	msa_fmt(path, n, "%s/%s", dir, name);
}

static int get(const char *key, msa_disk_entry *e, char *why, size_t whylen)
{
	return msa_disk_get(cdir, key, strlen(key), e, why, whylen);
}

static int put(const char *dir, const char *key, const char *meta, const void *blob, size_t blen)
{
	char err[512];
	int rc = msa_disk_put(dir, key, strlen(key), meta, blob, blen, err, sizeof err);
	if (rc != MSA_OK)
		diag("put: %s", err);
	return rc;
}

/* Count directory entries whose name starts with prefix. */
static int count_prefix(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

static int count_suffix(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL) {
		size_t a = strlen(de->d_name), b = strlen(suffix);
		n += a >= b && strcmp(de->d_name + a - b, suffix) == 0;
	}
	closedir(d);
	return n;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	chmod(path, 0700);	/* undo the permission test, if it ran */
	return remove(path);
}

static void le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* ------------------------------------------------------------ sha256 */

static void test_sha256(void)
{
	static const struct { const char *in, *want; } v[] = {
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
		{"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
		 "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
	};
	/* Lengths around the padding boundary (55/56 bytes) and one block. */
	static const struct { size_t n; const char *want; } pad[] = {
		{55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
		{56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
		{64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
	};
	char hex[65], as[64];
	msa_sha256 s;
	uint8_t d[32], chunk[1000];
	int same = 1;

	for (int i = 0; i < MSA_COUNT(v); i++) {
		hex_of(v[i].in, strlen(v[i].in), hex);
		is_string(hex, v[i].want, "sha256 of a %zu-byte vector", strlen(v[i].in));
	}
	memset(as, 'a', sizeof as);
	for (int i = 0; i < MSA_COUNT(pad); i++) {
		hex_of(as, pad[i].n, hex);
		is_string(hex, pad[i].want, "sha256 of %zu 'a's (padding edge)", pad[i].n);
	}

	/* A million 'a's in uneven pieces, so buffering across blocks is used. */
	memset(chunk, 'a', sizeof chunk);
	msa_sha256_init(&s);
	for (size_t done = 0, step = 1; done < 1000000; step = step % 997 + 1) {
		size_t n = 1000000 - done < step ? 1000000 - done : step;
		msa_sha256_update(&s, chunk, n);
		done += n;
	}
	msa_sha256_final(&s, d);
	for (int i = 0; i < 32; i++)
		msa_fmt(hex + 2 * i, 3, "%02x", d[i]);
	is_string(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
		  "sha256 of a million 'a's, fed in uneven pieces");

	/* Any split of a message gives the one-shot digest. */
	for (size_t len = 0; len <= 130 && same; len++) {
		char one[65], two[65];
		uint8_t msg[130];
		for (size_t i = 0; i < len; i++)
			msg[i] = (uint8_t)(i * 37 + 11);
		hex_of(msg, len, one);
		for (size_t cut = 0; cut <= len && same; cut += 7) {
			msa_sha256_init(&s);
			msa_sha256_update(&s, msg, cut);
			msa_sha256_update(&s, msg + cut, len - cut);
			msa_sha256_final(&s, d);
			for (int i = 0; i < 32; i++)
				msa_fmt(two + 2 * i, 3, "%02x", d[i]);
			same = strcmp(one, two) == 0;
		}
	}
	ok(same, "split updates match one-shot digests for lengths 0..130");
}

/* ------------------------------------------------------------ memtab */

#define NKEYS 100000

static void key_of(char *buf, size_t n, int i)
{
	/* ~80 characters with a long shared prefix, like real variant names. */
	msa_fmt(buf, n, "dense_fwd.bf16.hq64.hkv4.d128.causal.bm64.bn64.stages2.warps8.sm_90a.v%08d", i);
}

static void count_each(void *arg, const char *key, void *value)
{
	long *acc = arg;
	(void)key;
	acc[0]++;
	acc[1] += (long)(uintptr_t)value;
}

static void test_memtab(void)
{
	msa_memtab *t = msa_memtab_new();
	int a = 1, b = 2, c = 3, bad = 0;
	char key[128];
	long acc[2] = {0, 0}, want_sum = 0;
	double t0, ns;
	volatile uintptr_t sink = 0;

	if (!t)
		bail("msa_memtab_new failed");
	ok(msa_memtab_get(t, "x") == NULL && msa_memtab_count(t) == 0, "empty table misses");
	is_int(msa_memtab_put(t, "x", &a), MSA_OK, "put x");
	ok(msa_memtab_get(t, "x") == &a, "get x");
	is_int(msa_memtab_put(t, "x", &b), MSA_OK, "overwrite x");
	ok(msa_memtab_get(t, "x") == &b && msa_memtab_count(t) == 1, "overwrite replaces, count stays 1");
	ok(msa_memtab_get(t, "y") == NULL, "other key misses");

	/* Keys are copied: the caller's buffer may change afterwards. */
	strcpy(key, "buffer-key");
	msa_memtab_put(t, key, &c);
	strcpy(key, "changed!!!");
	ok(msa_memtab_get(t, "buffer-key") == &c && msa_memtab_get(t, key) == NULL, "keys are copied");

	/* Near-identical keys never answer for each other. */
	msa_memtab_put(t, "", &a);
	msa_memtab_put(t, "ab", &b);
	msa_memtab_put(t, "abc", &c);
	ok(msa_memtab_get(t, "") == &a && msa_memtab_get(t, "ab") == &b &&
	   msa_memtab_get(t, "abc") == &c && msa_memtab_get(t, "a") == NULL &&
	   msa_memtab_get(t, "abcd") == NULL && msa_memtab_get(t, "abd") == NULL,
	   "prefixes and one-byte differences are distinct keys");
	msa_memtab_free(t);

	t = msa_memtab_new();
	for (int i = 0; i < NKEYS; i++) {
		key_of(key, sizeof key, i);
		if (msa_memtab_put(t, key, (void *)(uintptr_t)(i + 1)) != MSA_OK)
			bail("put failed at %d", i);
		want_sum += i + 1;
	}
	is_int(msa_memtab_count(t), NKEYS, "100k keys after growth");
	for (int i = 0; i < NKEYS; i++) {
		key_of(key, sizeof key, i);
		bad += msa_memtab_get(t, key) != (void *)(uintptr_t)(i + 1);
	}
	is_int(bad, 0, "every one of 100k keys returns its own value");
	bad = 0;
	for (int i = NKEYS; i < 2 * NKEYS; i++) {
		key_of(key, sizeof key, i);
		bad += msa_memtab_get(t, key) != NULL;
	}
	is_int(bad, 0, "100k absent keys with the same prefix all miss");
	msa_memtab_each(t, count_each, acc);
	ok(acc[0] == NKEYS && acc[1] == want_sum, "each visits every entry once");

	/* Hot: 64 keys that stay in cache.  Spread: 4096 keys over the whole
	 * table, so most slots and keys come from memory. */
	for (int pass = 0; pass < 2; pass++) {
		static char keys[4096][96];
		int nk = pass ? 4096 : 64;
		for (int i = 0; i < nk; i++)
			key_of(keys[i], sizeof keys[i], (int)((unsigned)i * 2654435761u % NKEYS));
		t0 = msa_now_ms();
		for (int r = 0; r < 1000000; r++)
			sink += (uintptr_t)msa_memtab_get(t, keys[r & (nk - 1)]);
		ns = (msa_now_ms() - t0) * 1e6 / 1000000;
		diag("memtab: %.1f ns per lookup of a %zu-char key, %d distinct keys, %d-entry table",
		     ns, strlen(keys[0]), nk, NKEYS);
	}
	(void)sink;
	msa_memtab_free(t);
	msa_memtab_free(NULL);
}

/* ------------------------------------------------------------ disk */

static const char KEY_A[] = "format=1\ngen=0.1.0\nnvrtc=13.0\narch=sm_90a\nopts=-std=c++17\nsrc=__global__ void k(){}\n";
static const char KEY_B[] = "format=1\ngen=0.1.0\nnvrtc=13.0\narch=sm_90a\nopts=-std=c++17\nsrc=__global__ void k(){ }\n";
static const char META_A[] = "name=dense_fwd.bf16.hq64\nregs=128\nsmem=49152\n";

static char blob[5000];

/* Expect a miss whose reason contains want, after planting bytes at key's path. */
static void miss_with(const char *key, const void *bytes, size_t len, const char *want, const char *what)
{
	char path[512], why[256] = "";
	msa_disk_entry e;
	int rc;

	entry_path(cdir, key, path, sizeof path);
	if (write_file(path, bytes, len) != 0)
		bail("cannot write %s", path);
	rc = get(key, &e, why, sizeof why);
	if (!ok(rc == 0 && e.meta == NULL && e.blob == NULL && strstr(why, want),
		"%s -> miss '%s'", what, want))
		diag("rc %d, why '%s'", rc, why);
	msa_disk_entry_clear(&e);
}

static void test_disk_basic(void)
{
	char why[256], path[512], path_b[512], name[80], hex[65];
	char *file;
	size_t len;
	msa_disk_entry e;
	int rc;

	for (size_t i = 0; i < sizeof blob; i++)
		blob[i] = (char)(i * 131 + (i >> 8));	/* binary, with NULs */

	is_int(msa_disk_list(cdir, NULL, NULL), 0, "list of a missing dir is 0 entries");
	is_int(msa_disk_clear(cdir), 0, "clear of a missing dir removes 0");
	rc = get(KEY_A, &e, why, sizeof why);
	ok(rc == 0 && strcmp(why, "absent") == 0, "get before any put: miss 'absent' (%s)", why);

	msa_disk_name(KEY_A, strlen(KEY_A), name);
	hex_of(KEY_A, strlen(KEY_A), hex);
	ok(strlen(name) == 69 && strncmp(name, hex, 64) == 0 && strcmp(name + 64, ".msac") == 0,
	   "name is sha256(key) + .msac");

	is_int(put(cdir, KEY_A, META_A, blob, sizeof blob), MSA_OK, "put creates nested dirs and publishes");
	rc = get(KEY_A, &e, why, sizeof why);
	ok(rc == 1 && e.meta && strcmp(e.meta, META_A) == 0 && e.blob_len == sizeof blob &&
	   memcmp(e.blob, blob, sizeof blob) == 0, "get hits with byte-equal meta and blob");
	msa_disk_entry_clear(&e);
	ok(e.meta == NULL && e.blob == NULL && e.blob_len == 0, "entry_clear frees and zeroes");

	entry_path(cdir, KEY_A, path, sizeof path);
	file = slurp(path, &len);
	ok(len == HDR + strlen(KEY_A) + strlen(META_A) + sizeof blob &&
	   memcmp(file, "MSAGENC\1", 8) == 0 && file[8] == MSA_DISK_FORMAT && file[9] == 0 &&
	   (uint8_t)file[16] == strlen(KEY_A) && file[17] == 0 &&
	   memcmp(file + HDR, KEY_A, strlen(KEY_A)) == 0,
	   "file: magic, little-endian version and lengths, then the key");

	entry_path(cdir, KEY_B, path_b, sizeof path_b);
	rc = get(KEY_B, &e, why, sizeof why);
	ok(strcmp(path, path_b) != 0 && rc == 0 && strcmp(why, "absent") == 0,
	   "a key one byte different has its own file and misses");
	rc = msa_disk_get(cdir, KEY_A, strlen(KEY_A) - 1, &e, why, sizeof why);
	ok(rc == 0 && strcmp(why, "absent") == 0, "a prefix of the key misses");

	/* A file under B's name that holds A: what a collision would look like. */
	miss_with(KEY_B, file, len, "key mismatch", "entry of another key under this name");
	rc = get(KEY_A, &e, why, sizeof why);
	is_int(rc, 1, "the real entry still hits");
	msa_disk_entry_clear(&e);
	unlink(path_b);

	file[len - 100] ^= 0x01;
	miss_with(KEY_A, file, len, "checksum", "one flipped blob bit");
	file[len - 100] ^= 0x01;
	file[HDR + 3] ^= 0x20;
	miss_with(KEY_A, file, len, "checksum", "one flipped key bit");
	file[HDR + 3] ^= 0x20;

	{
		static const size_t cut[] = {0, 5, HDR - 1, HDR + 3, 0};
		for (int i = 0; i < MSA_COUNT(cut); i++) {
			size_t n = i == MSA_COUNT(cut) - 1 ? len - 1 : cut[i];
			char what[64];
			msa_fmt(what, sizeof what, "file cut to %zu of %zu bytes", n, len);
			miss_with(KEY_A, file, n, "truncated", what);
		}
	}
	miss_with(KEY_A, file, len - strlen(META_A) - 1, "truncated", "file cut inside meta");

	/* Hostile lengths: huge, wrapping to exactly the body size, or short. */
	{
		char *bad = malloc(len + 16);
		uint64_t body = len - HDR;
		if (!bad)
			bail("out of memory");
		memcpy(bad, file, len);
		le64((uint8_t *)bad + 16, (uint64_t)1 << 63);
		miss_with(KEY_A, bad, len, "truncated", "key_len 2^63");
		le64((uint8_t *)bad + 16, UINT64_MAX);
		le64((uint8_t *)bad + 24, UINT64_MAX);
		le64((uint8_t *)bad + 32, UINT64_MAX);
		miss_with(KEY_A, bad, len, "truncated", "all lengths 2^64-1");
		/* key + meta + blob wraps around 2^64 to exactly the body size. */
		le64((uint8_t *)bad + 16, (uint64_t)1 << 63);
		le64((uint8_t *)bad + 24, (uint64_t)1 << 63);
		le64((uint8_t *)bad + 32, body);
		miss_with(KEY_A, bad, len, "truncated", "lengths that wrap to the body size");
		memcpy(bad, file, len);
		memset(bad + len, 0, 16);
		miss_with(KEY_A, bad, len + 16, "length mismatch", "16 trailing bytes");
		memcpy(bad, file, len);
		bad[0] = 'X';
		miss_with(KEY_A, bad, len, "bad magic", "wrong magic");
		memcpy(bad, file, len);
		bad[8] = MSA_DISK_FORMAT + 1;
		miss_with(KEY_A, bad, len, "format version", "a newer format version");
		memcpy(bad, file, len);
		bad[12] = 1;
		miss_with(KEY_A, bad, len, "flags", "unknown flags");
		for (size_t i = 0; i < len; i++)
			bad[i] = (char)(i * 7919 >> 3);
		memcpy(bad, "MSAGENC\1\1\0\0\0\0\0\0\0", 16);
		miss_with(KEY_A, bad, len, "", "garbage after a valid-looking prefix");
		free(bad);
	}

	/* Random damage: every read is a clean miss or an exact hit. */
	{
		char *bad = malloc(len);
		uint32_t r = 12345;
		int fine = 0;
		if (!bad)
			bail("out of memory");
		entry_path(cdir, KEY_A, path, sizeof path);
		for (int i = 0; i < 2000; i++) {
			size_t n = len;
			memcpy(bad, file, len);
			for (int k = 0; k < 1 + i % 4; k++) {
				r = r * 1103515245u + 12345u;
				/* Mostly the header, where a bad length does harm. */
				size_t at = (r >> 8) % (k & 1 ? len : HDR);
				r = r * 1103515245u + 12345u;
				bad[at] = (char)(r >> 16);
			}
			if (i % 5 == 0)
				n = (r >> 4) % len;
			write_file(path, bad, n);
			rc = get(KEY_A, &e, why, sizeof why);
			fine += rc == 0 || (rc == 1 && e.blob_len == sizeof blob &&
					    memcmp(e.blob, blob, sizeof blob) == 0);
			msa_disk_entry_clear(&e);
		}
		is_int(fine, 2000, "2000 randomly damaged files: each a miss or an exact hit");
		free(bad);
	}

	/* A put over a corrupt entry replaces it. */
	is_int(put(cdir, KEY_A, META_A, blob, sizeof blob), MSA_OK, "put over the corrupt entry");
	rc = get(KEY_A, &e, why, sizeof why);
	ok(rc == 1 && e.blob_len == sizeof blob && memcmp(e.blob, blob, sizeof blob) == 0,
	   "and now it hits");
	msa_disk_entry_clear(&e);

	/* An empty blob and NULL meta are legal. */
	is_int(put(cdir, KEY_B, NULL, NULL, 0), MSA_OK, "put with empty meta and blob");
	rc = get(KEY_B, &e, why, sizeof why);
	ok(rc == 1 && e.meta && e.meta[0] == '\0' && e.blob_len == 0, "empty entry hits");
	msa_disk_entry_clear(&e);
	free(file);
}

typedef struct seen {
	int n, nok;
	int bad_has_meta;
	char problem[128];
	int meta_ok;
} seen;

static void on_entry(void *arg, const msa_disk_info *info)
{
	seen *s = arg;
	s->n++;
	if (info->ok) {
		s->nok++;
		s->meta_ok += info->meta && strncmp(info->meta, "name=", 5) == 0 &&
			      info->size > HDR && strlen(info->file) == 69;
	} else {
		msa_fmt(s->problem, sizeof s->problem, "%s", info->problem);
		s->bad_has_meta = info->meta && strcmp(info->meta, "name=corrupt\n") == 0;
	}
}

static void test_disk_list_clear(void)
{
	char path[512], tmp_old[512], tmp_new[512];
	char *file;
	size_t len;
	seen s;
	struct timespec old[2];

	/* KEY_A and KEY_B exist; add two more, one of them corrupt. */
	put(cdir, "key-c", "name=c\n", "ccc", 3);
	put(cdir, "key-d", "name=corrupt\n", "dddddddd", 8);
	entry_path(cdir, "key-d", path, sizeof path);
	file = slurp(path, &len);
	file[len - 1] ^= 0x40;
	write_file(path, file, len);
	free(file);

	/* Things list must skip: a crashed writer's temp file, a foreign file. */
	msa_fmt(tmp_old, sizeof tmp_old, "%s/.tmp.1.2.3", cdir);
	msa_fmt(tmp_new, sizeof tmp_new, "%s/.tmp.4.5.6", cdir);
	write_file(tmp_old, "partial", 7);
	write_file(tmp_new, "partial", 7);
	old[0].tv_sec = old[1].tv_sec = time(NULL) - 3600;
	old[0].tv_nsec = old[1].tv_nsec = 0;
	utimensat(AT_FDCWD, tmp_old, old, 0);
	msa_fmt(path, sizeof path, "%s/README", cdir);
	write_file(path, "hi", 2);

	memset(&s, 0, sizeof s);
	is_int(msa_disk_list(cdir, on_entry, &s), 4, "list counts the 4 entries, not temp or foreign files");
	ok(s.n == 4 && s.nok == 3 && s.meta_ok == 2, "3 verify, with meta, sizes and names");
	like(s.problem, "checksum", "verify names the corrupt entry's problem");
	ok(s.bad_has_meta, "the corrupt entry's meta is still shown");

	is_int(msa_disk_clear(cdir), 4, "clear removes 4 entries");
	ok(count_suffix(cdir, ".msac") == 0 && access(tmp_old, F_OK) != 0,
	   "no entries and no stale temp file remain");
	ok(access(tmp_new, F_OK) == 0 && access(path, F_OK) == 0,
	   "a fresh temp file (live writer) and foreign files are left alone");
	unlink(tmp_new);
	unlink(path);
	is_int(msa_disk_list(cdir, on_entry, &s), 0, "list after clear is empty");
}

/* ------------------------------------------------------------ race */

#define NPUT 8
#define NGET 8
#define RACE_BLOB (256 * 1024)

/* Shared with the children: hits and absent-misses the getters saw, and
 * a flag the parent raises once every putter has exited. */
static long *race_seen;

typedef struct race_arg {
	const char *dir, *blob;
} race_arg;

static int race_child(int who, void *arg)
{
	const char *dir = ((race_arg *)arg)->dir, *rblob = ((race_arg *)arg)->blob;
	char why[256], err[512];
	msa_disk_entry e;

	if (who < NPUT) {
		for (int i = 0; i < 20; i++) {
			if (msa_disk_put(dir, KEY_A, strlen(KEY_A), META_A, rblob, RACE_BLOB, err, sizeof err) != MSA_OK) {
				fprintf(stderr, "put: %s\n", err);
				return 3;
			}
		}
		return 0;
	}
	/* Read for as long as anyone writes, then once more: that one must hit. */
	for (int i = 0, last = 0; !last; i++) {
		int rc;
		last = i >= 200 && __atomic_load_n(&race_seen[2], __ATOMIC_ACQUIRE);
		rc = msa_disk_get(dir, KEY_A, strlen(KEY_A), &e, why, sizeof why);
		if (rc == 1) {
			if (strcmp(e.meta, META_A) != 0 || e.blob_len != RACE_BLOB ||
			    memcmp(e.blob, rblob, RACE_BLOB) != 0)
				return 4;
			__atomic_fetch_add(&race_seen[0], 1, __ATOMIC_RELAXED);
		} else if (rc != 0 || strcmp(why, "absent") != 0 || last) {
			fprintf(stderr, "get: rc %d, %s\n", rc, why);
			return 5;
		} else {
			__atomic_fetch_add(&race_seen[1], 1, __ATOMIC_RELAXED);
		}
		msa_disk_entry_clear(&e);
	}
	return 0;
}

static void test_race(void)
{
	char dir[160], why[256];
	char *rblob = malloc(RACE_BLOB);
	int good;
	msa_disk_entry e;

	race_seen = mmap(NULL, 3 * sizeof(long), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (!rblob || race_seen == MAP_FAILED)
		bail("out of memory");
	for (int i = 0; i < RACE_BLOB; i++)
		rblob[i] = (char)(i ^ (i >> 9));
	msa_fmt(dir, sizeof dir, "%s/race", root);
	if (mkdir(dir, 0755) != 0)
		bail("race setup: %s", strerror(errno));
	race_arg ra = {dir, rblob};
	good = race_run(NPUT + NGET, NPUT, race_child, &ra, &race_seen[2], "put", "get");
	diag("race: getters saw %ld hits and %ld 'absent' misses", race_seen[0], race_seen[1]);
	munmap(race_seen, 3 * sizeof(long));
	is_int(good, NPUT + NGET, "8 putters x 20 puts, 8 getters reading meanwhile: all exit 0, no torn read");
	ok(msa_disk_get(dir, KEY_A, strlen(KEY_A), &e, why, sizeof why) == 1 &&
	   e.blob_len == RACE_BLOB && memcmp(e.blob, rblob, RACE_BLOB) == 0,
	   "the entry hits after the race");
	msa_disk_entry_clear(&e);
	is_int(count_prefix(dir, ".tmp."), 0, "no temp files left behind");
	is_int(count_suffix(dir, ".msac"), 1, "exactly one entry file");
	free(rblob);
}

/* ------------------------------------------------------------ errors */

static void test_errors(void)
{
	char file[160], dir[200], err[512], why[256];
	msa_disk_entry e;
	int rc;

	msa_fmt(file, sizeof file, "%s/plainfile", root);
	write_file(file, "x", 1);
	msa_fmt(dir, sizeof dir, "%s/sub/cache", file);
	err[0] = '\0';
	rc = msa_disk_put(dir, KEY_A, strlen(KEY_A), META_A, blob, 10, err, sizeof err);
	ok(rc != MSA_OK && strstr(err, dir), "put under a regular file fails naming the path (%s)", err);
	err[0] = '\0';
	rc = msa_disk_put(file, KEY_A, strlen(KEY_A), META_A, blob, 10, err, sizeof err);
	ok(rc != MSA_OK && strstr(err, file), "put into a regular file as dir fails naming it (%s)", err);
	is_int(count_prefix(root, ".tmp."), 0, "failed puts leave no temp files");

	if (geteuid() == 0) {
		skip(1, "root ignores directory permissions");
	} else {
		msa_fmt(dir, sizeof dir, "%s/locked", root);
		put(dir, KEY_A, META_A, blob, 10);
		chmod(dir, 0);
		rc = msa_disk_get(dir, KEY_A, strlen(KEY_A), &e, why, sizeof why);
		ok(rc == -MSA_EIO && strstr(why, dir), "unreadable dir: get is an I/O error, not a miss (%s)", why);
		chmod(dir, 0755);
	}
}

int main(void)
{
	plan(71);
	msa_fmt(root, sizeof root, "/tmp/t_cache.XXXXXX");
	if (!mkdtemp(root))
		bail("mkdtemp: %s", strerror(errno));
	msa_fmt(cdir, sizeof cdir, "%s/cache/sub", root);

	test_sha256();
	test_memtab();
	test_disk_basic();
	test_disk_list_clear();
	test_race();
	test_errors();

	nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	ok(access(root, F_OK) != 0, "temp dir removed");
	return done_testing();
}

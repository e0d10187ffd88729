/* kvdb.c - a small text key-value file: the tuning database.
 *
 * Format (v1):
 *   # msagen tuning db v1
 *   <16 hex: first 8 bytes of sha256(key TAB value)> <key>\t<value>\n
 *   ...
 *
 * Text, so a person can read, grep and diff it; a checksum per line, so a
 * damaged line costs that record and nothing else.  A file whose first
 * line is not our header holds no valid records and the next write
 * replaces it, except a header from a newer version of this format: that
 * file is left alone (MSA_EUNSUPPORTED), because rewriting it as v1 would
 * throw away a newer build's records.
 *
 * Readers take no lock.  Writers never modify the published file: under an
 * exclusive flock on "<path>.lock" they read it, edit the records in
 * memory, write a temp file in the same directory, fsync and rename it
 * over the path.  rename is atomic, so a reader opens the old file or the
 * new one, never a mix; the lock makes read-modify-write serial, so no
 * writer loses another's record.  The lock file stays: unlinking it while
 * another process waits on its fd would let a third lock a fresh inode
 * and run beside it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define KV_MAGIC "# msagen tuning db v"
#define KV_VERSION 1
#define KV_HEADER KV_MAGIC "1"
#define SUM_LEN 16
/* Far above any tuning database; stops a bogus huge file being read. */
#define MAX_FILE ((size_t)1 << 28)

enum { HDR_OK, HDR_FOREIGN, HDR_NEWER };

typedef struct kv_rec {
	char sum[SUM_LEN + 1];
	const char *key, *val;	/* into the table's buffer or the caller's */
} kv_rec;

/* A database file parsed for rewriting. */
typedef struct kv_table {
	kv_rec *r;
	int n, cap;
	int bad;		/* lines skipped while reading */
	int hdr;		/* HDR_* */
	int version;		/* the header's, when HDR_NEWER */
	int nomem;
	char *buf;		/* the file as read (NULL if absent) */
} kv_table;

typedef void (*kv_visit)(void *arg, const char *sum, const char *key, const char *val);

/* Printable text: control bytes would break the line format or a
 * terminal; bytes >= 0x80 pass, so UTF-8 keys are fine. */
static int text_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

static int key_ok(const char *key)
{
	return key && key[0] && text_ok(key, strlen(key));
}

static void line_sum(const char *key, size_t klen, const char *val, size_t vlen,
		     char out[SUM_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	msa_sha256 s;
	uint8_t d[32];

	msa_sha256_init(&s);
	msa_sha256_update(&s, key, klen);
	msa_sha256_update(&s, "\t", 1);
	msa_sha256_update(&s, val, vlen);
	msa_sha256_final(&s, d);
	for (int i = 0; i < SUM_LEN / 2; i++) {
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[SUM_LEN] = '\0';
}

/* The whole file, NUL-terminated.  An absent file is MSA_OK with *data
 * NULL; MSA_EIO (errno set) or MSA_ENOMEM otherwise. */
static int load(const char *path, char **data, size_t *len)
{
	int rc = MSA_EIO, fd;
	struct stat st;
	ssize_t got;

	*data = NULL;
	*len = 0;
	/* O_NONBLOCK: a FIFO at the path must not hang the reader. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? MSA_OK : MSA_EIO;
	if (fstat(fd, &st) != 0)
		goto out;
	if (!S_ISREG(st.st_mode)) {
		errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		goto out;
	}
	if ((uint64_t)st.st_size > MAX_FILE) {
		errno = EFBIG;
		goto out;
	}
	*data = malloc((size_t)st.st_size + 1);
	if (!*data) {
		rc = MSA_ENOMEM;
		goto out;
	}
	got = msa_read_full(fd, *data, (size_t)st.st_size);
	if (got < 0) {
		free(*data);
		*data = NULL;
		goto out;
	}
	(*data)[got] = '\0';
	*len = (size_t)got;
	rc = MSA_OK;
out:
	close(fd);
	return rc;
}

static int header_state(const char *p, size_t n, int *version)
{
	size_t m = strlen(KV_MAGIC), i;
	long v = 0;

	if (n <= m || memcmp(p, KV_MAGIC, m) != 0)
		return HDR_FOREIGN;
	for (i = m; i < n && p[i] >= '0' && p[i] <= '9' && v < 1000000; i++)
		v = v * 10 + (p[i] - '0');
	if (i != n || p[m] == '0')
		return HDR_FOREIGN;
	*version = (int)v;
	if (v == KV_VERSION)
		return HDR_OK;
	return v > KV_VERSION ? HDR_NEWER : HDR_FOREIGN;
}

/* One record line [p, eol); *eol is writable.  1 = valid (fn called),
 * 0 = bad, -1 = another key than want (a non-NULL want skips the
 * checksum of every other line: a get reads the whole file). */
static int parse_line(char *p, char *eol, const char *want, kv_visit fn, void *arg)
{
	char sum[SUM_LEN + 1], *key = p + SUM_LEN + 1, *tab;

	if (eol - p < SUM_LEN + 3 || p[SUM_LEN] != ' ')
		return 0;
	tab = memchr(key, '\t', (size_t)(eol - key));
	if (!tab || tab == key)
		return 0;
	if (want && (strlen(want) != (size_t)(tab - key) || memcmp(want, key, (size_t)(tab - key)) != 0))
		return -1;
	if (!text_ok(key, (size_t)(tab - key)) || !text_ok(tab + 1, (size_t)(eol - tab - 1)))
		return 0;
	line_sum(key, (size_t)(tab - key), tab + 1, (size_t)(eol - tab - 1), sum);
	/* Lowercase only, as written: uppercase hex means someone edited it. */
	if (memcmp(sum, p, SUM_LEN) != 0)
		return 0;
	*tab = '\0';
	*eol = '\0';
	if (fn)
		fn(arg, p, key, tab + 1);
	return 1;
}

/* Visit the valid records of buf (len bytes, buf[len] writable), which is
 * cut into strings in place; only want's if want is not NULL.  Every
 * skipped line counts in *bad; under a header other than ours, that is
 * every line.  Returns HDR_*. */
static int scan(char *buf, size_t len, const char *want, kv_visit fn, void *arg, int *bad,
		int *version)
{
	char *p = buf, *end = buf + len;
	int hdr = HDR_OK, nbad = 0, first = 1;

	*version = KV_VERSION;
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		char *eol = nl ? nl : end;

		if (first)
			hdr = header_state(p, (size_t)(eol - p), version);
		if (hdr != HDR_OK)
			nbad++;
		else if (!first && parse_line(p, eol, want, fn, arg) == 0)
			nbad++;
		first = 0;
		p = nl ? nl + 1 : end;
	}
	if (bad)
		*bad = nbad;
	return hdr;
}

/* ------------------------------------------------------------ readers */

typedef struct find_arg {
	const char *key;
	const char *val;
} find_arg;

static void find_one(void *arg, const char *sum, const char *key, const char *val)
{
	find_arg *f = arg;
	(void)sum;
	/* The last wins, as a hand-edited file may repeat a key. */
	if (strcmp(key, f->key) == 0)
		f->val = val;
}

int msa_kvdb_get(const char *path, const char *key, char **value)
{
	int rc, version;
	char *buf;
	size_t len;
	find_arg f = {key, NULL};

	if (value)
		*value = NULL;
	if (!path || !value || !key_ok(key))
		return -MSA_EINVAL;
	rc = load(path, &buf, &len);
	if (rc != MSA_OK)
		return -rc;
	if (!buf)
		return 0;
	scan(buf, len, key, find_one, &f, NULL, &version);
	rc = 0;
	if (f.val) {
		*value = strdup(f.val);
		rc = *value ? 1 : -MSA_ENOMEM;
	}
	free(buf);
	return rc;
}

typedef struct each_arg {
	void (*fn)(void *arg, const char *key, const char *value);
	void *arg;
	int n;
} each_arg;

static void each_one(void *arg, const char *sum, const char *key, const char *val)
{
	each_arg *e = arg;
	(void)sum;
	e->n++;
	if (e->fn)
		e->fn(e->arg, key, val);
}

/* fn's key and value live only during the call. */
int msa_kvdb_each(const char *path, void (*fn)(void *arg, const char *key, const char *value),
		  void *arg, int *bad)
{
	int rc, version;
	char *buf;
	size_t len;
	each_arg e = {fn, arg, 0};

	if (bad)
		*bad = 0;
	if (!path)
		return -MSA_EINVAL;
	rc = load(path, &buf, &len);
	if (rc != MSA_OK)
		return -rc;
	if (!buf)
		return 0;
	scan(buf, len, NULL, each_one, &e, bad, &version);
	free(buf);
	return e.n;
}

/* ------------------------------------------------------------ tables */

static int table_add(kv_table *t, const char *sum, const char *key, const char *val)
{
	if (t->n == t->cap) {
		int cap = t->cap ? 2 * t->cap : 64;
		kv_rec *r = realloc(t->r, (size_t)cap * sizeof *r);
		if (!r)
			return -1;
		t->r = r;
		t->cap = cap;
	}
	if (sum) {
		memcpy(t->r[t->n].sum, sum, SUM_LEN);
		t->r[t->n].sum[SUM_LEN] = '\0';
	} else {
		line_sum(key, strlen(key), val, strlen(val), t->r[t->n].sum);
	}
	t->r[t->n].key = key;
	t->r[t->n].val = val;
	t->n++;
	return 0;
}

static void table_add_one(void *arg, const char *sum, const char *key, const char *val)
{
	kv_table *t = arg;
	if (!t->nomem && table_add(t, sum, key, val) != 0)
		t->nomem = 1;
}

static void table_free(kv_table *t)
{
	free(t->r);
	free(t->buf);
	memset(t, 0, sizeof *t);
}

/* MSA_OK, MSA_EIO (errno set) or MSA_ENOMEM.  An absent file is an empty
 * table with buf NULL. */
static int table_load(const char *path, kv_table *t)
{
	size_t len;
	int rc;

	memset(t, 0, sizeof *t);
	rc = load(path, &t->buf, &len);
	if (rc != MSA_OK || !t->buf)
		return rc;
	t->hdr = scan(t->buf, len, NULL, table_add_one, t, &t->bad, &t->version);
	return t->nomem ? MSA_ENOMEM : MSA_OK;
}

/* Set key's record in place (or append it), dropping repeats of the key.
 * sum may be NULL.  1 = changed, 0 = already so, -MSA_ENOMEM. */
static int table_set(kv_table *t, const char *key, const char *val, const char *sum)
{
	int hit = -1, changed = 0, j = 0;

	for (int i = 0; i < t->n; i++) {
		if (strcmp(t->r[i].key, key) == 0) {
			if (hit >= 0) {
				changed = 1;
				continue;
			}
			hit = j;
		}
		t->r[j++] = t->r[i];
	}
	t->n = j;
	if (hit < 0)
		return table_add(t, sum, key, val) == 0 ? 1 : -MSA_ENOMEM;
	if (strcmp(t->r[hit].val, val) == 0)
		return changed;
	t->r[hit].val = val;
	if (sum) {
		memcpy(t->r[hit].sum, sum, SUM_LEN);
	} else {
		line_sum(key, strlen(key), val, strlen(val), t->r[hit].sum);
	}
	return 1;
}

static char *table_text(const kv_table *t, size_t *len)
{
	size_t n = strlen(KV_HEADER) + 1;
	char *buf, *p;

	for (int i = 0; i < t->n; i++)
		n += SUM_LEN + 1 + strlen(t->r[i].key) + 1 + strlen(t->r[i].val) + 1;
	buf = malloc(n);
	if (!buf)
		return NULL;
	p = buf + sprintf(buf, "%s\n", KV_HEADER);
	for (int i = 0; i < t->n; i++) {
		size_t kl = strlen(t->r[i].key), vl = strlen(t->r[i].val);
		memcpy(p, t->r[i].sum, SUM_LEN);
		p[SUM_LEN] = ' ';
		p += SUM_LEN + 1;
		memcpy(p, t->r[i].key, kl);
		p[kl] = '\t';
		p += kl + 1;
		memcpy(p, t->r[i].val, vl);
		p[vl] = '\n';
		p += vl + 1;
	}
	*len = n;
	return buf;
}

/* ------------------------------------------------------------ writers */

/* The directory of path (or ".") into dir; *base is its last component. */
static int split_path(const char *path, char *dir, size_t n, const char **base)
{
	const char *slash = strrchr(path, '/');
	size_t dlen;

	*base = slash ? slash + 1 : path;
	if (strlen(path) >= n)
		return -1;
	if (!**base || strcmp(*base, ".") == 0 || strcmp(*base, "..") == 0)
		return -1;
	if (!slash) {
		msa_fmt(dir, n, ".");
		return 0;
	}
	dlen = slash == path ? 1 : (size_t)(slash - path);
	if (dlen >= n)
		return -1;
	memcpy(dir, path, dlen);
	dir[dlen] = '\0';
	return 0;
}

/* The locked fd, or -1 with err set. */
static int lock_db(const char *path, char *err, size_t errlen)
{
	char lp[4200];
	int fd;

	msa_fmt(lp, sizeof lp, "%s.lock", path);
	/* Read-only is enough for flock, and works on a shared database
	 * whose lock file another user created. */
	fd = open(lp, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		msa_fmt(err, errlen, "kvdb %s: cannot open lock file %s: %s", path, lp, strerror(errno));
		return -1;
	}
	while (flock(fd, LOCK_EX) != 0) {
		if (errno == EINTR)
			continue;
		msa_fmt(err, errlen, "kvdb %s: flock %s: %s", path, lp, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* ".<base>.tmp.<digits>.<digits>": a temp file of ours, and no other db's. */
static int is_temp(const char *name, const char *base)
{
	size_t bl = strlen(base);
	const char *p;
	int parts = 0;

	if (name[0] != '.' || strncmp(name + 1, base, bl) != 0 || strncmp(name + 1 + bl, ".tmp.", 5) != 0)
		return 0;
	for (p = name + bl + 6; parts < 2; parts++) {
		const char *q = p;
		while (*p >= '0' && *p <= '9')
			p++;
		if (p == q || *p != (parts == 0 ? '.' : '\0'))
			return 0;
		p++;
	}
	return 1;
}

/* Every writer holds the lock while its temp file exists, so one found by
 * the lock holder belongs to a writer that died: remove it. */
static void sweep_temps(const char *dir, const char *base)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[4600];

	if (!d)
		return;
	while ((de = readdir(d)) != NULL) {
		if (!is_temp(de->d_name, base))
			continue;
		msa_fmt(p, sizeof p, "%s/%s", dir, de->d_name);
		(void)unlink(p);
	}
	closedir(d);
}

/* Write t to a temp file and rename it over path.  The caller holds the
 * lock. */
static int publish(const char *path, const char *dir, const char *base, const kv_table *t,
		   char *err, size_t errlen)
{
	int rc;
	size_t len;
	char *text = table_text(t, &len);

	if (!text) {
		msa_fmt(err, errlen, "kvdb %s: out of memory", path);
		return MSA_ENOMEM;
	}
	sweep_temps(dir, base);
	{
		char prefix[300], why[1024];
		const void *parts[] = {text};
		size_t lens[] = {len};
		msa_fmt(prefix, sizeof prefix, ".%s.tmp.", base);
		rc = msa_publish(path, prefix, parts, lens, 1, why, sizeof why);
		if (rc != MSA_OK)
			msa_fmt(err, errlen, "kvdb %s: %s", path, why);
	}
	free(text);
	return rc;
}

/* >0 changed, 0 unchanged, <0 -MSA_E*. */
typedef int (*kv_edit)(kv_table *t, void *arg);

/* Locked read-modify-write of path; the file is rewritten when the edit
 * changed it or when reading it skipped anything. */
static int update(const char *path, kv_edit edit, void *arg, char *err, size_t errlen)
{
	int rc, lockfd, changed;
	char dir[4096];
	const char *base;
	kv_table t;

	memset(&t, 0, sizeof t);
	if (split_path(path, dir, sizeof dir, &base) != 0) {
		msa_fmt(err, errlen, "kvdb %s: not a file path", path);
		return MSA_EINVAL;
	}
	rc = msa_mkdirs(dir);
	if (rc != MSA_OK) {
		msa_fmt(err, errlen, "kvdb %s: cannot create directory %s: %s", path, dir,
			rc == MSA_EIO ? strerror(errno) : "path too long");
		return rc;
	}
	lockfd = lock_db(path, err, errlen);
	if (lockfd < 0)
		return MSA_EIO;
	rc = table_load(path, &t);
	if (rc != MSA_OK) {
		msa_fmt(err, errlen, "kvdb %s: read: %s", path,
			rc == MSA_EIO ? strerror(errno) : "out of memory");
		goto out;
	}
	if (t.hdr == HDR_NEWER) {
		msa_fmt(err, errlen, "kvdb %s: format v%d is newer than this build's v%d; not rewriting it",
			path, t.version, KV_VERSION);
		rc = MSA_EUNSUPPORTED;
		goto out;
	}
	changed = edit(&t, arg);
	if (changed < 0) {
		msa_fmt(err, errlen, "kvdb %s: out of memory", path);
		rc = -changed;
		goto out;
	}
	if (changed || t.bad || t.hdr != HDR_OK)
		rc = publish(path, dir, base, &t, err, errlen);
out:
	table_free(&t);
	close(lockfd);		/* releases the flock */
	return rc;
}

typedef struct put_arg {
	const char *key, *val;
} put_arg;

static int put_edit(kv_table *t, void *arg)
{
	put_arg *p = arg;
	return table_set(t, p->key, p->val, NULL);
}

static int del_edit(kv_table *t, void *arg)
{
	const char *key = arg;
	int j = 0;

	for (int i = 0; i < t->n; i++)
		if (strcmp(t->r[i].key, key) != 0)
			t->r[j++] = t->r[i];
	if (j == t->n)
		return 0;
	t->n = j;
	return 1;
}

static int merge_edit(kv_table *t, void *arg)
{
	const kv_table *src = arg;
	int changed = 0;

	for (int i = 0; i < src->n; i++) {
		int r = table_set(t, src->r[i].key, src->r[i].val, src->r[i].sum);
		if (r < 0)
			return r;
		changed |= r;
	}
	return changed;
}

int msa_kvdb_put(const char *path, const char *key, const char *value, char *err, size_t errlen)
{
	put_arg p = {key, value};

	if (!path || !key_ok(key) || !value || !text_ok(value, strlen(value))) {
		msa_fmt(err, errlen, "kvdb %s: key and value must be printable text without TAB or newline (and the key not empty)",
			path ? path : "(null)");
		return MSA_EINVAL;
	}
	return update(path, put_edit, &p, err, errlen);
}

int msa_kvdb_del(const char *path, const char *key, char *err, size_t errlen)
{
	char *old = NULL;
	int rc;

	if (!path || !key_ok(key)) {
		msa_fmt(err, errlen, "kvdb %s: invalid key", path ? path : "(null)");
		return MSA_EINVAL;
	}
	/* Nothing to delete needs no lock, and creates no file. */
	rc = msa_kvdb_get(path, key, &old);
	free(old);
	if (rc == 0)
		return MSA_OK;
	return update(path, del_edit, (void *)key, err, errlen);
}

int msa_kvdb_merge(const char *dst, const char *src, int *merged, char *err, size_t errlen)
{
	int rc;
	kv_table s;

	if (merged)
		*merged = 0;
	if (!dst || !src) {
		msa_fmt(err, errlen, "kvdb merge: invalid argument");
		return MSA_EINVAL;
	}
	/* src is read without a lock, like any reader: it is one whole
	 * version of the file either way. */
	rc = table_load(src, &s);
	if (rc == MSA_OK && !s.buf)
		errno = ENOENT;
	if (rc != MSA_OK || !s.buf) {
		msa_fmt(err, errlen, "kvdb merge: read %s: %s", src,
			rc == MSA_ENOMEM ? "out of memory" : strerror(errno));
		rc = rc == MSA_ENOMEM ? MSA_ENOMEM : MSA_EIO;
		goto out;
	}
	if (s.hdr == HDR_NEWER) {
		msa_fmt(err, errlen, "kvdb merge: %s has format v%d, newer than this build's v%d",
			src, s.version, KV_VERSION);
		rc = MSA_EUNSUPPORTED;
		goto out;
	}
	if (s.n > 0)
		rc = update(dst, merge_edit, &s, err, errlen);
	if (rc == MSA_OK && merged)
		*merged = s.n;
out:
	table_free(&s);
	return rc;
}

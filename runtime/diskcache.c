/* diskcache.c - one file per compiled kernel, published atomically.
 *
 * Layout (all integers little-endian, written byte by byte so the format
 * does not depend on struct padding or host order):
 *   0  magic "MSAGENC\1"        8 bytes
 *   8  u32 format version       MSA_DISK_FORMAT
 *  12  u32 flags                0
 *  16  u64 key_len
 *  24  u64 meta_len
 *  32  u64 blob_len
 *  40  sha256(key || meta || blob)  32 bytes
 *  72  key, meta (no NUL), blob
 *
 * Readers trust nothing: lengths are checked against the real file size
 * before anything is allocated, the checksum covers the whole body, and the
 * stored key is compared in full because the file name is only a hash.
 * Any mismatch is a miss; the caller recompiles and overwrites.
 *
 * Writers never modify a published file: they write a private temp file in
 * the same directory, fsync it and rename it over the final name.  rename
 * is atomic within a filesystem, so a reader sees the old file or the new
 * one, never a mix, and concurrent writers of one key simply replace equal
 * bytes with equal bytes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define HDR_SIZE 72
#define SUFFIX ".msac"
#define TMP_PREFIX ".tmp."
/* Far above any cubin; stops a bogus multi-gigabyte file from being read. */
#define MAX_BODY ((uint64_t)1 << 30)
/* A temp file this old has no live writer (a put takes milliseconds). */
#define TMP_STALE_S 60

static const uint8_t MAGIC[8] = {'M', 'S', 'A', 'G', 'E', 'N', 'C', 1};

/* One entry file read into memory; body is key || meta || blob. */
typedef struct entry_file {
	char *body;		/* malloc'ed; NULL if never read */
	uint64_t key_len, meta_len, blob_len;
	size_t size;		/* of the whole file */
} entry_file;

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* dir/name into buf; -1 if it does not fit. */
static int join(char *buf, size_t n, const char *dir, const char *name)
{
	int w = snprintf(buf, n, "%s/%s", dir, name);
	return w < 0 || (size_t)w >= n ? -1 : 0;
}

static void checksum(const void *key, size_t key_len, const void *meta, size_t meta_len,
		     const void *blob, size_t blob_len, uint8_t out[32])
{
	msa_sha256 s;
	msa_sha256_init(&s);
	msa_sha256_update(&s, key, key_len);
	msa_sha256_update(&s, meta, meta_len);
	msa_sha256_update(&s, blob, blob_len);
	msa_sha256_final(&s, out);
}

/* Header checks, in the order that gives the most useful reason.  size is
 * the real file size, which bounds every length before any allocation. */
static int check_header(const uint8_t *h, size_t size, entry_file *ef, char *why, size_t whylen)
{
	uint32_t version = (uint32_t)get_le(h + 8, 4), flags = (uint32_t)get_le(h + 12, 4);
	uint64_t body = size - HDR_SIZE;

	if (memcmp(h, MAGIC, sizeof MAGIC) != 0) {
		msa_fmt(why, whylen, "bad magic (not a msagen cache entry)");
		return 0;
	}
	if (version != MSA_DISK_FORMAT) {
		msa_fmt(why, whylen, "format version %u, this build reads %u", version, MSA_DISK_FORMAT);
		return 0;
	}
	if (flags != 0) {
		msa_fmt(why, whylen, "unknown flags 0x%x", flags);
		return 0;
	}
	ef->key_len = get_le(h + 16, 8);
	ef->meta_len = get_le(h + 24, 8);
	ef->blob_len = get_le(h + 32, 8);
	/* Subtract rather than add: hostile lengths near 2^64 cannot wrap. */
	if (ef->key_len > body || ef->meta_len > body - ef->key_len ||
	    ef->blob_len > body - ef->key_len - ef->meta_len) {
		msa_fmt(why, whylen, "truncated: header declares more than the %llu body bytes present",
			(unsigned long long)body);
		return 0;
	}
	if (ef->key_len + ef->meta_len + ef->blob_len != body) {
		msa_fmt(why, whylen, "length mismatch: %llu trailing bytes after the blob",
			(unsigned long long)(body - ef->key_len - ef->meta_len - ef->blob_len));
		return 0;
	}
	return 1;
}

/* Read and verify one entry file.  1 = valid; 0 = absent or invalid (why
 * says which; ef->body stays set when only the checksum failed, so a
 * listing can still show the metadata); -MSA_EIO on an I/O error other
 * than absence.  The caller frees ef->body in every case. */
static int read_entry(const char *path, entry_file *ef, char *why, size_t whylen)
{
	int rc, fd;
	struct stat st;
	uint8_t h[HDR_SIZE], sum[32];
	ssize_t got;
	size_t body;

	memset(ef, 0, sizeof *ef);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			msa_fmt(why, whylen, "absent");
			return 0;
		}
		msa_fmt(why, whylen, "open %s: %s", path, strerror(errno));
		return -MSA_EIO;
	}
	rc = -MSA_EIO;
	if (fstat(fd, &st) != 0) {
		msa_fmt(why, whylen, "stat %s: %s", path, strerror(errno));
		goto out;
	}
	rc = 0;
	if (!S_ISREG(st.st_mode)) {
		msa_fmt(why, whylen, "not a regular file");
		goto out;
	}
	ef->size = (size_t)st.st_size;
	if (ef->size < HDR_SIZE) {
		msa_fmt(why, whylen, "truncated: %zu bytes, the header alone is %d", ef->size, HDR_SIZE);
		goto out;
	}
	got = msa_read_full(fd, h, HDR_SIZE);
	if (got != HDR_SIZE) {
		rc = got < 0 ? -MSA_EIO : 0;
		msa_fmt(why, whylen, "%s %s: %s", got < 0 ? "read" : "truncated while reading",
			path, got < 0 ? strerror(errno) : "short header");
		goto out;
	}
	if (!check_header(h, ef->size, ef, why, whylen))
		goto out;
	body = ef->size - HDR_SIZE;
	if (body > MAX_BODY) {
		msa_fmt(why, whylen, "entry too large (%zu bytes)", body);
		goto out;
	}
	ef->body = malloc(body + 1);	/* +1: never malloc(0) */
	if (!ef->body) {
		rc = -MSA_ENOMEM;
		msa_fmt(why, whylen, "out of memory reading %s", path);
		goto out;
	}
	got = msa_read_full(fd, ef->body, body);
	if (got < 0 || (size_t)got != body) {
		rc = got < 0 ? -MSA_EIO : 0;
		msa_fmt(why, whylen, "%s %s: %s", got < 0 ? "read" : "truncated while reading",
			path, got < 0 ? strerror(errno) : "file shrank");
		free(ef->body);
		ef->body = NULL;
		goto out;
	}
	checksum(ef->body, ef->key_len, ef->body + ef->key_len, ef->meta_len,
		 ef->body + ef->key_len + ef->meta_len, ef->blob_len, sum);
	if (memcmp(sum, h + 40, 32) != 0) {
		msa_fmt(why, whylen, "checksum mismatch (corrupt or torn entry)");
		goto out;
	}
	rc = 1;
out:
	close(fd);
	return rc;
}

static char *meta_copy(const entry_file *ef)
{
	char *m = malloc(ef->meta_len + 1);
	if (!m)
		return NULL;
	memcpy(m, ef->body + ef->key_len, ef->meta_len);
	m[ef->meta_len] = '\0';
	return m;
}

void msa_disk_entry_clear(msa_disk_entry *e)
{
	if (!e)
		return;
	free(e->meta);
	free(e->blob);
	memset(e, 0, sizeof *e);
}

void msa_disk_name(const char *key, size_t key_len, char name[80])
{
	char hex[65];
	msa_sha256_hex(key, key_len, hex);
	msa_fmt(name, 80, "%s" SUFFIX, hex);
}

int msa_disk_get(const char *dir, const char *key, size_t key_len,
		 msa_disk_entry *e, char *why, size_t whylen)
{
	int rc;
	char name[80], path[4096];
	entry_file ef;

	if (e)
		memset(e, 0, sizeof *e);
	if (!dir || !e || (!key && key_len)) {
		msa_fmt(why, whylen, "invalid argument");
		return -MSA_EINVAL;
	}
	msa_disk_name(key, key_len, name);
	if (join(path, sizeof path, dir, name) != 0) {
		msa_fmt(why, whylen, "cache path too long: %s", dir);
		return -MSA_EINVAL;
	}
	rc = read_entry(path, &ef, why, whylen);
	if (rc != 1)
		goto out;
	if (ef.key_len != key_len || memcmp(ef.body, key, key_len) != 0) {
		msa_fmt(why, whylen, "key mismatch (hash collision or other generator)");
		rc = 0;
		goto out;
	}
	e->meta = meta_copy(&ef);
	if (!e->meta) {
		msa_fmt(why, whylen, "out of memory");
		rc = -MSA_ENOMEM;
		goto out;
	}
	/* Hand the body over as the blob: slide the blob to the front. */
	memmove(ef.body, ef.body + ef.key_len + ef.meta_len, ef.blob_len);
	e->blob = ef.body;
	e->blob_len = ef.blob_len;
	ef.body = NULL;
	msa_fmt(why, whylen, "hit");
out:
	free(ef.body);
	return rc;
}

/* Returns MSA_OK or a positive MSA_E* with err naming the path and cause. */
int msa_disk_put(const char *dir, const char *key, size_t key_len,
		 const char *meta, const void *blob, size_t blob_len,
		 char *err, size_t errlen)
{
	int rc;
	char name[80], path[4096];
	uint8_t h[HDR_SIZE];
	size_t meta_len;

	if (!dir || (!key && key_len) || (!blob && blob_len)) {
		msa_fmt(err, errlen, "disk cache put: invalid argument");
		return MSA_EINVAL;
	}
	if (!meta)
		meta = "";
	meta_len = strlen(meta);
	if ((uint64_t)key_len + meta_len + blob_len > MAX_BODY) {
		msa_fmt(err, errlen, "disk cache put: entry of %llu bytes is too large",
			(unsigned long long)key_len + meta_len + blob_len);
		return MSA_EINVAL;
	}
	msa_disk_name(key, key_len, name);
	if (join(path, sizeof path, dir, name) != 0) {
		msa_fmt(err, errlen, "cache path too long: %s", dir);
		return MSA_EINVAL;
	}
	rc = msa_mkdirs(dir);
	if (rc != MSA_OK) {
		msa_fmt(err, errlen, "cannot create cache directory %s: %s", dir,
			rc == MSA_EIO ? strerror(errno) : "empty or too long a path");
		return rc;
	}

	memcpy(h, MAGIC, sizeof MAGIC);
	put_le(h + 8, MSA_DISK_FORMAT, 4);
	put_le(h + 12, 0, 4);
	put_le(h + 16, key_len, 8);
	put_le(h + 24, meta_len, 8);
	put_le(h + 32, blob_len, 8);
	checksum(key, key_len, meta, meta_len, blob, blob_len, h + 40);

	{
		const void *parts[] = {h, key, meta, blob};
		size_t lens[] = {HDR_SIZE, key_len, meta_len, blob_len};
		return msa_publish(path, TMP_PREFIX, parts, lens, 4, err, errlen);
	}
}

int msa_disk_list(const char *dir, void (*fn)(void *arg, const msa_disk_info *info), void *arg)
{
	int n = 0;
	DIR *d;
	struct dirent *de;

	if (!dir)
		return -MSA_EINVAL;
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -MSA_EIO;
	while ((de = readdir(d)) != NULL) {
		msa_disk_info info;
		entry_file ef;
		char path[4096];
		int r;

		if (de->d_name[0] == '.' || !ends_with(de->d_name, SUFFIX))
			continue;
		if (join(path, sizeof path, dir, de->d_name) != 0)
			continue;
		memset(&info, 0, sizeof info);
		msa_fmt(info.file, sizeof info.file, "%s", de->d_name);
		r = read_entry(path, &ef, info.problem, sizeof info.problem);
		if (r == 0 && strcmp(info.problem, "absent") == 0) {
			free(ef.body);
			continue;	/* removed since readdir: not an entry any more */
		}
		info.ok = r == 1;
		if (info.ok)
			info.problem[0] = '\0';
		info.size = ef.size;
		if (ef.body)
			info.meta = meta_copy(&ef);
		free(ef.body);
		n++;
		if (fn)
			fn(arg, &info);
		free(info.meta);
	}
	closedir(d);
	return n;
}

/* Returns the number of entries (*.msac) removed, or -MSA_EIO if one could
 * not be.  Stale temp files left by crashed writers go too, uncounted;
 * fresh ones stay, as deleting one would fail a concurrent put's rename. */
int msa_disk_clear(const char *dir)
{
	int n = 0, rc = 0;
	DIR *d;
	struct dirent *de;
	time_t now = time(NULL);

	if (!dir)
		return -MSA_EINVAL;
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -MSA_EIO;
	while ((de = readdir(d)) != NULL) {
		char path[4096];
		struct stat st;
		int entry = de->d_name[0] != '.' && ends_with(de->d_name, SUFFIX);

		if (join(path, sizeof path, dir, de->d_name) != 0)
			continue;
		if (!entry) {
			if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0 ||
			    lstat(path, &st) != 0 || now - st.st_mtime < TMP_STALE_S)
				continue;
		}
		if (unlink(path) == 0)
			n += entry;
		else if (errno != ENOENT)
			rc = -MSA_EIO;
	}
	closedir(d);
	return rc < 0 ? rc : n;
}

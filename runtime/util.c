/* util.c - small helpers shared by every stage. */
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

void msa_fmt(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	if (!buf || n == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, n, fmt, ap);
	va_end(ap);
}

char *msa_strdupf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

int msa_env_is(const char *name, const char *value)
{
	const char *v = getenv(name);
	return v && strcmp(v, value) == 0;
}

double msa_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int msa_read_file(const char *path, char **data, size_t *len)
{
	int rc = MSA_EIO;
	char *buf = NULL;
	FILE *f = fopen(path, "rb");
	long n;
	*data = NULL;
	*len = 0;
	if (!f)
		return MSA_EIO;
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
		goto out;
	buf = malloc((size_t)n + 1);
	if (!buf) {
		rc = MSA_ENOMEM;
		goto out;
	}
	if (fread(buf, 1, (size_t)n, f) != (size_t)n)
		goto out;
	buf[n] = '\0';
	*data = buf;
	*len = (size_t)n;
	buf = NULL;
	rc = MSA_OK;
out:
	free(buf);
	fclose(f);
	return rc;
}

int msa_mkdirs(const char *path)
{
	char tmp[1024];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof tmp)
		return MSA_EINVAL;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
			return MSA_EIO;
		*p = '/';
	}
	if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
		return MSA_EIO;
	return MSA_OK;
}

const char *msa_status_name(int status)
{
	static const char *const names[] = {
		"ok", "invalid argument", "spec error", "compile error",
		"CUDA error", "no CUDA device", "out of memory", "I/O error",
		"unsupported"};
	if (status < 0 || status >= MSA_COUNT(names))
		return "unknown status";
	return names[status];
}

const char *msa_dtype_name(msa_dtype dt)
{
	switch (dt) {
	case MSA_DT_BF16: return "bf16";
	case MSA_DT_FP16: return "fp16";
	case MSA_DT_FP8_E4M3: return "fp8_e4m3";
	}
	return "?";
}

size_t msa_dtype_size(msa_dtype dt)
{
	return dt == MSA_DT_FP8_E4M3 ? 1 : 2;
}

ssize_t msa_read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, (char *)buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

int msa_write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* A temp file no other writer (thread or process) can have: pid and a
 * process counter in the name, O_EXCL as the guard. */
static int open_temp(const char *dir, const char *prefix, char *tmp, size_t n)
{
	static atomic_uint counter;
	for (int tries = 0; tries < 64; tries++) {
		unsigned c = atomic_fetch_add(&counter, 1);
		int w = snprintf(tmp, n, "%s/%s%ld.%u", dir, prefix, (long)getpid(), c);
		int fd;
		if (w < 0 || (size_t)w >= n) {
			errno = ENAMETOOLONG;
			return -1;
		}
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	return -1;
}

int msa_publish(const char *path, const char *tmp_prefix, const void *const *parts, const size_t *lens,
		int nparts, char *err, size_t errlen)
{
	char dir[4096], tmp[4600];
	const char *slash = strrchr(path, '/');
	int rc = MSA_EIO, fd, dfd;

	msa_fmt(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
	if ((fd = open_temp(dir, tmp_prefix, tmp, sizeof tmp)) < 0) {
		msa_fmt(err, errlen, "cannot create a temp file in %s: %s", dir, strerror(errno));
		return MSA_EIO;
	}
	for (int i = 0; i < nparts; i++)
		if (msa_write_full(fd, parts[i], lens[i]) != 0) {
			msa_fmt(err, errlen, "write %s: %s", tmp, strerror(errno));
			goto out;
		}
	/* The data must be on disk before the rename makes it visible, or a
	 * crash could publish the name over unwritten blocks. */
	if (fsync(fd) != 0) {
		msa_fmt(err, errlen, "fsync %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) != 0) {
		fd = -1;
		msa_fmt(err, errlen, "close %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		msa_fmt(err, errlen, "rename %s -> %s: %s", tmp, path, strerror(errno));
		goto out;
	}
	tmp[0] = '\0';
	/* Best effort: the file is complete and visible; a crash that loses
	 * the rename loses only this update. */
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		(void)fsync(dfd);
		close(dfd);
	}
	rc = MSA_OK;
out:
	if (fd >= 0)
		close(fd);
	if (tmp[0])
		unlink(tmp);
	return rc;
}

/* util.c - small helpers shared by every stage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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

/* files.h - file helpers shared by the cache and database tests: write a
 * file in place (no temp file, so tests can plant partial or corrupt
 * content) and read one whole or bail out. */
#pragma once
#include <stdio.h>

#include "internal.h"
#include "tap.h"

static int write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int rc = 0;
	if (!f)
		return -1;
	if (len && fwrite(data, 1, len, f) != len)
		rc = -1;
	if (fclose(f) != 0)
		rc = -1;
	return rc;
}

static char *slurp(const char *path, size_t *len)
{
	char *d;
	if (msa_read_file(path, &d, len) != MSA_OK)
		bail("cannot read %s", path);
	return d;
}

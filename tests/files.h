/* files.h - helpers shared by the cache and database tests: write a file
 * in place (no temp file, so tests can plant partial or corrupt content),
 * read one whole or bail out, and race processes against one store. */
#pragma once
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Fork n children held at a gate until all exist, then released at once:
 * child i runs child(i, arg) and exits with its value.  Once the first
 * nfirst have exited the parent raises *done (shared memory) for the rest.
 * Gives how many exited 0; each other one gets a diag line naming it
 * (first or rest). */
static int race_run(int n, int nfirst, int (*child)(int i, void *arg), void *arg, long *done,
		    const char *first, const char *rest)
{
	int gate[2], good = 0;
	pid_t pids[64];
	if (n > 64 || pipe(gate) != 0)
		bail("race setup: %s", n > 64 ? "too many children" : strerror(errno));
	fflush(stdout);
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			bail("fork: %s", strerror(errno));
		if (pids[i] == 0) {
			char c;
			close(gate[1]);
			_exit(read(gate[0], &c, 1) != 0 ? 2 : child(i, arg));
		}
	}
	close(gate[0]);
	close(gate[1]);		/* open the gate: every child's read returns 0 */
	for (int i = 0; i < n; i++) {
		int st = -1;
		if (i == nfirst)
			__atomic_store_n(done, 1, __ATOMIC_RELEASE);
		if (waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			good++;
		else
			diag("child %d (%s) status 0x%x", i, i < nfirst ? first : rest, st);
	}
	return good;
}

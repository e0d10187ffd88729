/* nvrtc.c - generated source -> CUBIN through NVRTC, and the artifact key
 * that names what the compile depends on. */
#include <nvrtc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Everything that changes the binary is here, so it is also in the key.
 * No include paths: the templates need no headers. */
static int nvrtc_opts(const char *arch, char opts[][48], int max)
{
	int n = 0;
	msa_fmt(opts[n++], 48, "--gpu-architecture=%s", arch);
	msa_fmt(opts[n++], 48, "-std=c++17");
	msa_fmt(opts[n++], 48, "-default-device");
	msa_fmt(opts[n++], 48, "-DNDEBUG");
	msa_fmt(opts[n++], 48, "--ptxas-options=-v");
	return n <= max ? n : max;
}

void msa_nvrtc_options(const char *arch, char *buf, size_t n)
{
	char opts[8][48];
	int k = nvrtc_opts(arch, opts, 8);
	size_t off = 0;
	buf[0] = '\0';
	for (int i = 0; i < k && off < n; i++)
		off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? " " : "", opts[i]);
}

void msa_nvrtc_version_string(char *buf, size_t n)
{
	int maj = 0, min = 0;
	nvrtcVersion(&maj, &min);
	msa_fmt(buf, n, "%d.%d", maj, min);
}

char *msa_artifact_key(const char *src, size_t len, const char *arch, size_t *key_len)
{
	char ver[32], opts[512];
	char *head, *key;
	size_t hl;

	msa_nvrtc_version_string(ver, sizeof ver);
	msa_nvrtc_options(arch, opts, sizeof opts);
	head = msa_strdupf("msagen-artifact %d\ngenerator %s\nnvrtc %s\narch %s\n"
			   "options %s\nsource %zu\n",
			   MSA_DISK_FORMAT, MSAGEN_VERSION, ver, arch, opts, len);
	if (!head)
		return NULL;
	hl = strlen(head);
	key = malloc(hl + len + 1);
	if (key) {
		memcpy(key, head, hl);
		memcpy(key + hl, src, len);
		key[hl + len] = '\0';
		*key_len = hl + len;
	}
	free(head);
	return key;
}

void msa_compiled_clear(msa_compiled *c)
{
	free(c->cubin);
	free(c->log);
	memset(c, 0, sizeof *c);
}

static char *program_log(nvrtcProgram prog)
{
	size_t n = 0;
	char *log;
	if (nvrtcGetProgramLogSize(prog, &n) != NVRTC_SUCCESS || n == 0)
		n = 1;
	log = calloc(1, n + 1);
	if (log && n > 1)
		nvrtcGetProgramLog(prog, log);
	return log;
}

int msa_nvrtc_compile(const char *src, size_t len, const char *progname,
		      const char *arch, msa_compiled *out, char *err, size_t errlen)
{
	int rc = MSA_ECOMPILE;
	nvrtcProgram prog = NULL;
	nvrtcResult r;
	char opts[8][48];
	const char *optv[8];
	int nopt = nvrtc_opts(arch, opts, 8);
	double t0 = msa_now_ms();
	size_t n = 0;

	memset(out, 0, sizeof *out);
	(void)len;	/* src is NUL-terminated; len is the key's business */
	for (int i = 0; i < nopt; i++)
		optv[i] = opts[i];
	r = nvrtcCreateProgram(&prog, src, progname, 0, NULL, NULL);
	if (r != NVRTC_SUCCESS) {
		msa_fmt(err, errlen, "%s: nvrtcCreateProgram: %s", progname, nvrtcGetErrorString(r));
		return r == NVRTC_ERROR_OUT_OF_MEMORY ? MSA_ENOMEM : MSA_ECOMPILE;
	}
	r = nvrtcCompileProgram(prog, nopt, optv);
	out->log = program_log(prog);
	if (r != NVRTC_SUCCESS) {
		msa_fmt(err, errlen, "%s: NVRTC failed for %s (%s):\n%s", progname, arch,
			nvrtcGetErrorString(r), out->log ? out->log : "");
		goto out;
	}
	if (nvrtcGetCUBINSize(prog, &n) != NVRTC_SUCCESS || n == 0) {
		msa_fmt(err, errlen, "%s: NVRTC gave no CUBIN for %s", progname, arch);
		goto out;
	}
	out->cubin = malloc(n);
	if (!out->cubin) {
		rc = MSA_ENOMEM;
		goto out;
	}
	nvrtcGetCUBIN(prog, out->cubin);
	out->cubin_len = n;
	out->ms = msa_now_ms() - t0;
	rc = MSA_OK;
out:
	nvrtcDestroyProgram(&prog);
	return rc;
}

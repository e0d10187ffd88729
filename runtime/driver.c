/* driver.c - the CUDA driver API through dlopen, so that the library and the
 * CLI run (emit, build, cache) on machines without a driver. */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"

typedef CUresult (*get_proc_fn)(const char *, void **, int, cuuint64_t,
				CUdriverProcAddressQueryResult *);

static msa_cu cu_table;
static int cu_status = -1;	/* -1 not tried, else MSA_OK or MSA_ENODEV */
static char cu_error[256];
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

static void cu_load(void)
{
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	get_proc_fn get_proc;
	CUdriverProcAddressQueryResult q;

	cu_status = MSA_ENODEV;
	if (!lib) {
		msa_fmt(cu_error, sizeof cu_error,
			"no CUDA driver: dlopen(libcuda.so.1) failed: %s", dlerror());
		return;
	}
	get_proc = (get_proc_fn)dlsym(lib, "cuGetProcAddress_v2");
	if (!get_proc) {
		msa_fmt(cu_error, sizeof cu_error,
			"CUDA driver too old: no cuGetProcAddress_v2 (need 12.0+)");
		return;
	}
#define MSA_CU_LOAD(name, args)                                                  \
	if (get_proc("cu" #name, (void **)&cu_table.name, 12000, 0, &q) != 0 ||     \
	    !cu_table.name) {                                                         \
		msa_fmt(cu_error, sizeof cu_error, "CUDA driver lacks cu%s", #name); \
		return;                                                               \
	}
	MSA_CU_FUNCS(MSA_CU_LOAD)
#undef MSA_CU_LOAD
	if (cu_table.Init(0) != CUDA_SUCCESS) {
		msa_fmt(cu_error, sizeof cu_error, "cuInit failed: no usable GPU");
		return;
	}
	cu_table.DriverGetVersion(&cu_table.version);
	cu_status = MSA_OK;
}

int msa_cu_get(const msa_cu **out, char *err, size_t errlen)
{
	pthread_once(&cu_once, cu_load);
	if (cu_status != MSA_OK) {
		*out = NULL;
		msa_fmt(err, errlen, "%s", cu_error);
		return cu_status;
	}
	*out = &cu_table;
	return MSA_OK;
}

int msa_cu_check(CUresult r, const char *what, char *err, size_t errlen)
{
	const char *name = "?", *desc = "?";
	if (r == CUDA_SUCCESS)
		return MSA_OK;
	if (cu_status == MSA_OK) {
		cu_table.GetErrorName(r, &name);
		cu_table.GetErrorString(r, &desc);
	}
	msa_fmt(err, errlen, "%s failed: %s (%s)", what, name, desc);
	return MSA_ECUDA;
}

int msa_cu_ensure_ctx(int dev, int *cc_major, int *cc_minor, char *err, size_t errlen)
{
	const msa_cu *cu;
	CUcontext cur = NULL;
	CUdevice d;
	int n = 0, rc;

	if ((rc = msa_cu_get(&cu, err, errlen)) != MSA_OK)
		return rc;
	if ((rc = msa_cu_check(cu->DeviceGetCount(&n), "cuDeviceGetCount", err, errlen)))
		return rc;
	if (dev < 0 || dev >= n) {
		msa_fmt(err, errlen, "device %d does not exist (%d CUDA devices)", dev, n);
		return n ? MSA_EINVAL : MSA_ENODEV;
	}
	if ((rc = msa_cu_check(cu->DeviceGet(&d, dev), "cuDeviceGet", err, errlen)))
		return rc;
	cu->CtxGetCurrent(&cur);
	if (!cur) {
		if ((rc = msa_cu_check(cu->DevicePrimaryCtxRetain(&cur, d),
				       "cuDevicePrimaryCtxRetain", err, errlen)))
			return rc;
		if ((rc = msa_cu_check(cu->CtxSetCurrent(cur), "cuCtxSetCurrent", err, errlen)))
			return rc;
	}
	cu->DeviceGetAttribute(cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d);
	cu->DeviceGetAttribute(cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d);
	return MSA_OK;
}

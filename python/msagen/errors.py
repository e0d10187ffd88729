"""The one exception msagen raises, so callers catch a single type whether
the C library, the spec loader or a Python-side argument check failed."""

# enum msa_status in msagen.h, kept here so that an Error can be named even
# when the library itself could not be loaded.
STATUS_CODES = (
    "MSA_OK",
    "MSA_EINVAL",
    "MSA_ESPEC",
    "MSA_ECOMPILE",
    "MSA_ECUDA",
    "MSA_ENODEV",
    "MSA_ENOMEM",
    "MSA_EIO",
    "MSA_EUNSUPPORTED",
)
MSA_OK, MSA_EINVAL, MSA_ESPEC, MSA_ECOMPILE, MSA_ECUDA, MSA_ENODEV, MSA_ENOMEM, MSA_EIO, \
    MSA_EUNSUPPORTED = range(len(STATUS_CODES))

# msa_status_name()'s words, for the same reason.
_STATUS_WORDS = (
    "ok", "invalid argument", "spec error", "compile error", "CUDA error",
    "no CUDA device", "out of memory", "I/O error", "unsupported",
)


class Error(Exception):
    """A failed msagen call.

    str(e) is the message (the C library's own where it produced one, e.g.
    "specs/x.lua:3: heads.q = 48 is not a multiple of heads.kv = 5").
    e.status is the msa_status number (None when the library could not be
    loaded at all), e.status_name its words as msa_status_name() gives them
    ("spec error") and e.code its C enum name ("MSA_ESPEC").
    """

    def __init__(self, message, status=MSA_EINVAL):
        super().__init__(message)
        self.message = message
        self.status = status
        if status is None:
            self.status_name, self.code = "library not loaded", None
        elif 0 <= status < len(STATUS_CODES):
            self.status_name, self.code = _STATUS_WORDS[status], STATUS_CODES[status]
        else:
            self.status_name, self.code = "unknown status", "MSA_E%d" % status

    def __repr__(self):
        return "msagen.Error(%r, status=%s)" % (self.message, self.code)

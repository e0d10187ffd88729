"""Build hook for `pip install .`: run make for build/libmsagen.so and copy
it, with the Lua library it carries (rpath $ORIGIN), into msagen/_lib/ of
the package being built.  The metadata is in pyproject.toml.

The wheel is marked platform-specific because it ships a shared library,
though the Python code itself is pure ctypes.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))
LIBS = ("libmsagen.so", "liblua5.4.so.0")


class build_py_with_lib(build_py):
    def run(self):
        super().run()
        if self.dry_run:
            return
        make = os.environ.get("MAKE", "make")
        jobs = "-j%d" % (os.cpu_count() or 1)
        subprocess.check_call([make, "-C", ROOT, jobs, "build/libmsagen.so"])
        dest = os.path.join(self.build_lib, "msagen", "_lib")
        os.makedirs(dest, exist_ok=True)
        for name in LIBS:
            shutil.copy2(os.path.join(ROOT, "build", name), os.path.join(dest, name))


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(
    cmdclass={"build_py": build_py_with_lib},
    distclass=BinaryDistribution,
    # keep setuptools' own build tree apart from make's objects
    options={"build": {"build_base": os.path.join("build", "python")}},
)

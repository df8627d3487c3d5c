"""Builds the optional native kernels; the package works without them (pure-PyTorch fallback).

The extension is plain C on raw buffers (no PyTorch or NumPy headers), so building it needs only a C
compiler and setuptools.  It is compiled without -march: the AVX-512 and AVX2 kernels carry per-function
target attributes and are chosen at run time, so one binary runs on any x86-64 CPU.  OpenMP is linked
dynamically (DT_NEEDED libgomp.so.1): imported after torch, the loader reuses the libgomp torch has
already mapped (same soname) instead of mapping a second OpenMP runtime.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_FLAGS = ("-fopenmp",)


class OptionalBuildExt(build_ext):
    """Retry without OpenMP if the compiler lacks it; `optional=True` turns a last failure into a warning."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: retry serial, then give up quietly
            if not any(f in ext.extra_compile_args for f in OPENMP_FLAGS):
                raise
            print(f"prunescope: building {ext.name} with OpenMP failed ({exc}); retrying without OpenMP")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP_FLAGS]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP_FLAGS]
            super().build_extension(ext)


native = Extension(
    "prunescope.formats._bitmask_native",
    sources=["src/prunescope/formats/_native/kernels.c", "src/prunescope/formats/_native/module.c"],
    depends=["src/prunescope/formats/_native/kernels.h"],
    include_dirs=["src/prunescope/formats/_native"],
    extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
    optional=True,
)

setup(ext_modules=[native], cmdclass={"build_ext": OptionalBuildExt})

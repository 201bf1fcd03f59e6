"""Builds lambdagrad's fused C kernels (lambdagrad/native/kernels.c) for this machine.

Everything else about the package is in pyproject.toml. The library is loaded with ctypes,
not imported, and it is optional: without a C compiler the install goes on and the numpy
kernels run (``lambdagrad.native.STATUS`` says which). ``LAMBDAGRAD_CFLAGS`` replaces the
default ``-march=native`` (e.g. ``-march=x86-64-v3`` for a library to copy elsewhere).
"""

import os
import shlex

from setuptools import Extension, setup

NATIVE = "layers/lambdagrad/lambdagrad/native"
arch_flags = shlex.split(os.environ.get("LAMBDAGRAD_CFLAGS", "-march=native"))

setup(
    ext_modules=[
        Extension(
            "lambdagrad.native._kernels",
            sources=[f"{NATIVE}/kernels.c"],
            depends=[f"{NATIVE}/kernels_impl.h"],
            extra_compile_args=[
                "-O3",
                "-fno-strict-aliasing",
                "-std=gnu11",
                "-Wno-psabi",
                *arch_flags,
            ],
            libraries=["m"],
            optional=True,
        )
    ]
)

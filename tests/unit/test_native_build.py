"""The C kernels compiled on their own and checked against plain loops in C
(tests/native/kernel_selftest.c): for this machine, as ``pip install`` builds them, and for
arm64 as the Lambda layer builds them (layers/lambdagrad/Makefile), run under qemu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "tests/native/kernel_selftest.c",
    ROOT / "layers/lambdagrad/lambdagrad/native/kernels.c",
]
FLAGS = ["-O3", "-fno-strict-aliasing", "-std=gnu11", "-Wall", "-Wno-psabi"]


def _build_and_run(compiler: str, arch_flags: list[str], binary: Path, runner: list[str]):
    subprocess.run(
        [compiler, *FLAGS, *arch_flags, "-o", str(binary), *map(str, SOURCES), "-lm"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    run = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("ok"), run.stdout


@pytest.mark.parametrize("arch_flags", [["-march=native"], []], ids=["native", "generic"])
def test_kernels_match_plain_loops_on_this_machine(arch_flags, tmp_path):
    # -march=native is what setup.py builds; without it, GCC lowers the vectors to SSE2.
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (test_native_kernels_are_built reports the missing library)")
    _build_and_run(compiler, arch_flags, tmp_path / "selftest", [])


def test_kernels_match_plain_loops_on_arm64(tmp_path):
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip(
            "needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu, "
            "qemu-user-static)"
        )
    _build_and_run(compiler, ["-mcpu=neoverse-n1", "-static"], tmp_path / "selftest", [qemu])

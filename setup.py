"""Builds pruneext._C: the C++ operators always, the CUDA ones wherever torch
was built with CUDA and a CUDA toolkit is found (no GPU needed to compile).

Knobs (environment): PRUNEEXT_NO_CUDA=1 skips the CUDA sources;
TORCH_CUDA_ARCH_LIST picks the GPU archs (default "9.0": H100/H200);
MAX_JOBS bounds parallel compiles; CUDA_HOME names the toolkit;
PRUNEEXT_REQUIRE_CUDA=1 fails the build rather than skip CUDA (CI uses it).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "9.0"


def find_cuda_home():
    """The real toolkit: torch guesses CUDA_HOME from the nvcc on PATH, which
    here is a wrapper in /usr/local/bin (no lib64 beside it)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        # A toolkit has the runtime to link against, not just an nvcc (the
        # wrapper's /usr/local has a lib/ without it).
        libs = [os.path.join(home, d, "libcudart.so") for d in ("lib64", "lib")] if home else []
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and any(map(os.path.exists, libs)):
            return home
    return None


cuda_home = None if os.environ.get("PRUNEEXT_NO_CUDA") == "1" else find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = bool(cuda_home) and torch.version.cuda is not None
if os.environ.get("PRUNEEXT_REQUIRE_CUDA") == "1" and not with_cuda:
    sys.exit(
        "pruneext: PRUNEEXT_REQUIRE_CUDA=1 but the CUDA sources cannot be built "
        f"(torch CUDA: {torch.version.cuda}, toolkit: {cuda_home})"
    )
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

sources = [os.path.join("csrc", "python_module.cpp"), os.path.join("csrc", "ops.cpp")]
sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice
extra = dict(extra_link_args=["-fopenmp"])
if with_cuda:
    # the CUDA ops' checks and registration (*.cpp, host compiler) and their launchers (*.cu)
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    extension = CUDAExtension(
        "pruneext._C",
        sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        **extra,
    )
else:
    extension = CppExtension("pruneext._C", sources, extra_compile_args={"cxx": cxx_flags}, **extra)

# Recorded for pruneext.build_info(): what this build was made against.
with open(os.path.join(ROOT, "pruneext", "_build_config.py"), "w") as f:
    f.write("# Written by setup.py; do not edit.\n")
    f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
    f.write(f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n")
    f.write(f"CUDA_ARCHS = {os.environ.get('TORCH_CUDA_ARCH_LIST') if with_cuda else None!r}\n")
    f.write(f"WITH_CUDA = {with_cuda!r}\n")
    f.write(f"PYTHON_VERSION = {sys.version.split()[0]!r}\n")

setup(
    name="pruneext",
    version="0.1.0",
    description="GPU-accelerated magnitude pruning for PyTorch: a drop-in for torch.nn.utils.prune",
    packages=find_packages(include=["pruneext", "pruneext.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
)

"""What a run ran on: CPU, GPU, versions, and pruneext.build_info()."""
import os
import platform
import shlex
import sys

import torch

import pruneext


def cpu_model():
    """The 'model name' of /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:  # not installed, or broken on this machine
        return None


def info():
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        }
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "pruneext": getattr(pruneext, "__version__", None),
        "pruneext_build_info": pruneext.build_info(),
        # (the CPU write's page faults depend on the last three and on THP)
        "env": {k: os.environ[k] for k in ("PRUNEEXT_BACKEND", "TRITON_INTERPRET", "OMP_NUM_THREADS",
                                            "CUDA_VISIBLE_DEVICES", "PRUNEEXT_NO_AVX512", "PRUNEEXT_HUGE_PAGES",
                                            "PRUNEEXT_NO_HUGE_PAGES", "THP_MEM_ALLOC_ENABLE") if k in os.environ},
        "transparent_hugepage": _transparent_hugepage(),
    }


def _transparent_hugepage():
    """Linux's THP mode (the bracketed word of its sysfs setting), or None."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            words = f.read().split()
    except OSError:
        return None
    return next((w.strip("[]") for w in words if w.startswith("[")), None)


def command_line():
    """The exact command that started this process."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv
    return " ".join(shlex.quote(a) for a in argv)

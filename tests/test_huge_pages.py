"""The CPU mask writes ask Linux for transparent huge pages on their large
outputs before the first write (csrc/cpu/huge_pages.h) where the user asks
for it with PRUNEEXT_HUGE_PAGES=1, and never by default: the advice made
pruning a model several times slower on the development VM under every
defrag setting (issue 26). Whether the kernel grants the pages depends on
the machine's memory, so the test checks the advice itself: the "hg" flag
(MADV_HUGEPAGE) that /proc/self/smaps shows on the mapping holding the
output, in a subprocess per setting (the switches are read once): asked
for, switched off (PRUNEEXT_NO_HUGE_PAGES=1, which wins), and the default,
whatever this machine's THP settings."""
import os
import subprocess
import sys

import pytest
import torch

import pruneext
from pruneext import backends

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's"),
    pytest.mark.skipif(
        not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"), reason="kernel built without THP"
    ),
    pytest.mark.skipif("cpu" not in backends.available_backends(), reason="the C++ CPU backend was not built"),
    # torch's own switch advises every allocation: the flag would be there anyway
    pytest.mark.skipif(os.environ.get("THP_MEM_ALLOC_ENABLE") == "1", reason="THP_MEM_ALLOC_ENABLE=1 advises torch's allocations"),
]

N = 1 << 24  # 64 MB of fp32: mmapped by malloc, whole huge pages inside


def advised(t):
    """Whether the mapping holding the middle of t's bytes carries MADV_HUGEPAGE."""
    middle = t.data_ptr() + t.numel() * t.element_size() // 2
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= middle < hi
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    raise AssertionError("no mapping holds the tensor")


def outputs():
    x = torch.randn(N)
    with backends.use_backend("cpu"):
        values_out = torch.empty_like(x)
        before = advised(values_out)
        mask = pruneext.ops.l1_mask(x, N // 2, values=x, values_out=values_out)
        masks = pruneext.ops.l1_mask_global([x, x[: N // 2]], N // 3)
    return before, [mask, values_out] + masks


def advice_in_subprocess(**switches):
    """(before, [advised per output]) of outputs() in a fresh process."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import test_huge_pages as t; before, outs = t.outputs(); print(before, [t.advised(o) for o in outs])"
    env = {k: v for k, v in os.environ.items() if k not in ("PRUNEEXT_NO_HUGE_PAGES", "PRUNEEXT_HUGE_PAGES")}
    env.update(switches, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=here)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[0]


def test_asked_for():
    # a fresh tensor has no advice of its own: the op gave it
    assert advice_in_subprocess(PRUNEEXT_HUGE_PAGES="1") == "False [True, True, True, True]"


def test_switched_off():
    assert advice_in_subprocess(PRUNEEXT_NO_HUGE_PAGES="1") == "False [False, False, False, False]"
    # the off switch wins over the on switch
    assert advice_in_subprocess(PRUNEEXT_NO_HUGE_PAGES="1", PRUNEEXT_HUGE_PAGES="1") == "False [False, False, False, False]"


def test_no_advice_by_default():
    assert advice_in_subprocess() == "False [False, False, False, False]"

"""The CPU mask writes ask Linux for transparent huge pages on their large
outputs before the first write (csrc/cpu/huge_pages.h): a fresh output then
takes 512 times fewer page faults. Whether the kernel grants the pages
depends on the machine's memory, so the test checks the advice itself: the
"hg" flag (MADV_HUGEPAGE) that /proc/self/smaps shows on the mapping holding
the output, and its absence under PRUNEEXT_NO_HUGE_PAGES=1 (run in a
subprocess: the switch is read once)."""
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


def test_outputs_are_advised():
    before, outs = outputs()
    assert not before  # a fresh tensor has no advice of its own: the op gave it
    assert [advised(t) for t in outs] == [True, True, True, True]


def test_switched_off():
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import test_huge_pages as t; before, outs = t.outputs(); print(before, [t.advised(o) for o in outs])"
    env = dict(os.environ, PRUNEEXT_NO_HUGE_PAGES="1", PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=here)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "False [False, False, False, False]"

"""One call under torch.profiler (`python -m benchmarks.run --profile PATH`):
the kernels a contender launches and the device time they take.

On CUDA the profiler records CPU and CUDA activity and the table is sorted
by device time (its "Self CUDA" columns list each kernel); on CPU it records
CPU activity only (the operators, which is what the dry rehearsal of
scripts/gpu_check.sh checks). The summary that goes into the benchmark row:
the number of device-side operations (kernels, memcpys and memsets) and
their total device time (CUDA), or the number of operator calls and their
total self CPU time (CPU).
"""
import torch
from torch.profiler import ProfilerActivity, profile

ROW_LIMIT = 15


def profile_call(call, state, device):
    """(table text, summary dict) of one call(state)."""
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        call(state)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=sort_by, row_limit=ROW_LIMIT)
    if cuda:
        kernels = [e for e in prof.events() if _on_device(e)]
        summary = {"device": "cuda", "kernels": len(kernels),
                   "kernel_time_s": sum(_device_us(e) for e in kernels) / 1e6,
                   "distinct_kernels": len({e.name for e in kernels})}
    else:
        summary = {"device": "cpu", "ops": sum(e.count for e in events),
                   "self_cpu_time_s": sum(e.self_cpu_time_total for e in events) / 1e6}
    return table, summary


def _on_device(event):
    kind = getattr(event, "device_type", None)
    return kind is not None and kind == torch.autograd.DeviceType.CUDA


def _device_us(event):
    # a device-side event's own span (kernel, memcpy, memset): the same on
    # every torch, where the *_time properties were renamed over versions
    return event.time_range.elapsed_us()


def describe(summary):
    if "error" in summary:
        return f"profile failed: {summary['error']}"
    if summary["device"] == "cuda":
        return (f"{summary['kernels']} kernels, memcpys, memsets ({summary['distinct_kernels']} distinct), "
                f"{summary['kernel_time_s'] * 1e3:.3f} ms of device time")
    return f"{summary['ops']} operator calls, {summary['self_cpu_time_s'] * 1e3:.3f} ms of self CPU time"

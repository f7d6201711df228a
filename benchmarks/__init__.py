"""pruneext's benchmark harness: every mask kernel against torch.nn.utils.prune.

Run it from the repository root:

    python -m benchmarks.run              # default sweep (GPU when there is one)
    python -m benchmarks.run --quick      # smoke run, well under 30 s on a CPU
    python -m benchmarks.run --full       # bigger sweep
    python -m benchmarks.run --help       # every flag

One module per concern:

    cases.py        what is measured: modes, sizes, dtypes, amounts, model shapes, presets
    contenders.py   who is measured: torch.nn.utils.prune, a kthvalue threshold, pruneext backends
    timing.py       how a call is timed (perf_counter on CPU, CUDA events on GPU), copy bandwidth
    memory.py       peak extra memory (CUDA allocator stats; CPU: RSS growth in a subprocess)
    checks.py       did every contender prune the same number (and pruneext the same set) of entries
    machine.py      what it ran on (CPU, GPU, versions, pruneext.build_info())
    report.py       the terminal table and the JSON file
    plots.py        PNG plots (time and speedup against size)
    run.py          the command line and the loop over cases
    distributed.py  sharded pruning on W CPU processes (python -m benchmarks.distributed)

Nothing here asserts on a timing: the harness reports, it does not judge
speed. It does flag (and exit with status 1 on) a contender that pruned a
different number of entries than torch.nn.utils.prune would.
"""

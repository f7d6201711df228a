#!/usr/bin/env bash
# Sets up .venv, builds pruneext, runs the benchmark (GPU when there is one,
# else CPU). Extra arguments go to `python -m benchmarks.run` (--help lists them).
source "$(dirname "$0")/env.sh" torch numpy ninja matplotlib
"$PY" -m benchmarks.run "$@"

#!/usr/bin/env bash
# Sets up .venv, builds pruneext, runs the test suite. Extra arguments go to
# pytest (e.g. `-m slow` for the long tests, `-k global`).
source "$(dirname "$0")/env.sh" -r requirements-dev.txt
"$PY" -m pytest "$@"

#!/usr/bin/env bash
# Seconds per DFKD iteration of each adapter on CUDA, guard off and on (scripts/benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/benchmarks/gpu_check.py "$@"

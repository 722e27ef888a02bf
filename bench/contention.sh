#!/usr/bin/env bash
# Contention benchmark: C launchers x J jobs through one admission wrapper with L slots.
#
#   bench/contention.sh                                # ringrift,flock,sem; -C 16 -J 25 -L 8
#   bench/contention.sh --tool all -C 16 -J 25 -L 8    # any bench/peers/contention.py options
#
# Runs the vendored peer harness bench/peers/contention.py with this venv's ringrift-coord
# first on PATH. PYTHON: the venv interpreter (default: the python3 on PATH); its bin/ must
# hold ringrift-coord. The harness gives ringrift-coord a fresh temp state directory and a
# temp YAML (task_limits per_node L, and the selfplay rate bucket lifted), so it measures
# admission, not throttling. Exit: the harness's (0 ok, 1 over-admission or a failed job,
# 2 usage, 3 a requested tool is not installed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$(command -v python3)}
bindir=$(dirname "$PYTHON")
if [ ! -x "$bindir/ringrift-coord" ]; then
  echo "contention.sh: no ringrift-coord next to $PYTHON; set PYTHON to the venv's python" >&2
  exit 3
fi
export PATH="$bindir:$PATH" PYTHON
# 16 launchers on 2 cores push the load average past the safeguard's critical level
# (1.5 x cores), after which admission would refuse this host: the benchmark measures the
# semaphore, so this host's live readings are off unless the caller says otherwise.
export RINGRIFT_COORD_SET="${RINGRIFT_COORD_SET:-resources.live_host=false}"

if [ "$#" -eq 0 ]; then
  set -- --tool ringrift,flock,sem -C 16 -J 25 -L 8
fi
exec "$PYTHON" "$here/peers/contention.py" "$@"

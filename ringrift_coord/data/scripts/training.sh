#!/usr/bin/env bash
# Launch one training run under ringrift-coord: the slot is held exactly as long as it runs.
#
#   training.sh python train.py --config square8_2p ...
#
# Environment: RINGRIFT_NODE_ID (default: host name), RINGRIFT_CONFIG_NAME (board config,
# default square8_2p), RINGRIFT_WAIT_TIMEOUT (how long to wait in line for a slot: seconds, or
# 4m, 1h; default 3600), RINGRIFT_COORD (the program, default ringrift-coord).
#
# Exit: the job's own exit code (128+N if it died of signal N); 75 = no slot granted
# (denied, halted, peak hours when peak_hours.enforce is on, or the wait timed out): nothing
# ran, retry later; 2 usage; 3 bad config or state.
set -euo pipefail

NODE="${RINGRIFT_NODE_ID:-${HOSTNAME:-$(uname -n)}}"
CONFIG="${RINGRIFT_CONFIG_NAME:-square8_2p}"
# the wait's timeout: run reads it (and names it when it is not a duration)
export RINGRIFT_WAIT_TIMEOUT="${RINGRIFT_WAIT_TIMEOUT:-3600}"

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

exec "${RINGRIFT_COORD:-ringrift-coord}" run training --node "$NODE" --config-name "$CONFIG" \
  --wait -- "$@"

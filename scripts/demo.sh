#!/bin/sh
# make demo: replays the smart meter incident under the agent (scripts/demo.py).
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 scripts/demo.py "$@"

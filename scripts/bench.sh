#!/bin/sh
# make bench: the agent's overhead ratios, then the aggregator's own numbers.
set -eu
cd "$(dirname "$0")/.."
/usr/bin/python3 scripts/bench.py "$@"
if [ -x scripts/bench-aggregator.sh ] && [ $# -eq 0 ]; then
	echo
	scripts/bench-aggregator.sh
fi

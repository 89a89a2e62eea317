#!/bin/sh
# make bench: the aggregator's naive vs streaming sum (throughput, peak RSS).
# Prints a table; never fails on numbers. Each (size, mode) runs in a fresh
# server so that its VmHWM is that mode's own peak.
#   AGG_BENCH_SIZES  readings per file (default "1000000 10000000")
#   AGG_BENCH_REPS   sums per measurement, median reported (default 3)
#   AGGREGATOR_BIN   the server (default build/aggregator)
set -u
cd "$(dirname "$0")/.." || exit 0

BIN=${AGGREGATOR_BIN:-build/aggregator}
SIZES=${AGG_BENCH_SIZES:-"1000000 10000000"}
REPS=${AGG_BENCH_REPS:-3}

if [ ! -x "$BIN" ] || ! command -v curl >/dev/null 2>&1; then
	echo "bench-aggregator: needs $BIN (make) and curl; skipped"
	exit 0
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/aggregator-bench.XXXXXX")
PID=""
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start: a fresh server on a free loopback port; sets PID and URL.
start() {
	: >"$TMP/out"
	"$BIN" --port 0 --bind 127.0.0.1 --data-file "$TMP/readings.csv" \
		--max-heap 0 >"$TMP/out" 2>>"$TMP/server.log" &
	PID=$!
	i=0
	while ! grep -q '^listening on' "$TMP/out" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 200 ] || ! kill -0 "$PID" 2>/dev/null; then
			echo "bench-aggregator: server did not start"
			tail -5 "$TMP/server.log"
			exit 0
		fi
		sleep 0.05
	done
	URL="http://127.0.0.1:$(head -1 "$TMP/out" | sed 's/.*://')"
}

stop() {
	kill -TERM "$PID" 2>/dev/null
	wait "$PID" 2>/dev/null
	PID=""
}

# hwm_kib: the server's peak resident set so far.
hwm_kib() {
	awk '/^VmHWM:/ { print $2 }' "/proc/$PID/status" 2>/dev/null || echo 0
}

# request METHOD PATH: prints "status seconds".
request() {
	curl -s -o "$TMP/body" -X "$1" -w '%{http_code} %{time_total}' "$URL$2"
}

median() {
	tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2];
		else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "## Aggregator: naive vs streaming GET /smartMeters/sum" \
	"(median of $REPS, fresh server per row, no heap cap)"
printf '%-12s %-10s %10s %14s %14s\n' readings mode "sum s" "readings/s" \
	"peak RSS MiB"

for n in $SIZES; do
	s_naive=nan s_streaming=nan rss_naive=0 rss_streaming=0
	start
	idle=$(hwm_kib)
	# shellcheck disable=SC2046 # "status seconds" split on purpose
	set -- $(request POST "/smartMeters/randomSmartMeterValues?meterCount=$n&seed=1")
	gen_status=$1 gen_s=$2
	stop
	if [ "$gen_status" != 200 ]; then
		echo "$n: generation failed (HTTP $gen_status): $(cat "$TMP/body")"
		continue
	fi
	for mode in naive streaming; do
		start
		times=""
		failed=""
		r=0
		while [ $r -lt "$REPS" ]; do
			# shellcheck disable=SC2046
			set -- $(request GET "/smartMeters/sum?mode=$mode")
			if [ "$1" != 200 ]; then
				failed="HTTP $1: $(head -c 200 "$TMP/body")"
				break
			fi
			times="$times $2"
			r=$((r + 1))
		done
		peak=$(hwm_kib)
		stop
		if [ -n "$failed" ]; then
			printf '%-12s %-10s failed (%s)\n' "$n" "$mode" "$failed"
			eval "s_$mode=nan rss_$mode=$peak"
			continue
		fi
		s=$(echo "$times" | median)
		eval "s_$mode=$s rss_$mode=$peak"
		awk -v n="$n" -v m="$mode" -v s="$s" -v k="$peak" 'BEGIN {
			printf "%-12s %-10s %10.3f %14.0f %14.1f\n", n, m, s,
				n / s, k / 1024 }'
	done
	awk -v n="$n" -v sn="$s_naive" -v ss="$s_streaming" -v rn="$rss_naive" \
		-v rs="$rss_streaming" -v g="$gen_s" -v idle="$idle" 'BEGIN {
		if (sn != "nan" && ss != "nan" && ss > 0 && rn > 0)
			printf "%-12s streaming/naive: throughput %.2fx, peak RSS %.3fx\n",
				n, sn / ss, rs / rn
		printf "%-12s generation %.3f s (%.0f readings/s, fsync included); idle server %.1f MiB\n",
			n, g, n / g, idle / 1024 }'
done

#!/usr/bin/env bash
# The memory of a long-running `dub-track mock`: its resident set after REQUESTS requests
# (200,000 by default), sent by `dub-track send` as leads for 64 customers (after each
# customer's first lead Dub deduplicates the rest, so what grows is what the mock keeps about
# requests, not its customers).
#
#   cli/bench_mock_memory.sh                    # 200,000 requests, debug build
#   PROFILE=release cli/bench_mock_memory.sh
#   REQUESTS=20000 cli/bench_mock_memory.sh     # a quicker look
#
# Prints the mock's VmRSS and VmHWM (from /proc, so Linux only) before and after the load, and
# its /__mock/stats when the mock has that endpoint. Asserts nothing; figures go in
# BENCHMARKS.md ("dub-track mock: memory").
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
PROFILE=${PROFILE:-debug}
target=${CARGO_TARGET_DIR:-target}
if [ "$PROFILE" = release ]; then
    cargo build --quiet --release -p dub-track
else
    cargo build --quiet -p dub-track
fi
BIN="$target/$PROFILE/dub-track"

work=$(mktemp -d)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

awk -v n="$REQUESTS" 'BEGIN {
    for (i = 0; i < n; i++)
        printf "{\"type\":\"lead\",\"clickId\":\"clk_%d\",\"eventName\":\"Sign up\",\"customerExternalId\":\"cust_%d\",\"metadata\":{\"n\":%d}}\n", i % 64, i % 64, i
}' > "$work/leads.jsonl"

"$BIN" mock > "$work/mock.env" 2> /dev/null &
mock_pid=$!
for _ in $(seq 100); do
    [ "$(wc -l < "$work/mock.env")" -ge 2 ] && break
    sleep 0.1
done
# shellcheck disable=SC1091
set -a; . "$work/mock.env"; set +a

rss() { grep -E '^(VmRSS|VmHWM)' "/proc/$mock_pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
echo "mock ($PROFILE) at start: $(rss)"
start=$(date +%s)
"$BIN" send --max-in-flight 64 --state "$work/state" "$work/leads.jsonl" 2> /dev/null || true
echo "mock after $REQUESTS requests ($(( $(date +%s) - start )) s): $(rss)"
stats=$(curl -s "$DUB_BASE_URL/__mock/stats" || true)
echo "GET /__mock/stats: ${stats:-(none)}"

#!/usr/bin/env bash
# How long `dub-track send` takes for 4,500 records against a server limiting at 3,000 a minute
# (Dub's advanced plan), against the minimum that limit allows: 4,500 / 3,000 min = 90 s.
#
#   cli/bench.sh            # the four cases below, about 14 minutes; figures go in BENCHMARKS.md
#   RECORDS=900 cli/bench.sh    # a quicker look (the minimum scales: 18 s)
#
# Cases, each against a fresh `dub-track mock --rate-limit 3000` (Dub's sliding window):
#   one       one process told the key's limit (--rate-limit 3000)
#   two-told  two processes on the same key, each told the key's limit, half the records each
#   two-half  the same, each told half the key's limit (--rate-limit 1500)
#   two       two processes on the same key, neither told the limit (learned from 429s)
# Not run by the tests: it takes minutes and measures time, which a test must not assert.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-4500}
LIMIT=3000
CASES=${CASES:-"one two-told two-half two"}
target=${CARGO_TARGET_DIR:-target}
cargo build --quiet --release -p dub-track
BIN="$target/release/dub-track"

work=$(mktemp -d)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# RECORDS/3 customers, each a lead then two sales with invoice ids (what Dub deduplicates),
# dealt alternately into two halves for the two-process cases.
awk -v n="$RECORDS" -v dir="$work" 'BEGIN {
    for (c = 0; c < n / 3; c++) {
        half = dir "/half" (c % 2) ".jsonl"
        lead = sprintf("{\"type\":\"lead\",\"clickId\":\"clk_%d\",\"eventName\":\"Sign up\",\"customerExternalId\":\"cust_%d\"}", c, c)
        s1 = sprintf("{\"type\":\"sale\",\"customerExternalId\":\"cust_%d\",\"amount\":4900,\"invoiceId\":\"in_%d_a\"}", c, c)
        s2 = sprintf("{\"type\":\"sale\",\"customerExternalId\":\"cust_%d\",\"amount\":900,\"invoiceId\":\"in_%d_b\"}", c, c)
        print lead > (dir "/all.jsonl"); print s1 > (dir "/all.jsonl"); print s2 > (dir "/all.jsonl")
        print lead > half; print s1 > half; print s2 > half
    }
}'
total=$(wc -l < "$work/all.jsonl")
minimum=$(awk -v n="$total" -v l="$LIMIT" 'BEGIN { printf "%.1f", n * 60 / l }')

start_mock() {
    # Emptied here, not only by the redirection below: that one happens in the background
    # child, possibly after the loop has read the previous case's file and taken its (dead)
    # server's URL, which left every request of a case refused and the run stuck retrying.
    : > "$work/mock.env"
    "$BIN" mock --rate-limit "$LIMIT" > "$work/mock.env" 2> /dev/null &
    mock_pid=$!
    for _ in $(seq 100); do
        [ "$(wc -l < "$work/mock.env")" -ge 2 ] && break
        sleep 0.1
    done
    if [ "$(wc -l < "$work/mock.env")" -lt 2 ]; then
        echo "the mock did not start within 10 s" >&2
        exit 1
    fi
    # shellcheck disable=SC1091
    set -a; . "$work/mock.env"; set +a
}

stop_mock() {
    kill "$mock_pid"; wait "$mock_pid" 2>/dev/null || true; mock_pid=
}

now() { date +%s.%N; }

# send NAME FILE [ARGS...]: one `send` in the background, its summary line to $work/NAME.out
send() {
    local name=$1 file=$2
    shift 2
    "$BIN" send --state "$work/$name.state" "$@" "$file" > "$work/$name.out" 2> "$work/$name.err" &
}

field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" "$2"; }

printf 'dub-track send: %s records, server limit %s/min, minimum %s s (%s)\n\n' \
    "$total" "$LIMIT" "$minimum" "$(nproc) cores, $(uname -m)"
printf '%-9s %9s %9s %9s %10s %s\n' case elapsed_s vs_min delivered 429s "per process (elapsed_s, 429s)"
for case in $CASES; do
    start_mock
    t0=$(now)
    case $case in
        one) send a "$work/all.jsonl" --rate-limit "$LIMIT"; names="a" ;;
        two-told)
            send a "$work/half0.jsonl" --rate-limit "$LIMIT"
            send b "$work/half1.jsonl" --rate-limit "$LIMIT"; names="a b" ;;
        two-half)
            send a "$work/half0.jsonl" --rate-limit $((LIMIT / 2))
            send b "$work/half1.jsonl" --rate-limit $((LIMIT / 2)); names="a b" ;;
        two)
            send a "$work/half0.jsonl"
            send b "$work/half1.jsonl"; names="a b" ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    failed=0
    for job in $(jobs -p); do
        [ "$job" = "$mock_pid" ] && continue
        wait "$job" || failed=1
    done
    t1=$(now)
    stop_mock
    delivered=0; limited=0; detail=""
    for n in $names; do
        delivered=$((delivered + $(field delivered "$work/$n.out")))
        limited=$((limited + $(field rate_limited "$work/$n.out")))
        detail="$detail $(field elapsed_s "$work/$n.out")s/$(field rate_limited "$work/$n.out")"
    done
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    ratio=$(awk -v e="$elapsed" -v m="$minimum" 'BEGIN { printf "%+.1f%%", (e / m - 1) * 100 }')
    printf '%-9s %9s %9s %9s %10s%s\n' "$case" "$elapsed" "$ratio" "$delivered" "$limited" "$detail"
    if [ "$failed" -ne 0 ] || [ "$delivered" -ne "$total" ]; then
        echo "  not every record was delivered:" >&2
        cat "$work"/*.err >&2
    fi
    rm -f "$work"/*.state "$work"/*.out "$work"/*.err
done

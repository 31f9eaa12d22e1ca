#!/usr/bin/env bash
# Peak memory (max RSS) of `dub-track send` reading, checking and planning a large input.
#
#   cli/bench_memory.sh                  # 100,000 and 1,000,000 records; figures go in BENCHMARKS.md
#   SIZES=100000 cli/bench_memory.sh     # one size
#   BIN=/path/to/dub-track cli/bench_memory.sh   # another build (e.g. the one before a change)
#   SEND=1 SIZES=100000 cli/bench_memory.sh      # also send the file to `dub-track mock`
#
# The input is sales with invoice ids (about 130 bytes a record, as in the issue's 133 MB for
# 1,000,000), then one invalid record: `send` checks every record, finds the last one invalid and
# stops before sending anything (exit 2), so the peak is that of reading, checking and planning.
# The same file is also read from standard input (`send - < file`, with --state). Max RSS is
# what /usr/bin/time -v reports. Not run by the tests: it measures, which a test must not assert.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"100000 1000000"}
target=${CARGO_TARGET_DIR:-target}
if [ -z "${BIN:-}" ]; then
    cargo build --quiet -p dub-track
    BIN="$PWD/$target/debug/dub-track"
fi

work=$(mktemp -d)
mock_pid=
cleanup() {
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

peak() { # prints "peak_mb exit_code" of the command
    local code=0
    /usr/bin/time -f "%M" -o "$work/time" "$@" > /dev/null 2> "$work/stderr" || code=$?
    [ "${VERBOSE:-0}" = 1 ] && tail -n 3 "$work/stderr" >&2
    printf '%s %s\n' "$(tail -n 1 "$work/time" | awk '{ printf "%.0f", $1 / 1024 }')" "$code"
}

for n in $SIZES; do
    file="$work/sales_$n.jsonl"
    awk -v n="$n" 'BEGIN {
        for (i = 0; i < n; i++)
            printf "{\"type\":\"sale\",\"customerExternalId\":\"cust_%07d\",\"amount\":4900,\"currency\":\"usd\",\"invoiceId\":\"in_%07d_a\",\"metadata\":{\"plan\":\"pro\"}}\n", i % 100000, i
    }' > "$file"
    bad="$work/bad_$n.jsonl"
    cp "$file" "$bad"
    echo '{"type":"sale","customerExternalId":"cust_x","amount":-1,"invoiceId":"in_x"}' >> "$bad"
    mb=$(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.0f", b / 1e6 }')
    rm -f "$work"/*.dub-state "$work/state"
    read -r rss code < <(cd "$work" && DUB_API_KEY=dub_bench_0000000000000000 DUB_BASE_URL=http://127.0.0.1:9 \
        peak "$BIN" send --state "$work/state" "$(basename "$bad")")
    echo "records=$n file_mb=$mb case=validate-file peak_rss_mb=$rss exit=$code"
    rm -f "$work/state"
    read -r rss code < <(DUB_API_KEY=dub_bench_0000000000000000 DUB_BASE_URL=http://127.0.0.1:9 \
        peak sh -c '"$0" send --state "$1" - < "$2"' "$BIN" "$work/state" "$bad")
    echo "records=$n file_mb=$mb case=validate-stdin peak_rss_mb=$rss exit=$code"
    if [ "${SEND:-0}" = 1 ]; then
        # Emptied first: the redirection below happens in the background child, maybe after
        # the loop has read the previous size's file (and its stopped server's URL).
        : > "$work/mock.env"
        "$BIN" mock > "$work/mock.env" 2> /dev/null &
        mock_pid=$!
        for _ in $(seq 100); do grep -q DUB_API_KEY "$work/mock.env" 2> /dev/null && break; sleep 0.1; done
        # shellcheck disable=SC1091
        set -a; . "$work/mock.env"; set +a
        rm -f "$work/state"
        start=$(date +%s)
        read -r rss code < <(peak "$BIN" send --max-in-flight 64 --state "$work/state" "$file")
        echo "records=$n file_mb=$mb case=send-to-mock peak_rss_mb=$rss exit=$code elapsed_s=$(( $(date +%s) - start ))"
        read -r rss code < <(peak "$BIN" send --state "$work/state" "$file")
        echo "records=$n file_mb=$mb case=rerun-all-skipped peak_rss_mb=$rss exit=$code"
        kill "$mock_pid"; wait "$mock_pid" 2> /dev/null || true; mock_pid=
    fi
done

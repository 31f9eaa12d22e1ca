#!/usr/bin/env bash
# Client instructions per call, SDK against floor, counted by callgrind: a figure that does not
# move with the load on the machine, for judging a change to the call path.
#
#   benches/instructions.sh           # needs valgrind; builds the overhead bench in release
#   benches/instructions.sh lead      # only leads (operations: lead, sale, both; default lead sale)
#   KEEP=/tmp/cg benches/instructions.sh   # and keep the callgrind profiles there
#
# Each side runs alone in `overhead rss` mode (sequential calls of one operation, or of lead and
# sale alternating with `both`, on tokio's current-thread runtime) under callgrind, once with 1,000 calls and once with 3,000,
# against one server process; (3,000-call count - 1,000-call count) / 2,000 cancels start-up
# and leaves the cost of a call. Counts are user-space instructions of the client process only:
# the kernel's share (sockets, wake-ups) and the server are not in them.
set -euo pipefail

command -v valgrind >/dev/null || {
    echo "valgrind is not installed" >&2
    exit 1
}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin=$(cargo bench --bench overhead --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*overhead[^"]*\)".*/\1/p' | tail -1)
[[ -x "$bin" ]] || {
    echo "could not build the overhead bench" >&2
    exit 1
}
work=$(mktemp -d "${TMPDIR:-/tmp}/dub-instructions.XXXXXX")

# The server stops when its stdin closes, which happens when this script exits.
exec 3> >("$bin" server >"$work/address")
for _ in $(seq 50); do
    [[ -s "$work/address" ]] && break
    sleep 0.1
done
url="http://$(head -1 "$work/address")"

count() { # side calls operation -> instructions
    valgrind --tool=callgrind --callgrind-out-file="$work/$1-$2-$3.out" \
        "$bin" rss --side "$1" --url "$url" --rss-calls "$2" --inflight 1 --current-thread \
        --ops "$3" >/dev/null 2>&1
    awk '/^(summary|totals):/ { print $2; exit }' "$work/$1-$2-$3.out"
}

ops=("$@")
((${#ops[@]})) || ops=(lead sale)
for op in "${ops[@]}"; do
    declare -A per
    for side in sdk floor; do
        small=$(count "$side" 1000 "$op")
        large=$(count "$side" 3000 "$op")
        per[$side]=$(((large - small) / 2000))
    done
    echo "$op: client instructions per call: SDK ${per[sdk]}, floor ${per[floor]}," \
        "SDK/floor $(awk -v a="${per[sdk]}" -v b="${per[floor]}" 'BEGIN { printf "%.3f", a / b }')," \
        "SDK overhead $((per[sdk] - per[floor]))"
done
if [[ -n "${KEEP:-}" ]]; then
    # KEEP=DIR keeps the callgrind profiles, for `callgrind_annotate --inclusive=yes`.
    mkdir -p "$KEEP" && mv "$work"/*.out "$KEEP"/
fi
rm -rf "$work"

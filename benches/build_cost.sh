#!/usr/bin/env bash
# Build cost of depending on dub, against a crate that depends on reqwest, serde and tokio only.
#
#   benches/build_cost.sh            # one cold build of each (a few minutes each)
#   REPS=2 benches/build_cost.sh     # alternate them, twice each, and report every build
#   KEEP=1 benches/build_cost.sh     # keep the target dirs (about 1.6 GB) for inspection
#
# Each cold build is `cargo build --release` of a tiny consumer crate with its own fresh
# CARGO_TARGET_DIR (crate sources come from the local cargo registry; nothing is downloaded
# when it is populated). The consumers:
#   with-dub:     dub (path dependency, default features) + tokio
#   with-reqwest: reqwest 0.13 with dub's feature set (rustls, json, http2) + serde + tokio
# Both start from dub's Cargo.lock, so shared crates resolve to the same versions.
#
# Then, in the dub consumer's target dir, a comment in dub's src/lib.rs is edited and the
# consumer rebuilt with `cargo build --release -v`: that must recompile dub without running its
# build script (code generation); the script checks both the -v output and the mtime of the
# generated file. dub is copied for this (tracked and untracked files of the working tree), so
# the repository itself is never edited.
#
# It prints figures and asserts nothing about them; it exits non-zero only if a build fails.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
reps=${REPS:-1}
work=$(mktemp -d "${TMPDIR:-/tmp}/dub-build-cost.XXXXXX")
cargo=${CARGO:-cargo}
unset CARGO_TARGET_DIR RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The crate under test, as it is in the working tree.
mkdir -p "$work/dub"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
    tar -C "$work/dub" -xf -

mkdir -p "$work/with-dub/src" "$work/with-reqwest/src"
cat >"$work/with-dub/Cargo.toml" <<'EOF'
[package]
name = "with-dub"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
dub = { path = "../dub" }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }

[workspace]
EOF
cat >"$work/with-dub/src/main.rs" <<'EOF'
use dub::models::TrackLeadRequest;

#[tokio::main]
async fn main() {
    let dub = dub::Dub::new(std::env::var("DUB_API_KEY").unwrap_or_default());
    let lead = TrackLeadRequest::builder()
        .click_id("clk_123")
        .event_name("Sign up")
        .customer_external_id("user_42")
        .build();
    match dub.track().lead(lead).await {
        Ok(res) => println!("click {}", res.click.id),
        Err(e) => println!("{e}"),
    }
}
EOF
cat >"$work/with-reqwest/Cargo.toml" <<'EOF'
[package]
name = "with-reqwest"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
reqwest = { version = "0.13", default-features = false, features = ["rustls", "json", "http2"] }
serde = { version = "1", features = ["derive"] }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }

[workspace]
EOF
cat >"$work/with-reqwest/src/main.rs" <<'EOF'
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Lead<'a> {
    click_id: &'a str,
    event_name: &'a str,
    customer_external_id: &'a str,
}

#[derive(Deserialize)]
struct Click {
    id: String,
}

#[derive(Deserialize)]
struct LeadResponse {
    click: Click,
}

#[tokio::main]
async fn main() {
    let token = std::env::var("DUB_API_KEY").unwrap_or_default();
    let lead = Lead { click_id: "clk_123", event_name: "Sign up", customer_external_id: "user_42" };
    let sent = reqwest::Client::new()
        .post("https://api.dub.co/track/lead")
        .bearer_auth(token)
        .json(&lead)
        .send()
        .await;
    match sent {
        Ok(r) => match r.json::<LeadResponse>().await {
            Ok(res) => println!("click {}", res.click.id),
            Err(e) => println!("{e}"),
        },
        Err(e) => println!("{e}"),
    }
}
EOF
cp "$repo/Cargo.lock" "$work/with-dub/Cargo.lock"
cp "$repo/Cargo.lock" "$work/with-reqwest/Cargo.lock"

# cold NAME REP: a release build of consumer NAME in a fresh target dir; prints wall seconds
# and CPU seconds (user + system, of cargo and every compiler it ran).
cold() {
    local dir="$work/$1" target="$work/target-$1-$2"
    local start end cpu
    start=$(now)
    cpu=$( (
        TIMEFORMAT='%U %S'
        time (cd "$dir" && CARGO_TARGET_DIR="$target" "$cargo" build --release \
            >"$work/log-$1-$2" 2>&1)
    ) 2>&1) || {
        cat "$work/log-$1-$2" >&2
        exit 1
    }
    end=$(now)
    echo "$(secs "$start" "$end") $(awk -v u="${cpu% *}" -v s="${cpu#* }" 'BEGIN { printf "%.1f", u + s }')"
}

declare -A total cputotal
total[with-dub]=0
total[with-reqwest]=0
cputotal[with-dub]=0
cputotal[with-reqwest]=0
rows=""
for rep in $(seq 1 "$reps"); do
    if ((rep % 2 == 1)); then order="with-dub with-reqwest"; else order="with-reqwest with-dub"; fi
    for name in $order; do
        echo "cold build $rep of $name..." >&2
        read -r s cpu < <(cold "$name" "$rep")
        units=$(grep -c '^ *Compiling' "$work/log-$name-$rep" || true)
        rows+="| $rep | $name | $s | $cpu | $units |"$'\n'
        total[$name]=$(awk -v a="${total[$name]}" -v b="$s" 'BEGIN { print a + b }')
        cputotal[$name]=$(awk -v a="${cputotal[$name]}" -v b="$cpu" 'BEGIN { print a + b }')
    done
done

# The rebuild after a comment edit, in the first dub consumer's target dir.
target="$work/target-with-dub-1"
generated=$(find "$target/release/build" -path '*/dub-*/out/generated.rs' | head -1)
before=$(stat -c %y "$generated")
echo "// A comment added by benches/build_cost.sh." >>"$work/dub/src/lib.rs"
echo "rebuild after a comment edit..." >&2
start=$(now)
(cd "$work/with-dub" && CARGO_TARGET_DIR="$target" "$cargo" build --release -v) \
    >"$work/log-rebuild" 2>&1
end=$(now)
rebuild=$(secs "$start" "$end")
after=$(stat -c %y "$generated")
if grep -q 'dub-[0-9a-f]*/build-script-build`' "$work/log-rebuild"; then
    script="ran (code generation repeated)"
else
    script="not run"
fi
recompiled=$(grep -c '^ *Compiling' "$work/log-rebuild" || true)

mean() { awk -v t="$1" -v n="$reps" 'BEGIN { printf "%.1f", t / n }'; }
dub_mean=$(mean "${total[with-dub]}")
reqwest_mean=$(mean "${total[with-reqwest]}")
dub_cpu=$(mean "${cputotal[with-dub]}")
reqwest_cpu=$(mean "${cputotal[with-reqwest]}")

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs;" \
    "$(rustc -V); cargo build --release, default jobs"
echo
echo "| rep | consumer | cold build s | CPU s | crates built |"
echo "|--:|---|--:|--:|--:|"
printf '%s' "$rows"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "| | wall s | CPU s |"
echo "|---|--:|--:|"
echo "| cold build, depends on dub (mean of $reps) | $dub_mean | $dub_cpu |"
echo "| cold build, depends on reqwest + serde + tokio (mean of $reps) | $reqwest_mean | $reqwest_cpu |"
echo "| **ratio dub / reqwest-only** | **$(ratio "$dub_mean" "$reqwest_mean")** | **$(ratio "$dub_cpu" "$reqwest_cpu")** |"
echo "| rebuild after editing a comment in dub's src/lib.rs | $rebuild | |"
echo
echo "On that rebuild: $recompiled crate(s) compiled, dub's build script $script;"
echo "generated.rs modified $before before and $after after."
echo
echo "What \`cargo build --release -v\` did on that rebuild (fresh crates left out):"
echo
echo '```'
grep -E '^ *(Dirty|Compiling|Running)' "$work/log-rebuild" | cut -c1-150
echo '```'
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "(build dirs and logs kept in $work)"
else
    rm -rf "$work"/target-*
    echo "(logs kept in $work)"
fi

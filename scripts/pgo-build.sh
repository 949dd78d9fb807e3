#!/usr/bin/env bash
# The production build: geoedge compiled with profile-guided optimisation (PGO), then its
# machine code laid out again by profile with BOLT.
#
#   scripts/pgo-build.sh                 build; the binary is target/pgo/geoedge
#   scripts/pgo-build.sh --no-bolt       PGO only, where llvm-bolt is not available
#   scripts/pgo-build.sh --train BIN     only run the training load against BIN (a check)
#
# A release build lays out code by guesses; PGO lays it out by a profile of real traffic:
# hot paths inlined and packed together, cold ones (errors, config) moved out of the way.
# A proxied request's user CPU is spread thin over many small functions, with no one hot
# loop, which is where layout and inlining by profile pay: 11-25 % of it here
# (docs/benchmarks.md). rustc, clang and CPython (--enable-optimizations) ship so.
# BOLT then works on the linked binary, across crates and the C parts alike: it splits
# every function into its hot and cold blocks and packs the hot ones of the whole
# program into a few pages. That is what a proxy at a moderate rate needs, woken for each
# request with its code gone cold from the caches: 7-14 % less user CPU than PGO alone at
# a fixed 10k requests/s, in each of three alternations here (under saturation, mixed).
#
# Steps: an instrumented build (target/pgo/gen); the whole demo world (config/, geo/) run
# under a bounded training load on loopback: HTTP/1.1 to the cached and the uncached route
# (hits, misses, compression, POST, a new connection per request), HTTPS with resumption
# and full handshakes, HTTP/2 with TLS and without, DNS over UDP and TCP with and without
# ECS; the profile merged with llvm-profdata; then the optimised build (target/pgo/use),
# linked with its relocations kept for BOLT; BOLT's instrumented copy of it under the same
# load; and BOLT's layout by that profile (target/pgo/geoedge). Two release builds: 30-35
# minutes on two cores.
#
# Needs, beside cargo: llvm-profdata of rustc's LLVM major version (Debian: llvm-N, or
# `rustup component add llvm-tools`), llvm-bolt (Debian: bolt-N, any recent N), wrk,
# h2load (nghttp2-client), dnsperf, openssl, curl.
# Every training step must succeed: a profile of error paths would optimise the wrong code.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP_SECONDS=${PGO_STEP_SECONDS:-3}
OUT=target/pgo

die() { echo "pgo-build: $*" >&2; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is missing (Debian: apt-get install $2)"
}

# llvm-profdata must read the profile format of rustc's own LLVM.
find_profdata() {
    local major sysroot host candidate
    major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    [ -n "$major" ] || die "cannot read rustc's LLVM version from 'rustc -vV'"
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    for candidate in "$sysroot/lib/rustlib/$host/bin/llvm-profdata" \
        "$(command -v "llvm-profdata-$major" || true)" \
        "/usr/lib/llvm-$major/bin/llvm-profdata"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    die "no llvm-profdata for LLVM $major (rustc's): apt-get install llvm-$major, or rustup component add llvm-tools"
}

# BOLT reads any x86-64 or AArch64 ELF binary, so any recent version will do.
find_bolt() {
    local candidate
    for candidate in "$(command -v llvm-bolt || true)" \
        $(compgen -c llvm-bolt- | grep -E '^llvm-bolt-[0-9]+$' | sort -t- -k3 -rn) \
        $(ls -d /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | sort -V -r); do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return
        fi
    done
    die "no llvm-bolt: apt-get install bolt-N (e.g. bolt-$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')), or build with --no-bolt"
}

# Waits until URL answers 2xx, for at most 60 s.
wait_ok() {
    local url=$1 deadline=$((SECONDS + 60))
    until curl -sf -o /dev/null --max-time 2 "$url"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$url did not answer 2xx within 60 s"
        sleep 0.2
    done
}

# wrk ARGS...: one bounded load step; fails on socket errors or non-2xx/3xx answers.
wrk_step() {
    local name=$1 out
    shift
    out=$(wrk -t1 -c32 -d"${STEP_SECONDS}s" --timeout 5s "$@") || die "$name: wrk failed"
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
        die "$name: errors under load:"$'\n'"$out"
    fi
    local done
    done=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
    [ "${done:-0}" -gt 0 ] || die "$name: no request completed"$'\n'"$out"
    echo "  $name: $done requests"
}

h2load_step() {
    local name=$1 out
    shift
    out=$(h2load -t1 -c16 -m10 -D"$STEP_SECONDS" "$@" 2>&1) || die "$name: h2load failed"$'\n'"$out"
    local line
    line=$(grep -E "^requests:" <<<"$out") || die "$name: no h2load summary"$'\n'"$out"
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    read -r _ _ _ _ _ _ _ succeeded _ failed _ errored _ <<<"${line//,/}"
    [ "$succeeded" -gt 0 ] && [ "$failed" -eq 0 ] && [ "$errored" -eq 0 ] \
        || die "$name: $line"
    echo "  $name: $succeeded requests"
}

dnsperf_step() {
    local name=$1 out
    shift
    out=$(dnsperf -s 127.0.0.1 -p 5353 -l "$STEP_SECONDS" -c 4 -q 64 -t 2 "$@" 2>&1) \
        || die "$name: dnsperf failed"$'\n'"$out"
    local completed
    completed=$(sed -n 's/^ *Queries completed: *\([0-9]*\).*/\1/p' <<<"$out")
    [ "${completed:-0}" -gt 0 ] || die "$name: no query answered"$'\n'"$out"
    # UDP under overload may drop a datagram or two; a server that stops answering loses many.
    local sent
    sent=$(sed -n 's/^ *Queries sent: *\([0-9]*\).*/\1/p' <<<"$out")
    [ $((completed * 1000)) -ge $((sent * 999)) ] || die "$name: queries lost"$'\n'"$out"
    echo "  $name: $completed queries"
}

# Runs the demo from BIN under the training load, then stops it with SIGINT, so that an
# instrumented binary writes its profile on the way out.
train() {
    local bin=$1 work demo
    need wrk wrk
    need h2load nghttp2-client
    need dnsperf dnsperf
    need openssl openssl
    need curl curl
    [ -x "$bin" ] || die "$bin is not an executable"
    work=$(mktemp -d)
    "$bin" demo >"$work/demo.out" 2>"$work/demo.err" &
    demo=$!
    # shellcheck disable=SC2064
    trap "kill -INT $demo 2>/dev/null || true; rm -rf '$work'" EXIT
    wait_ok http://127.0.0.1:9153/healthz
    for node in 11 12 13; do wait_ok "http://127.0.0.$node:9100/healthz"; done
    # Another demo on the same addresses would answer in its place.
    kill -0 "$demo" 2>/dev/null || die "the demo did not start:"$'\n'"$(tail -5 "$work/demo.err")"
    echo "training $bin (${STEP_SECONDS}s per step)"

    local http=http://127.0.0.11:8080 https=https://127.0.0.12:8443 h2=https://127.0.0.13:8443
    local cached='cache=max-age%3D3600'
    # www.example.test is the cached route, api.example.test the uncached one.
    local www="Host: www.example.test" api="Host: api.example.test"
    wrk_step "uncached 1 KiB" -H "$api" "$http/page?size=1024"
    wrk_step "cache misses" -H "$www" "$http/page?size=1024"
    wrk_step "cached 1 KiB" -H "$www" "$http/static/1k?size=1024&$cached"
    wrk_step "cached 100 KiB" -H "$www" "$http/static/100k?size=102400&$cached"
    wrk_step "compressed" -H "$www" -H "Accept-Encoding: gzip, br" \
        "$http/static/text?size=8192&$cached"
    wrk_step "new connection per request" -H "$www" -H "Connection: close" \
        "$http/static/1k?size=1024&$cached"
    cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 512)
wrk.headers["Content-Type"] = "application/json"
EOF
    wrk_step "POST" -s "$work/post.lua" -H "$api" "$http/api?size=256"
    wrk_step "HTTPS keep-alive" -H "$api" "$https/page?size=1024"
    wrk_step "HTTPS resumed" -H "$www" -H "Connection: close" "$https/static/1k?size=1024&$cached"
    h2load_step "HTTP/2 over TLS" "$h2/static/1k?size=1024&$cached"
    h2load_step "HTTP/2 over TLS, uncached" -H ":authority: api.example.test" "$h2/page?size=1024"
    h2load_step "HTTP/2 prior knowledge" -H ":authority: api.example.test" \
        "http://127.0.0.13:8080/page?size=1024"
    local handshakes
    handshakes=$(timeout $((STEP_SECONDS + 20)) openssl s_time -connect 127.0.0.11:8443 -new \
        -time "$STEP_SECONDS" 2>&1 | sed -n 's/^\([0-9]*\) connections in.*/\1/p' | head -1)
    [ "${handshakes:-0}" -gt 0 ] || die "full TLS handshakes: none completed"
    echo "  full TLS handshakes: $handshakes"

    # Answers from the zone, NXDOMAIN, and the steered name with ECS (IPv4 /24, from
    # the demo database's ranges) and without.
    printf '%s\n' "www.example.test A" "www.example.test AAAA" "example.test SOA" \
        "example.test NS" "nothere.example.test A" >"$work/names.txt"
    dnsperf_step "DNS over UDP" -d "$work/names.txt"
    dnsperf_step "DNS with ECS" -d "$work/names.txt" -E 8:00011800cb0071
    dnsperf_step "DNS over TCP" -m tcp -d "$work/names.txt"

    kill -INT "$demo"
    local deadline=$((SECONDS + 30))
    while kill -0 "$demo" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "the demo did not stop within 30 s of SIGINT"
        sleep 0.2
    done
    wait "$demo" || die "the demo exited with status $?:"$'\n'"$(tail -20 "$work/demo.err")"
    trap - EXIT
    rm -rf "$work"
}

if [ "${1:-}" = "--train" ]; then
    [ $# -eq 2 ] || die "usage: $0 --train BIN"
    train "$2"
    exit 0
fi
use_bolt=yes
if [ "${1:-}" = "--no-bolt" ]; then
    use_bolt=no
    shift
fi
[ $# -eq 0 ] || die "usage: $0 [--no-bolt | --train BIN]"

profdata=$(find_profdata)
if [ "$use_bolt" = yes ]; then
    bolt=$(find_bolt)
fi
profiles="$PWD/$OUT/profiles"
echo "instrumented build (target/pgo/gen)"
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --locked --target-dir "$OUT/gen"
# Build scripts and proc macros ran instrumented too; only the demo's profile counts.
rm -rf "$profiles"
train "$OUT/gen/release/geoedge"
ls "$profiles"/*.profraw >/dev/null 2>&1 || die "the instrumented demo wrote no profile"
"$profdata" merge -o "$OUT/geoedge.profdata" "$profiles"
echo "optimised build (target/pgo/use)"
# BOLT moves code, so it needs the linker's relocations, which a link otherwise drops.
relocs=""
[ "$use_bolt" = yes ] && relocs="-Clink-arg=-Wl,--emit-relocs"
# Cargo does not see the profile's content change, only its path: start from nothing, or
# crates built by an older profile would stay.
rm -rf "$OUT/use"
RUSTFLAGS="-Cprofile-use=$PWD/$OUT/geoedge.profdata $relocs" \
    cargo build --release --locked --target-dir "$OUT/use"
rm -f "$OUT/geoedge"
if [ "$use_bolt" = no ]; then
    cp "$OUT/use/release/geoedge" "$OUT/geoedge"
    echo "built $OUT/geoedge (PGO, without BOLT)"
    exit 0
fi

echo "BOLT: instrumented copy ($OUT/bolt-gen)"
fdata="$PWD/$OUT/geoedge.fdata"
rm -f "$fdata"
"$bolt" "$OUT/use/release/geoedge" -o "$OUT/bolt-gen" -instrument \
    --instrumentation-file="$fdata" >"$OUT/bolt-gen.log" 2>&1 \
    || die "llvm-bolt -instrument failed:"$'\n'"$(tail -20 "$OUT/bolt-gen.log")"
train "$OUT/bolt-gen"
[ -s "$fdata" ] || die "BOLT's instrumented demo wrote no profile"
echo "BOLT: layout by profile ($OUT/geoedge)"
# ext-tsp orders a function's blocks for fall-through, cdsort orders functions by calls;
# the split sends cold blocks (error paths, unwinding) out of the hot pages; safe ICF
# folds only functions whose address nothing takes. Debug sections are rewritten to
# match, so perf and debuggers still see file and line.
"$bolt" "$OUT/use/release/geoedge" -o "$OUT/geoedge" -data="$fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=safe -use-gnu-stack -update-debug-sections >"$OUT/bolt-use.log" 2>&1 \
    || die "llvm-bolt failed:"$'\n'"$(tail -20 "$OUT/bolt-use.log")"
rm -f "$OUT/bolt-gen"
echo "built $OUT/geoedge"

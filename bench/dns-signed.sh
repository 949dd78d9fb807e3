#!/usr/bin/env bash
# dns-signed.sh -- what signing costs: geoedge's steered ECS answers signed (queries with
# DO to a zone with [zones.dnssec]) against the same answers unsigned (no DO, zone not
# signed), server CPU per query from /proc, the two servers' order turned each rep.
#
# USAGE (from the repository root, after `cargo build --release` and
# ../shared/bench/setup.sh):
#   bench/dns-signed.sh [REPS]             default 3 reps of DURATION seconds each
# KNOBS (env): BIN=target/release/geoedge DURATION=5 SERVER_CPU=0 LOADGEN_CPU=1
#   ECS=1 (0: no ECS option) PDNS=1 (0: leave PowerDNS out)
#   OUT=/tmp/geoedge-bench/results/signed-<ts>
# PowerDNS is the harness's pdns-lua world (../shared/bench/dns/pdns: bind backend, a LUA
# pickclosest record, geo.lua.test) with the zone secured by pdnsutil (a CSK, ECDSA
# P-256), so it signs online too; it is asked the same DO queries.
# Loopback only; dnsperf is bounded by -l.
set -u
cd "$(dirname "$0")/.."
REPS=${1:-3}
BIN=$(realpath "${BIN:-target/release/geoedge}")
DURATION=${DURATION:-5}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
ECS=${ECS:-1}
OUT=${OUT:-/tmp/geoedge-bench/results/signed-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 1; }
command -v dnsperf >/dev/null || { echo "dnsperf missing: ../shared/bench/setup.sh" >&2; exit 1; }

# The benchmark world of bench/dns-bench.toml without its probes (nothing answers them
# here; every region stays up as configured), once plain and once signed.
sed -e '/^probe = /d' -e "s#\.\./\.\./shared#$PWD/../shared#" \
    -e "s#\"gslb.test.zone\"#\"$PWD/bench/gslb.test.zone\"#" bench/dns-bench.toml > "$OUT/plain.toml"
awk -v keys="$OUT/keys" '{ print } /^answers = / && !done { print "[zones.dnssec]\nkey_dir = \"" keys "\""; done = 1 }' \
    "$OUT/plain.toml" > "$OUT/signed.toml"
printf 'www.gslb.test A\n' > "$OUT/queries.txt"
printf 'geo.lua.test A\n' > "$OUT/queries-pdns.txt"
PDNS=${PDNS:-1}
if [ "$PDNS" = 1 ]; then
    bench=$(realpath ../shared/bench)
    mkdir -p "$OUT/pdns"
    sed -e "s#@RUN@#$OUT#g" -e "s#@BENCH@#$bench#g" -e "s#@LUA_HC_INTERVAL@#1#" \
        "$bench/dns/pdns/pdns.conf.in" > "$OUT/pdns/pdns.conf"
    sed -e "s#@BENCH@#$bench#g" "$bench/dns/pdns/named.conf.in" > "$OUT/pdns/named.conf"
    echo "bind-dnssec-db=$OUT/pdns/dnssec.db" >> "$OUT/pdns/pdns.conf"
    pdnsutil --config-dir="$OUT/pdns" create-bind-db "$OUT/pdns/dnssec.db" >/dev/null 2>&1
    pdnsutil --config-dir="$OUT/pdns" secure-zone lua.test >/dev/null 2>&1 || { echo "pdnsutil secure-zone failed" >&2; exit 1; }
fi
# ECS 10.1.2.0/24: family 1, source 24, scope 0, three address octets.
ecs_opt=()
[ "$ECS" = 1 ] && ecs_opt=(-E 8:000118000a0102)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One measurement: start the server pinned, load it, report queries and CPU us/query.
measure() {
    local name=$1 config=$2; shift 2
    local port=5355 queries=$OUT/queries.txt probe=www.gslb.test
    if [ "$config" = pdns ]; then
        port=5354 queries=$OUT/queries-pdns.txt probe=geo.lua.test
        taskset -c "$SERVER_CPU" pdns_server --config-dir="$OUT/pdns" >"$OUT/$name.log" 2>&1 &
    else
        taskset -c "$SERVER_CPU" "$BIN" dns --config "$config" >"$OUT/$name.log" 2>&1 &
    fi
    local pid=$!
    for _ in $(seq 50); do
        dig +time=1 +tries=1 -p $port @127.0.0.1 $probe >/dev/null 2>&1 && break
        sleep 0.1
    done
    local before; before=$(cpu_ticks $pid)
    taskset -c "$LOADGEN_CPU" dnsperf -s 127.0.0.1 -p $port -d "$queries" -l "$DURATION" \
        -c 8 -q 200 "${ecs_opt[@]}" "$@" >"$OUT/$name.perf" 2>&1
    local after; after=$(cpu_ticks $pid)
    kill $pid; wait $pid 2>/dev/null
    local done_q; done_q=$(awk '/Queries completed:/ { print $3 }' "$OUT/$name.perf")
    local hz; hz=$(getconf CLK_TCK)
    awk -v t=$((after - before)) -v hz="$hz" -v q="$done_q" -v n="$name" \
        'BEGIN { printf "%s %d queries %.0f/s %.2f us/query\n", n, q, q / '"$DURATION"', t / hz * 1e6 / q }'
}

kinds=(plain signed)
[ "$PDNS" = 1 ] && kinds+=(pdns)
for rep in $(seq "$REPS"); do
    # Turn the order by one each rep.
    shift_by=$(( (rep - 1) % ${#kinds[@]} ))
    order=("${kinds[@]:$shift_by}" "${kinds[@]:0:$shift_by}")
    for kind in "${order[@]}"; do
        case $kind in
            signed) measure "signed-$rep" "$OUT/signed.toml" -D ;;
            plain) measure "plain-$rep" "$OUT/plain.toml" ;;
            pdns) measure "pdns-$rep" pdns -D ;;
        esac
    done
done | tee "$OUT/results.txt"
median() { grep "^$1-" "$OUT/results.txt" | awk '{ print $5 }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
plain=$(median plain); signed=$(median signed)
awk -v p="$plain" -v s="$signed" 'BEGIN { printf "medians: plain %.2f us/query, signed %.2f us/query, signed/plain %.2f\n", p, s, s / p }'
if [ "$PDNS" = 1 ]; then
    pdns=$(median pdns)
    awk -v d="$pdns" -v s="$signed" 'BEGIN { printf "PowerDNS signed %.2f us/query: PowerDNS/ours %.2f\n", d, d / s }'
fi
echo "results in $OUT"

#!/usr/bin/env bash
# h2c-origins.sh -- HTTP/2 without TLS to the origins, as gRPC services need: geoedge's
# `protocol = "h2c"` against HAProxy's `proto h2` and nginx's `grpc_pass`, each one
# worker on CPU 0, in alternating `wrk` rounds (bench/alternate.py) of HTTP/1.1 clients.
# The origins are the shared harness's nginx origins with `http2` on their listeners
# (prior knowledge only), on CPU 1 with the load generator. ../shared/bench/http.sh has
# no such scenario; this is the same placement on the same machine.
#
# USAGE (from the repository root, after `cargo build --release` and
# ../shared/bench/setup.sh):  bench/h2c-origins.sh [ROUNDS] [PATH]
#   defaults: 5 rounds of /dynamic/1k
# Loopback only; every load is bounded (wrk -d3 under `timeout`).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
URLPATH=${2:-/dynamic/1k}
BIN=$(realpath "${BIN:-target/release/geoedge}")
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 1; }
export RUN=${SCRATCH:-/tmp/geoedge-bench}/h2c-run
# lib.sh gives render, start_bg (pinned, stopped at exit) and wait_tcp.
source ../shared/bench/lib.sh
mkdir -p "$RUN/tmp"
trap 'for n in geoedge-h2c haproxy-h2 nginx-grpc h2c-origin1 h2c-origin2 h2c-origin3; do stop_bg $n; done' EXIT

for i in 1 2 3; do
    render "$BENCH/http/origin.conf.in" -e "s/@ID@/$i/g" -e "s/@PORT@/960$i/g" -e "s/@SPORT@/970$i/g" \
        -e "s/reuseport backlog=4096;/reuseport backlog=4096 http2;/" \
        -e "s/keepalive_requests 10000000;/keepalive_requests 10000000; http2_max_requests 10000000;/" \
        >"$RUN/origin-$i.conf"
    start_bg h2c-origin$i 1 nginx -c "$RUN/origin-$i.conf" -p "$RUN/"
done

cat >"$RUN/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $RUN/nginx.pid; error_log $RUN/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $RUN/tmp/b; proxy_temp_path $RUN/tmp/p; fastcgi_temp_path $RUN/tmp/f;
  uwsgi_temp_path $RUN/tmp/u; scgi_temp_path $RUN/tmp/s;
  upstream h2o {
    least_conn; server 127.0.0.1:9601; server 127.0.0.1:9602; server 127.0.0.1:9603;
    keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s;
  }
  server { listen 127.0.0.1:8281 reuseport backlog=4096; location / { grpc_pass grpc://h2o; } }
}
EOF
start_bg nginx-grpc 0 nginx -c "$RUN/nginx.conf" -p "$RUN/"

cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:8282
    default_backend be
backend be
    balance leastconn
    server o1 127.0.0.1:9601 proto h2
    server o2 127.0.0.1:9602 proto h2
    server o3 127.0.0.1:9603 proto h2
EOF
start_bg haproxy-h2 0 haproxy -db -f "$RUN/haproxy.cfg"

sed -e 's/127\.0\.0\.1:900\([123]\)/127.0.0.1:960\1/' \
    -e 's/^balance = "least_conn"/balance = "least_conn"\nprotocol = "h2c"/' \
    -e 's/127\.0\.0\.1:8090/127.0.0.1:8290/; s/127\.0\.0\.1:8453/127.0.0.1:8553/; s/127\.0\.0\.1:9190/127.0.0.1:9290/' \
    -e "s#\"\.\./\.\./shared#\"$(realpath ../shared)#g" \
    bench/proxy-bench.toml >"$RUN/geoedge.toml"
start_bg geoedge-h2c 0 "$BIN" proxy --config "$RUN/geoedge.toml"

for p in 9601 9602 9603 8281 8282 8290; do wait_tcp 127.0.0.1 $p; done
nginx_worker=$(pgrep -P "$(cat "$RUN/nginx.pid")")
python3 bench/alternate.py "$ROUNDS" "$URLPATH" \
    "nginx:$nginx_worker:8281" "haproxy:$(cat "$RUN/haproxy-h2.pid"):8282" \
    "geoedge:$(cat "$RUN/geoedge-h2c.pid"):8290"

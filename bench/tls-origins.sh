#!/usr/bin/env bash
# tls-origins.sh -- uncached 1 KiB proxied to HTTPS origins (the `dyn_1k_tls_origin` row):
# geoedge's `protocol = "https"` against nginx's `proxy_pass https://` (with
# proxy_ssl_verify and proxy_ssl_session_reuse) and HAProxy's `ssl verify required`, each
# one worker on CPU 0, keep-alive to the origins, in alternating `wrk` rounds
# (bench/alternate.py) of HTTP/1.1 clients. The origins are the shared harness's nginx
# origins with `ssl` on their listeners, on CPU 1 with the load generator, with a
# certificate from a CA made here (all three proxies verify it, for the same name).
#
# USAGE (from the repository root, after `cargo build --release` and
# ../shared/bench/setup.sh):  bench/tls-origins.sh [ROUNDS] [PATH]
#   defaults: 5 rounds of /dynamic/1k
# Loopback only; every load is bounded (wrk -d3 under `timeout`).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
URLPATH=${2:-/dynamic/1k}
BIN=$(realpath "${BIN:-target/release/geoedge}")
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 1; }
export RUN=${SCRATCH:-/tmp/geoedge-bench}/tls-origin-run
# lib.sh gives render, start_bg (pinned, stopped at exit) and wait_tcp.
source ../shared/bench/lib.sh
mkdir -p "$RUN/tmp"
trap 'for n in geoedge-tlso haproxy-tlso nginx-tlso tls-origin1 tls-origin2 tls-origin3; do stop_bg $n; done' EXIT

# A CA and an origin certificate for origin.bench.test and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=bench-origin-ca -addext basicConstraints=critical,CA:TRUE \
    -keyout "$RUN/ca.key" -out "$RUN/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=origin.bench.test \
    -keyout "$RUN/origin.key" -out "$RUN/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:origin.bench.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$RUN/origin.ext"
openssl x509 -req -in "$RUN/origin.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial \
    -days 30 -extfile "$RUN/origin.ext" -out "$RUN/origin.pem" 2>/dev/null

for i in 1 2 3; do
    render "$BENCH/http/origin.conf.in" -e "s/@ID@/$i/g" -e "s/@PORT@/980$i/g" -e "s/@SPORT@/990$i/g" \
        -e "s#reuseport backlog=4096;#reuseport backlog=4096 ssl; ssl_certificate $RUN/origin.pem; ssl_certificate_key $RUN/origin.key; ssl_session_cache shared:o$i:8m; ssl_session_tickets on;#" \
        >"$RUN/origin-$i.conf"
    start_bg tls-origin$i 1 nginx -c "$RUN/origin-$i.conf" -p "$RUN/"
done

cat >"$RUN/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/nginx.pid; error_log $RUN/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $RUN/tmp/b; proxy_temp_path $RUN/tmp/p; fastcgi_temp_path $RUN/tmp/f;
  uwsgi_temp_path $RUN/tmp/u; scgi_temp_path $RUN/tmp/s;
  upstream tlso {
    least_conn; server 127.0.0.1:9801; server 127.0.0.1:9802; server 127.0.0.1:9803;
    keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:8381 reuseport backlog=4096;
    location / {
      proxy_pass https://tlso; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $RUN/ca.pem;
      proxy_ssl_name origin.bench.test; proxy_ssl_server_name on; proxy_ssl_session_reuse on;
      proxy_buffering off;
    }
  }
}
CONF
start_bg nginx-tlso 0 nginx -c "$RUN/nginx.conf" -p "$RUN/"

cat >"$RUN/haproxy.cfg" <<CONF
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
    bind 127.0.0.1:8382
    default_backend be
backend be
    balance leastconn
    server o1 127.0.0.1:9801 ssl verify required ca-file $RUN/ca.pem sni str(origin.bench.test) verifyhost origin.bench.test
    server o2 127.0.0.1:9802 ssl verify required ca-file $RUN/ca.pem sni str(origin.bench.test) verifyhost origin.bench.test
    server o3 127.0.0.1:9803 ssl verify required ca-file $RUN/ca.pem sni str(origin.bench.test) verifyhost origin.bench.test
CONF
start_bg haproxy-tlso 0 haproxy -db -f "$RUN/haproxy.cfg"

sed -e 's/127\.0\.0\.1:900\([123]\)/127.0.0.1:980\1/' \
    -e 's/^balance = "least_conn"/balance = "least_conn"\nprotocol = "https"/' \
    -e 's/127\.0\.0\.1:8090/127.0.0.1:8390/; s/127\.0\.0\.1:8453/127.0.0.1:8653/; s/127\.0\.0\.1:9190/127.0.0.1:9390/' \
    -e "s#\"\.\./\.\./shared#\"$(realpath ../shared)#g" \
    bench/proxy-bench.toml >"$RUN/geoedge.toml"
printf '\n[upstreams.origins.tls]\nca_file = "%s"\nserver_name = "origin.bench.test"\n' "$RUN/ca.pem" >>"$RUN/geoedge.toml"
start_bg geoedge-tlso 0 "$BIN" proxy --config "$RUN/geoedge.toml"

for p in 9801 9802 9803 8381 8382 8390; do wait_tcp 127.0.0.1 $p; done
nginx_worker=$(pgrep -P "$(cat "$RUN/nginx.pid")")
python3 bench/alternate.py "$ROUNDS" "$URLPATH" \
    "nginx:$nginx_worker:8381" "haproxy:$(cat "$RUN/haproxy-tlso.pid"):8382" \
    "geoedge:$(cat "$RUN/geoedge-tlso.pid"):8390"

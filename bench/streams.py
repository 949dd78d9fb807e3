#!/usr/bin/env python3
"""Stream listeners against HAProxy `mode tcp` and nginx `stream`, and the FTP gateway
against a direct FTPS download, in one run with the servers' order rotated per rep.

    bench/streams.py [REPS] [BULK_MIB]       defaults: 3 reps, 1024 MiB

- bulk: one `curl` download of BULK_MIB through each TCP proxy (the origin is nginx with
  sendfile): server CPU per GiB and throughput;
- short: `wrk -H 'Connection: close'`, a new TCP connection through the proxy for each
  request of 64 bytes: connections/s and server CPU per connection;
- ftps: a BULK_MIB download from vsftpd with TLS (`require_ssl_reuse`), direct and through
  the gateway (explicit FTPS on both sides): throughput.

The proxies run pinned to CPU 0, curl, wrk and the origins to CPU 1. Needs
`cargo build --release` (or BIN=...), nginx with libnginx-mod-stream, haproxy, wrk, curl,
vsftpd and openssl. Loopback only; every load is bounded by count or time and `timeout`.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HZ = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(ROOT, "target/release/geoedge")))
ORIGIN, HAPROXY, NGINX, GEOEDGE = 9601, 9611, 9612, 9613
VSFTPD, GATEWAY = 9621, 9622
procs = []


def start(name, cpu, args, **kw):
    log = open(os.path.join(RUN, f"{name}.log"), "w")
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + args, stdout=log, stderr=log, **kw)
    procs.append(p)
    return p


def wait_port(port, limit=10):
    import socket
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def cpu(pid):
    """User + system seconds of a process and its threads (and, for nginx, workers)."""
    total = 0
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    for p in pids:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / HZ


def run(args, limit):
    return subprocess.run(["taskset", "-c", "1", "timeout", str(limit)] + args,
                          capture_output=True, text=True, check=False)


def setup(bulk_mib):
    www = os.path.join(RUN, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "bulk.bin"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(bulk_mib):
            f.write(chunk)
    with open(os.path.join(www, "small"), "wb") as f:
        f.write(b"x" * 64)
    tmp = os.path.join(RUN, "tmp")
    os.makedirs(tmp, exist_ok=True)
    open(os.path.join(RUN, "origin.conf"), "w").write(f"""
worker_processes 1; daemon off; pid {RUN}/origin.pid; error_log {RUN}/origin.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f;
  uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
  server {{ listen 127.0.0.1:{ORIGIN} reuseport backlog=4096; root {www}; }} }}
""")
    start("origin", 1, ["nginx", "-c", f"{RUN}/origin.conf", "-p", RUN + "/"])
    open(os.path.join(RUN, "nginx.conf"), "w").write(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1; daemon off; pid {RUN}/nginx.pid; error_log {RUN}/nginx.err warn;
events {{ worker_connections 8192; }}
stream {{ server {{ listen 127.0.0.1:{NGINX} reuseport backlog=4096; proxy_pass 127.0.0.1:{ORIGIN}; }} }}
""")
    nginx = start("nginx", 0, ["nginx", "-c", f"{RUN}/nginx.conf", "-p", RUN + "/"])
    open(os.path.join(RUN, "haproxy.cfg"), "w").write(f"""
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen tcp
    bind 127.0.0.1:{HAPROXY}
    server o1 127.0.0.1:{ORIGIN}
""")
    haproxy = start("haproxy", 0, ["haproxy", "-db", "-f", f"{RUN}/haproxy.cfg"])

    # vsftpd with TLS for the FTPS rows, and the gateway in front of it.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", f"{RUN}/ca.key",
                    "-out", f"{RUN}/ca.pem"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=ftp-origin.test", "-keyout", f"{RUN}/ftp.key",
                    "-out", f"{RUN}/ftp.csr"], check=True, capture_output=True)
    open(f"{RUN}/ftp.ext", "w").write("subjectAltName=DNS:ftp-origin.test\nbasicConstraints=CA:FALSE\n")
    subprocess.run(["openssl", "x509", "-req", "-in", f"{RUN}/ftp.csr", "-CA", f"{RUN}/ca.pem",
                    "-CAkey", f"{RUN}/ca.key", "-CAcreateserial", "-days", "2", "-extfile",
                    f"{RUN}/ftp.ext", "-out", f"{RUN}/ftp.pem"], check=True, capture_output=True)
    ftproot = os.path.join(RUN, "ftp")
    os.makedirs(os.path.join(ftproot, "pub"), exist_ok=True)
    target = os.path.join(ftproot, "pub", "bulk.bin")
    if not os.path.exists(target):
        os.link(os.path.join(www, "bulk.bin"), target)
    open(f"{RUN}/vsftpd.conf", "w").write(f"""listen=YES
listen_address=127.0.0.1
listen_port={VSFTPD}
background=NO
run_as_launching_user=YES
anonymous_enable=YES
no_anon_password=YES
anon_root={ftproot}
local_enable=NO
pasv_min_port=42000
pasv_max_port=42099
seccomp_sandbox=NO
ssl_enable=YES
allow_anon_ssl=YES
require_ssl_reuse=YES
rsa_cert_file={RUN}/ftp.pem
rsa_private_key_file={RUN}/ftp.key
""")
    start("vsftpd", 1, [shutil.which("vsftpd") or "/usr/sbin/vsftpd", f"{RUN}/vsftpd.conf"])
    open(f"{RUN}/geoedge.toml", "w").write(f"""[node]
name = "bench-1"
region = "b"
workers = 1
[listen]
[tls]
[[tls.certificates]]
self_signed = ["files.bench.test"]
[[streams]]
name = "tcp"
mode = "tcp"
listen = ["127.0.0.1:{GEOEDGE}"]
upstream = "web"
max_connections = 8000
[[streams]]
name = "ftp"
mode = "ftp"
listen = ["127.0.0.1:{GATEWAY}"]
upstream = "files"
[streams.ftp]
tls = "explicit"
passive_ports = "42100-42199"
[upstreams.web]
protocol = "tcp"
origins = [{{ name = "o1", addr = "127.0.0.1:{ORIGIN}" }}]
[upstreams.files]
protocol = "ftps"
origins = [{{ name = "vsftpd", addr = "127.0.0.1:{VSFTPD}" }}]
[upstreams.files.tls]
ca_file = "{RUN}/ca.pem"
server_name = "ftp-origin.test"
""")
    geoedge = start("geoedge", 0, [BIN, "proxy", "--config", f"{RUN}/geoedge.toml"])
    for port in (ORIGIN, NGINX, HAPROXY, GEOEDGE, VSFTPD, GATEWAY):
        wait_port(port)
    nginx_worker = int(open(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read().split()[0])
    return {"haproxy": (haproxy.pid, HAPROXY), "nginx": (nginx_worker, NGINX),
            "geoedge": (geoedge.pid, GEOEDGE)}


def bulk(pid, port, mib):
    c0, t0 = cpu(pid), time.time()
    out = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
               f"http://127.0.0.1:{port}/bulk.bin"], 120)
    t1, c1 = time.time(), cpu(pid)
    if out.stdout.strip() != str(mib << 20):
        sys.exit(f"bulk through {port}: {out.stdout} {out.stderr}")
    gib = mib / 1024
    return (c1 - c0) / gib * 1000, mib / (t1 - t0)


def short(pid, port):
    c0 = cpu(pid)
    out = run(["wrk", "-t1", "-c32", "-d3", "-H", "Connection: close",
               f"http://127.0.0.1:{port}/small"], 10).stdout
    c1 = cpu(pid)
    found = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if not found or int(found.group(1)) == 0:
        sys.exit(f"short through {port}: {out}")
    n = int(found.group(1))
    return (c1 - c0) * 1e6 / n, n / 3, errors.group(1) if errors else ""


def ftps(port, mib):
    t0 = time.time()
    out = run(["curl", "-sS", "--ssl-reqd", "-k", "-o", "/dev/null", "-w", "%{size_download}",
               f"ftp://127.0.0.1:{port}/pub/bulk.bin"], 300)
    t1 = time.time()
    if out.stdout.strip() != str(mib << 20):
        sys.exit(f"ftps through {port}: {out.stdout} {out.stderr}")
    return mib / (t1 - t0)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    servers = setup(mib)
    names = list(servers)
    rows = {n: {"bulk_cpu": [], "bulk_mbs": [], "short_cpu": [], "short_cps": []} for n in names}
    ftp_rows = {"direct": [], "gateway": []}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in order:
            pid, port = servers[n]
            cpu_gib, mbs = bulk(pid, port, mib)
            cpu_conn, cps, errors = short(pid, port)
            rows[n]["bulk_cpu"].append(cpu_gib)
            rows[n]["bulk_mbs"].append(mbs)
            rows[n]["short_cpu"].append(cpu_conn)
            rows[n]["short_cps"].append(cps)
            print(f"rep {rep} {n:8} bulk {cpu_gib:7.1f} ms CPU/GiB {mbs:7.0f} MiB/s | "
                  f"short {cpu_conn:6.1f} µs CPU/conn {cps:7.0f} conn/s {errors}", flush=True)
        for way, port in (("direct", VSFTPD), ("gateway", GATEWAY))[:: 1 if rep % 2 == 0 else -1]:
            ftp_rows[way].append(ftps(port, mib))
            print(f"rep {rep} ftps {way:8} {ftp_rows[way][-1]:7.0f} MiB/s", flush=True)
    print("medians:")
    for n in names:
        m = {k: statistics.median(v) for k, v in rows[n].items()}
        print(f"{n:8} bulk {m['bulk_cpu']:7.1f} ms CPU/GiB {m['bulk_mbs']:7.0f} MiB/s | "
              f"short {m['short_cpu']:6.1f} µs CPU/conn {m['short_cps']:7.0f} conn/s")
    d, g = statistics.median(ftp_rows["direct"]), statistics.median(ftp_rows["gateway"])
    print(f"ftps     direct {d:7.0f} MiB/s, through the gateway {g:7.0f} MiB/s ({g / d:.2f} of direct)")


if __name__ == "__main__":
    RUN = tempfile.mkdtemp(prefix="geoedge-streams-")
    # Readable by the servers' workers, which may run as another user.
    os.chmod(RUN, 0o755)
    try:
        main()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(RUN, ignore_errors=True)

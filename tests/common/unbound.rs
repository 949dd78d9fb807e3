//! Debian's unbound in the foreground for tests: a resolver on a loopback port whose stub
//! zone sends example.test. to the server under test, ready once it answers from its own
//! local zone. Stopped on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use super::dns::{udp_raw, Ask};

/// A daemon from /usr/sbin, which a non-root PATH may lack.
pub fn sbin(name: &str) -> String {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        path.display().to_string()
    } else {
        name.to_string()
    }
}

pub struct Unbound {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Unbound {
    /// `modules` is unbound's module-config ("validator iterator", "subnetcache
    /// iterator"); `server` more lines of its `server:` clause, each indented.
    pub fn start(upstream: SocketAddr, modules: &str, server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_dual_port()));
        let conf = format!(
            "server:\n    interface: {ip}\n    port: {port}\n    do-not-query-localhost: no\n\
    chroot: \"\"\n    username: \"\"\n    directory: \"{dir}\"\n    pidfile: \"\"\n\
    use-syslog: no\n    logfile: \"\"\n    verbosity: 1\n    do-ip6: no\n\
    module-config: \"{modules}\"\n    access-control: 127.0.0.0/8 allow\n\
    qname-minimisation: no\n    local-zone: \"test.\" nodefault\n{server}\
stub-zone:\n    name: \"example.test.\"\n    stub-addr: {up_ip}@{up_port}\n",
            ip = addr.ip(),
            port = addr.port(),
            dir = dir.path().display(),
            up_ip = upstream.ip(),
            up_port = upstream.port(),
        );
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let check = Command::new(sbin("unbound-checkconf"))
            .arg(&conf_path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "unbound-checkconf: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let log = dir.path().join("unbound.log");
        let child = Command::new(sbin("unbound"))
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start unbound");
        let u = Self {
            child,
            addr,
            _dir: dir,
        };
        let q = Ask::new("localhost.", RecordType::A).recursive();
        let started = Instant::now();
        // From unbound's own local zone: ready without asking the server under test.
        while udp_raw(u.addr, &q.message().to_vec().unwrap()).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "unbound on {} did not answer: {}",
                u.addr,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        u
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

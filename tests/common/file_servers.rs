//! Real file servers as origins: vsftpd (anonymous, uploads allowed, TLS with
//! `require_ssl_reuse`) and OpenSSH's sshd (a throwaway host key, the test user with a
//! throwaway client key), each on loopback, stopped on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Issued;

/// A program by name, on PATH or in the sbin directories where Debian puts daemons
/// (which a non-root PATH often lacks).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Like `need`, for daemons that cannot be asked `--version` (vsftpd would start).
pub fn need_daemons(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find_program(n).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install {missing:?} (.ci/run)"
    );
    eprintln!("skipped: {missing:?} not installed");
    false
}

/// A free TCP port on `ip`, for servers that cannot be told to take port 0.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts and, if `banner` is given, greets with it.
fn wait_ready(addr: SocketAddr, banner: Option<&str>, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} exited with {status}: {err}");
        }
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            match banner {
                None => return,
                Some(want) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with(want) {
                        return;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "{what} did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// vsftpd on `ip`, serving `root` (whose `pub/` takes uploads) to anonymous users; with
/// `tls`, explicit FTPS with session reuse required on data connections. `extra` lines
/// go at the end of its config.
pub fn vsftpd(
    dir: &Path,
    name: &str,
    ip: &str,
    root: &Path,
    tls: Option<&Issued>,
    extra: &str,
) -> Daemon {
    let program = find_program("vsftpd").expect("vsftpd installed");
    std::fs::create_dir_all(root.join("pub")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("pub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port(ip);
    let base = 41000 + (port % 20) * 100;
    let tls_lines = match tls {
        Some(t) => format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nrequire_ssl_reuse=YES\nssl_ciphers=HIGH\nrsa_cert_file={}\nrsa_private_key_file={}\n",
            t.cert.display(),
            t.key.display()
        ),
        None => "ssl_enable=NO\n".into(),
    };
    let config = format!(
        "listen=YES\nlisten_address={ip}\nlisten_port={port}\nbackground=NO\n\
         run_as_launching_user=YES\nanonymous_enable=YES\nno_anon_password=YES\n\
         anon_root={root}\nlocal_enable=NO\nwrite_enable=YES\nanon_upload_enable=YES\n\
         anon_mkdir_write_enable=YES\nanon_other_write_enable=YES\nanon_umask=022\n\
         pasv_enable=YES\npasv_min_port={base}\npasv_max_port={}\nseccomp_sandbox=NO\n\
         xferlog_enable=NO\nvsftpd_log_file={log}\n{tls_lines}{extra}\n",
        base + 99,
        root = root.display(),
        log = dir.join(format!("vsftpd-{name}.log")).display(),
    );
    let conf = dir.join(format!("vsftpd-{name}.conf"));
    std::fs::write(&conf, config).unwrap();
    let mut child = Command::new(program)
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vsftpd");
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    wait_ready(addr, Some("220"), &mut child, "vsftpd");
    Daemon { child, addr }
}

/// sshd for the user running the tests, with a throwaway host key and a client key whose
/// private half is returned beside it.
pub struct Sshd {
    pub daemon: Daemon,
    pub client_key: PathBuf,
    pub user: String,
}

pub fn sshd(dir: &Path) -> Sshd {
    let program = find_program("sshd").expect("sshd installed");
    let keygen = |file: &str| {
        let path = dir.join(file);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .expect("run ssh-keygen");
        assert!(ok.success());
        path
    };
    let host_key = keygen("ssh_host_key");
    let client_key = keygen("client_key");
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    // sshd started by root insists on its privilege-separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port("127.0.0.1");
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
         AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         Subsystem sftp internal-sftp\nLogLevel ERROR\n",
        host = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        keys = dir.join("authorized_keys").display(),
    );
    let conf = dir.join("sshd_config");
    std::fs::write(&conf, config).unwrap();
    let mut child = Command::new(program)
        .args(["-D", "-e", "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sshd");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_ready(addr, Some("SSH-"), &mut child, "sshd");
    let user = String::from_utf8(
        Command::new("id")
            .arg("-un")
            .output()
            .expect("run id")
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    Sshd {
        daemon: Daemon { child, addr },
        client_key,
        user,
    }
}

/// `len` bytes that do not repeat in any short period, so a dropped or doubled block
/// shows in a comparison.
pub fn test_file(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    data
}

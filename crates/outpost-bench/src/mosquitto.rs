//! mosquitto, a reference broker of the routed benchmark: Debian's package with its default in-memory
//! settings (no persistence) except its queue limit, a plain listener on 1883 and a TLS listener on 8883 of a
//! loopback address of its own, with a server certificate from an `outpost-pki` CA.
//!
//! mosquitto.conf(5): `max_queued_messages` (default 1000) and `max_queued_bytes` bound the QoS 1 messages queued
//! per client above those in flight, and "once this limit has been reached, subsequent messages will be silently
//! dropped" — messages the broker has already acknowledged to their publisher. Both are set to 0 (no limit) so
//! that a connected subscriber that falls behind gets everything that was acknowledged, as it does from the edge
//! hub. `memory_limit` stays unset (no limit): with it, mosquitto drops outgoing messages too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::edge_process::free_ip;
use crate::hub_process;

/// The plain MQTT port.
pub const PLAIN_PORT: u16 = 1883;
/// The MQTT/TLS port.
pub const TLS_PORT: u16 = 8883;

/// The mosquitto configuration: two listeners, anonymous clients, nothing persisted, no queue limit.
pub fn config_text(ip: Ipv4Addr, cert: &Path, key: &Path) -> String {
    format!(
        "persistence false\nallow_anonymous true\nuser root\n\
         max_queued_messages 0\nmax_queued_bytes 0\n\n\
         listener {PLAIN_PORT} {ip}\n\n\
         listener {TLS_PORT} {ip}\ncertfile {}\nkeyfile {}\n",
        cert.display(),
        key.display()
    )
}

/// Writes a server certificate for `ip` (`server.pem`, `server.key`) and the CA it chains to (`ca.pem`) into
/// `dir`; returns the certificate's and the key's paths.
pub fn server_certificate(
    dir: &Path,
    ca_name: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca = outpost_pki::CertificateAuthority::load_or_create(dir, ca_name)?;
    let (chain, key) = ca.issue_server_certificate(&ip.to_string())?;
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, chain)?;
    std::fs::write(&key_path, key)?;
    Ok((cert_path, key_path))
}

/// Waits until every address in `addrs` accepts a TCP connection (10 s at most); fails with the log at `log`
/// if `child` exits first.
pub async fn wait_listening(
    name: &str,
    child: &mut Child,
    addrs: &[SocketAddr],
    log: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{name} exited ({status}): {log}");
        }
        let mut all = true;
        for addr in addrs {
            all = all && tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        if all {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{name} did not listen within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running mosquitto.
pub struct Mosquitto {
    child: Child,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    dir: TempDir,
    /// Its version, as it prints it.
    pub version: String,
}

impl Mosquitto {
    /// Starts `mosquitto -c CONF`; returns once both listeners answer.
    pub async fn start() -> anyhow::Result<Self> {
        let version = Command::new("mosquitto")
            .arg("-h")
            .output()
            .context("mosquitto is not installed (scripts/setup-test-env.sh installs it)")?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("mosquitto")
            .trim()
            .to_owned();
        let ip = free_ip(240, 15, TLS_PORT).context("no free loopback address for mosquitto")?;
        let dir = tempfile::Builder::new()
            .prefix("outpost-bench-mosquitto-")
            .tempdir()?;
        let (cert_path, key_path) = server_certificate(dir.path(), "bench mosquitto CA", ip)?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, config_text(ip, &cert_path, &key_path))?;
        let log = std::fs::File::create(dir.path().join("mosquitto.log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start mosquitto")?;
        let mut broker = Self {
            child,
            ip,
            dir,
            version,
        };
        let log = broker.dir.path().join("mosquitto.log");
        let addrs = [broker.plain_addr(), broker.tls_addr()];
        wait_listening("mosquitto", &mut broker.child, &addrs, &log).await?;
        Ok(broker)
    }

    /// The plain listener.
    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, PLAIN_PORT))
    }

    /// The TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, TLS_PORT))
    }

    /// The CA its TLS certificate chains to.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Stops it.
    pub async fn stop(mut self) {
        hub_process::terminate(&mut self.child).await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_a_plain_and_a_tls_listener_no_persistence_and_no_queue_limit() {
        let text = config_text(
            Ipv4Addr::new(127, 0, 0, 241),
            Path::new("/c.pem"),
            Path::new("/k.pem"),
        );
        assert!(text.contains("persistence false\n"));
        assert!(text.contains("max_queued_messages 0\n"));
        assert!(text.contains("max_queued_bytes 0\n"));
        assert!(!text.contains("memory_limit"));
        assert!(text.contains("listener 1883 127.0.0.241\n"));
        assert!(text.contains("listener 8883 127.0.0.241\ncertfile /c.pem\nkeyfile /k.pem\n"));
    }
}

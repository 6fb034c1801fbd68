//! mosquitto, the reference broker of the routed benchmark: Debian's package with its default in-memory
//! settings (no persistence), a plain listener on 1883 and a TLS listener on 8883 of a loopback address of its
//! own, with a server certificate from an `outpost-pki` CA.

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

/// The mosquitto configuration: two listeners, anonymous clients, nothing persisted.
pub fn config_text(ip: Ipv4Addr, cert: &Path, key: &Path) -> String {
    format!(
        "persistence false\nallow_anonymous true\nuser root\n\n\
         listener {PLAIN_PORT} {ip}\n\n\
         listener {TLS_PORT} {ip}\ncertfile {}\nkeyfile {}\n",
        cert.display(),
        key.display()
    )
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
        let ca =
            outpost_pki::CertificateAuthority::load_or_create(dir.path(), "bench mosquitto CA")?;
        let (chain, key) = ca.issue_server_certificate(&ip.to_string())?;
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, chain)?;
        std::fs::write(&key_path, key)?;
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
        let started = Instant::now();
        loop {
            if let Some(status) = broker.child.try_wait()? {
                let log = std::fs::read_to_string(broker.dir.path().join("mosquitto.log"))
                    .unwrap_or_default();
                bail!("mosquitto exited ({status}): {log}");
            }
            let plain = tokio::net::TcpStream::connect(broker.plain_addr())
                .await
                .is_ok();
            if plain
                && tokio::net::TcpStream::connect(broker.tls_addr())
                    .await
                    .is_ok()
            {
                return Ok(broker);
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("mosquitto did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    fn the_configuration_has_a_plain_and_a_tls_listener_and_no_persistence() {
        let text = config_text(
            Ipv4Addr::new(127, 0, 0, 241),
            Path::new("/c.pem"),
            Path::new("/k.pem"),
        );
        assert!(text.contains("persistence false\n"));
        assert!(text.contains("listener 1883 127.0.0.241\n"));
        assert!(text.contains("listener 8883 127.0.0.241\ncertfile /c.pem\nkeyfile /k.pem\n"));
    }
}

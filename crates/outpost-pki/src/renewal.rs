//! Server certificates that renew themselves, and the schedule that renews them and their CA.
//!
//! [`CertificateRenewal::tick`] does one round at a given time and says when the next is due; it is plain code
//! over the clock it is given, so tests drive it with made-up times. [`CertificateRenewal::run`] is the loop a
//! daemon owns: it ticks, sleeps until the next event (at most an hour, so a clock that jumps is noticed), and
//! stops when the daemon drops or aborts it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::authority::CertificateAuthority;
use crate::resolver::{reloading_tls_config, ReloadableCertificate};
use crate::x509::CertificateInfo;
use crate::PkiError;

/// The longest a renewal loop sleeps, so that a clock set forward (or a suspended host) is noticed.
const LONGEST_SLEEP: Duration = Duration::from_hours(1);
/// How long a renewal loop waits after a failed round (a full disk) before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_mins(1);

/// A listener's server certificate: issued by a CA, presented through a [`ReloadableCertificate`], and written
/// to a file for operators (`openssl x509 -in FILE`, `outpost edge check`).
pub struct ServerCertificate {
    label: String,
    host_name: String,
    other_names: Vec<String>,
    lifetime: Duration,
    file: PathBuf,
    presented: Arc<ReloadableCertificate>,
    current: Mutex<CertificateInfo>,
}

impl ServerCertificate {
    /// Issues the certificate at `now` for `host_name` and `other_names`, valid for `lifetime`, and writes its
    /// chain to `file`. `label` names it in logs and [`CertificateAuthority::expiries`] (`hub server`).
    pub fn issue(
        ca: &CertificateAuthority,
        label: &str,
        host_name: &str,
        other_names: &[&str],
        lifetime: Duration,
        file: PathBuf,
        now: i64,
    ) -> Result<Self, PkiError> {
        let issued = ca.issue(label, host_name, other_names, lifetime, now)?;
        write_chain(&file, &issued.chain_pem)?;
        Ok(Self {
            label: label.to_owned(),
            host_name: host_name.to_owned(),
            other_names: other_names.iter().map(|n| (*n).to_owned()).collect(),
            lifetime,
            file,
            presented: Arc::new(ReloadableCertificate::from_pem(
                &issued.chain_pem,
                &issued.key_pem,
            )?),
            current: Mutex::new(issued.info),
        })
    }

    /// A certificate issued earlier (by another process of the same service: hub replicas share theirs through
    /// their database), presented as it is and written to `file`; renewed like an issued one.
    pub fn adopt(
        label: &str,
        host_name: &str,
        other_names: &[&str],
        lifetime: Duration,
        file: PathBuf,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, PkiError> {
        let info = crate::x509::inspect_pem(chain_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Malformed("the adopted chain holds no certificate".into()))?;
        write_chain(&file, chain_pem)?;
        Ok(Self {
            label: label.to_owned(),
            host_name: host_name.to_owned(),
            other_names: other_names.iter().map(|n| (*n).to_owned()).collect(),
            lifetime,
            file,
            presented: Arc::new(ReloadableCertificate::from_pem(chain_pem, key_pem)?),
            current: Mutex::new(info),
        })
    }

    /// A rustls server configuration (TLS 1.2 and 1.3) that presents this certificate, renewed or not, at each
    /// handshake. Listeners that need ALPN set it on a clone: the clone shares the certificate.
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        reloading_tls_config(self.presented.clone())
    }

    /// [`tls_config`](Self::tls_config) that asks clients for an optional certificate (X.509 devices).
    pub fn tls_config_requesting_client_certificates(
        &self,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        crate::resolver::reloading_tls_config_requesting_client_certificates(self.presented.clone())
    }

    /// The certificate presented now.
    pub fn current(&self) -> CertificateInfo {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Issues it again at `now` and presents the new one from the next handshake on.
    pub fn reissue(
        &self,
        ca: &CertificateAuthority,
        now: i64,
    ) -> Result<CertificateInfo, PkiError> {
        let others: Vec<&str> = self.other_names.iter().map(String::as_str).collect();
        let issued = ca.issue(&self.label, &self.host_name, &others, self.lifetime, now)?;
        write_chain(&self.file, &issued.chain_pem)?;
        self.presented.replace(&issued.chain_pem, &issued.key_pem)?;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = issued.info.clone();
        Ok(issued.info)
    }
}

/// A CA and the server certificates it issued to this daemon's listeners, renewed at 80 % of their life.
pub struct CertificateRenewal {
    ca: Arc<CertificateAuthority>,
    servers: Vec<Arc<ServerCertificate>>,
    /// Whether this process renews the CA (not when several processes share it: each would make its own).
    renews_ca: bool,
}

impl CertificateRenewal {
    /// Renews `ca` and `servers` on schedule.
    pub fn new(ca: Arc<CertificateAuthority>, servers: Vec<Arc<ServerCertificate>>) -> Self {
        Self {
            ca,
            servers,
            renews_ca: true,
        }
    }

    /// Renews only the server certificates: the CA is shared with other processes (hub replicas on one
    /// database), which would each make a different new CA; a CA due for renewal is logged instead.
    #[must_use]
    pub fn with_shared_ca(mut self) -> Self {
        self.renews_ca = false;
        self
    }

    /// One round at `now` (Unix seconds): renews the CA when due (and then every server certificate, so that the
    /// new CA signs them), drops replaced CAs that expired, renews each server certificate that is due. Returns
    /// when the next round is due.
    pub fn tick(&self, now: i64) -> Result<i64, PkiError> {
        let mut reissue_all = false;
        let ca = self.ca.current();
        if ca.renewal_due(now) && !self.renews_ca {
            tracing::warn!(ca = %ca.subject, not_after = ca.not_after,
                "the shared CA is due for renewal, which replicas do not do: see docs/operations.md");
        } else if ca.renewal_due(now) {
            let renewed = self.ca.renew(now)?;
            tracing::info!(old = %ca.subject, new = %renewed.subject, not_after = renewed.not_after,
                "renewed the CA: the trust bundle holds both until the old one expires");
            reissue_all = true;
        }
        if self.ca.forget_expired(now)? {
            tracing::info!("a replaced CA expired and left the trust bundle");
            reissue_all = true;
        }
        for server in &self.servers {
            if reissue_all || server.current().renewal_due(now) {
                let renewed = server.reissue(&self.ca, now)?;
                tracing::info!(certificate = %server.label, subject = %renewed.subject,
                    serial = %renewed.serial, not_after = renewed.not_after,
                    "renewed a server certificate: new handshakes get it, open connections keep theirs");
            }
        }
        Ok(self
            .servers
            .iter()
            .map(|server| server.current().renewal_due_at())
            .fold(self.ca.next_event(), i64::min))
    }

    /// Ticks forever, sleeping with `sleep` in between; the owner stops it by dropping (aborting) the future.
    ///
    /// A round generates a key and fsyncs a few small files: it runs on the caller's task, briefly.
    pub async fn run<S, F>(&self, mut sleep: S)
    where
        S: FnMut(Duration) -> F,
        F: std::future::Future<Output = ()>,
    {
        loop {
            let now = crate::unix_now();
            let wait = match self.tick(now) {
                Ok(next) => Duration::from_secs(u64::try_from(next - now).unwrap_or(0))
                    .clamp(Duration::from_secs(1), LONGEST_SLEEP),
                Err(error) => {
                    tracing::error!(%error, "cannot renew certificates; trying again in a minute");
                    RETRY_AFTER_FAILURE
                }
            };
            sleep(wait).await;
        }
    }

    /// The server certificates, in the order given to [`Self::new`].
    pub fn servers(&self) -> &[Arc<ServerCertificate>] {
        &self.servers
    }

    /// The CA.
    pub fn authority(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// `(name, notAfter in Unix seconds)` of every certificate the CA knows (see
    /// [`CertificateAuthority::expiries`]): what a metric of certificate expiry reads.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        self.ca.expiries()
    }
}

fn write_chain(file: &std::path::Path, chain_pem: &str) -> Result<(), PkiError> {
    outpost_store::host::write_atomically(file, chain_pem.as_bytes(), 0o644).map_err(|source| {
        PkiError::Io {
            path: file.display().to_string(),
            source,
        }
    })
}

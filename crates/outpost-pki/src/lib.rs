//! Outpost's certificate authorities, server certificates that renew themselves, and TLS server configurations.
//!
//! Start with [`CertificateAuthority`] (`authority`): the hub and each edge device keep one in their data
//! directory (`ca.pem`, `ca.key`); clients trust `ca.pem`. Listeners present a [`ServerCertificate`]
//! (`renewal`) through a [`ReloadableCertificate`] (`resolver`), so that [`CertificateRenewal`] can replace it
//! while they run: open connections keep theirs, new handshakes get the new one. Every certificate is renewed at
//! 80 % of its life (`x509::RENEWAL_POINT`); `x509` reads the few fields this needs from a certificate.
//! `client_auth` holds X.509 client authentication: the TLS verifier that asks for a client certificate, and
//! the checks of a chain against registered thumbprints or the CA certificates a hub holds.

use std::sync::Arc;

mod authority;
pub mod client_auth;
mod renewal;
mod resolver;
pub mod x509;

pub use authority::{
    CertificateAuthority, IssuedCertificate, DEFAULT_CA_LIFETIME, DEFAULT_SERVER_LIFETIME,
    DEFAULT_WORKLOAD_LIFETIME,
};
pub use renewal::{CertificateRenewal, ServerCertificate};
pub use resolver::{
    reloading_tls_config, reloading_tls_config_requesting_client_certificates,
    ReloadableCertificate,
};
pub use x509::{inspect_pem, CertificateInfo, CertificateState};

/// Errors while creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a certificate file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The host name is neither a DNS name nor an IP address.
    #[error("invalid host name {0:?} for a certificate")]
    HostName(String),
    /// A certificate or a CA's files are not what they should be.
    #[error("malformed certificate: {0}")]
    Malformed(String),
}

/// The time now, in Unix seconds: the clock certificates are issued and renewed by.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Builds a rustls server configuration from PEM text, offering TLS 1.2 (the Python SDK's only version) and 1.3.
/// The certificate is fixed; [`ServerCertificate::tls_config`] gives one that renews.
pub fn server_tls_config(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    reloading_tls_config(Arc::new(ReloadableCertificate::from_pem(
        chain_pem, key_pem,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    const DAY: i64 = 86_400;

    /// Verifies `chain_pem` for `name` at `now` against the roots in `roots_pem`, as a rustls client does.
    fn verify(roots_pem: &str, chain_pem: &str, name: &str, now: i64) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let certs: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now as u64));
        verifier
            .verify_server_cert(&certs[0], &certs[1..], &name, &[], at)
            .map(|_| ())
    }

    fn ca_at(dir: &Path, now: i64) -> CertificateAuthority {
        CertificateAuthority::open(
            dir,
            "Outpost test CA",
            Duration::from_secs(100 * DAY as u64),
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_renewal_is_due_at_80_percent_of_the_ca_life_and_of_a_server_certificate_life() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let ca = Arc::new(ca_at(dir.path(), now));
        let server = Arc::new(
            ServerCertificate::issue(
                &ca,
                "test server",
                "localhost",
                &[],
                Duration::from_secs(10 * DAY as u64),
                dir.path().join("server.pem"),
                now,
            )
            .unwrap(),
        );
        let first = server.current();
        let renewal = CertificateRenewal::new(ca.clone(), vec![server.clone()]);
        let next = renewal.tick(now).unwrap();
        assert_eq!(next, first.renewal_due_at());
        assert_eq!(server.current(), first, "nothing is due yet");
        renewal.tick(next - 1).unwrap();
        assert_eq!(server.current(), first);
        renewal.tick(next).unwrap();
        let second = server.current();
        assert_ne!(second.serial, first.serial);
        assert_eq!(
            ca.current().common_name,
            "Outpost test CA",
            "the CA is not due yet"
        );
        let ca_due = ca.current().renewal_due_at();
        assert!(ca_due > now + 79 * DAY && ca_due <= now + 80 * DAY);
        renewal.tick(ca_due).unwrap();
        assert_eq!(ca.current().common_name, "Outpost test CA 2");
        assert_ne!(
            server.current().serial,
            second.serial,
            "the new CA signs a new server certificate"
        );
        let written = std::fs::read_to_string(dir.path().join("server.pem")).unwrap();
        assert_eq!(inspect_pem(&written).unwrap()[0], server.current());
    }

    #[test]
    fn a_server_certificate_cut_short_by_its_ca_is_not_renewed_again_at_once() {
        // A CA that lives 30 s and a server certificate asked for an hour: the certificate ends with the CA.
        // Its renewal point must lie 80 % into the life it really has, not in the past (which renewed it on
        // every tick, once a second, until the CA itself was renewed).
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let ca = Arc::new(
            CertificateAuthority::open(dir.path(), "Outpost test CA", Duration::from_secs(30), now)
                .unwrap(),
        );
        let server = Arc::new(
            ServerCertificate::issue(
                &ca,
                "test server",
                "localhost",
                &[],
                Duration::from_hours(1),
                dir.path().join("server.pem"),
                now,
            )
            .unwrap(),
        );
        let first = server.current();
        assert_eq!(first.not_after, ca.current().not_after);
        assert!(first.not_before >= now - 3, "{}", now - first.not_before);
        let renewal = CertificateRenewal::new(ca.clone(), vec![server.clone()]);
        let next = renewal.tick(now).unwrap();
        assert_eq!(server.current(), first, "renewed at once");
        assert!(next >= now + 20, "next renewal {} s from now", next - now);
        renewal.tick(now + 1).unwrap();
        assert_eq!(server.current(), first, "renewed again a second later");
        // Through the CA's renewal and beyond, at most one reissue per event, never one per tick.
        let mut reissues = 0;
        let mut serial = first.serial.clone();
        for t in now..now + 120 {
            renewal.tick(t).unwrap();
            let current = server.current();
            assert!(current.not_after > t, "expired at {}", t - now);
            if current.serial != serial {
                reissues += 1;
                serial = current.serial;
            }
        }
        assert!(reissues <= 12, "{reissues} reissues in 120 s");
    }

    #[test]
    fn the_resolver_presents_the_replacement_from_the_next_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "Outpost test CA").unwrap();
        let (chain, key) = ca.issue_server_certificate("localhost").unwrap();
        let resolver = ReloadableCertificate::from_pem(&chain, &key).unwrap();
        let before = resolver.current();
        let (chain, key) = ca.issue_server_certificate("localhost").unwrap();
        resolver.replace(&chain, &key).unwrap();
        let after = resolver.current();
        assert_ne!(before.cert[0], after.cert[0]);
        let expected = rustls_pemfile::certs(&mut chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(after.cert[0], expected);
        assert!(
            !Arc::ptr_eq(&before, &after),
            "a handshake holding the old one keeps it"
        );
        assert!(resolver.replace(&chain, "not a key").is_err());
        assert_eq!(
            resolver.current().cert[0],
            expected,
            "a refused replacement changes nothing"
        );
    }

    #[test]
    fn the_trust_bundle_holds_the_old_and_new_ca_until_the_old_one_expires() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000;
        let ca = ca_at(dir.path(), start);
        let old_bundle = ca.pem();
        let old_leaf = ca
            .issue(
                "old",
                "localhost",
                &[],
                Duration::from_secs(20 * DAY as u64),
                start,
            )
            .unwrap();

        let renewed_at = start + 80 * DAY;
        ca.renew(renewed_at).unwrap();
        let bundle = ca.pem();
        let names: Vec<_> = ca
            .certificates()
            .into_iter()
            .map(|c| c.common_name)
            .collect();
        assert_eq!(names, ["Outpost test CA 2", "Outpost test CA"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            bundle
        );
        assert!(dir.path().join("ca-cross.pem").exists());

        let new_leaf = ca
            .issue(
                "new",
                "localhost",
                &[],
                Duration::from_secs(20 * DAY as u64),
                renewed_at,
            )
            .unwrap();
        let during = renewed_at + DAY;
        verify(&bundle, &new_leaf.chain_pem, "localhost", during)
            .expect("the new bundle verifies the new CA's leaf");
        verify(&bundle, &old_leaf.chain_pem, "localhost", start + DAY).expect("and the old CA's");
        verify(&old_bundle, &new_leaf.chain_pem, "localhost", during)
            .expect("a client that loaded only the old CA verifies through the cross-signed link");

        assert!(!ca.forget_expired(during).unwrap());
        let old_end = start + 100 * DAY;
        assert!(ca.forget_expired(old_end).unwrap());
        let names: Vec<_> = ca
            .certificates()
            .into_iter()
            .map(|c| c.common_name)
            .collect();
        assert_eq!(names, ["Outpost test CA 2"]);
        assert!(!dir.path().join("ca-cross.pem").exists());
        assert_eq!(
            inspect_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_renewed_ca_is_loaded_again_as_renewed_and_its_key_stays_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000;
        let ca = ca_at(dir.path(), start);
        ca.renew(start + 90 * DAY).unwrap();
        let bundle = ca.pem();
        drop(ca);
        let reloaded = ca_at(dir.path(), start + 91 * DAY);
        assert_eq!(reloaded.pem(), bundle);
        assert_eq!(reloaded.current().common_name, "Outpost test CA 2");
        let leaf = reloaded
            .issue(
                "x",
                "127.0.0.5",
                &[],
                Duration::from_secs(DAY as u64),
                start + 91 * DAY,
            )
            .unwrap();
        verify(&bundle, &leaf.chain_pem, "127.0.0.5", start + 91 * DAY).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_renewal_cut_short_before_the_bundle_was_written_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000;
        let ca = ca_at(dir.path(), start);
        let bundle = ca.pem();
        drop(ca);
        // A crash after the new key was written aside, before the bundle naming the new CA.
        std::fs::write(
            dir.path().join("ca.key.new"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let reloaded = ca_at(dir.path(), start + DAY);
        assert_eq!(reloaded.pem(), bundle);
        assert!(!dir.path().join("ca.key.new").exists());
    }

    #[test]
    fn a_leaf_never_outlives_its_ca_and_expiries_name_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000;
        let ca = ca_at(dir.path(), start);
        let leaf = ca
            .issue(
                "module filter server",
                "filter",
                &[],
                Duration::from_secs(1_000 * DAY as u64),
                start,
            )
            .unwrap();
        assert_eq!(leaf.info.not_after, ca.current().not_after);
        let expiries = ca.expiries();
        assert!(expiries.contains(&("CA Outpost test CA".to_owned(), ca.current().not_after)));
        assert!(expiries.contains(&("module filter server".to_owned(), leaf.info.not_after)));
    }

    #[test]
    fn the_ca_key_is_private_and_an_existing_open_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        CertificateAuthority::load_or_create(&dir, "test CA").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        CertificateAuthority::load_or_create(&dir, "test CA").unwrap();
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_that_the_first_ca_pem_verifies() {
        use rustls::client::danger::ServerCertVerifier as _;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path(), "Outpost test CA").unwrap();
        let original_pem = first.pem();
        drop(first);
        let reloaded = CertificateAuthority::load_or_create(dir.path(), "Outpost test CA").unwrap();
        assert_eq!(reloaded.pem(), original_pem);
        let (chain, _key) = reloaded.issue_server_certificate("127.0.0.5").unwrap();

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut original_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let certs: Vec<_> = rustls_pemfile::certs(&mut chain.as_bytes())
            .map(Result::unwrap)
            .collect();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.5").unwrap();
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("the reloaded CA's certificate verifies against the original ca.pem");
    }
}

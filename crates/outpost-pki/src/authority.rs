//! A certificate authority kept in a directory, that issues server certificates and replaces itself before it
//! expires.
//!
//! Files in its directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.key` | the current CA's key (`0600`) |
//! | `ca.pem` | the trust bundle: the current CA first, then the CAs it replaced that have not expired yet |
//! | `ca-cross.pem` | during an overlap, the current CA's certificate signed by the CA it replaced |
//!
//! A renewal makes a new key and a CA named after the old one with a generation number (`Outpost hub CA 2`).
//! Clients that loaded the old bundle keep verifying: servers present the cross-signed certificate in their
//! chain, which leads from the new CA to the old one. Clients that load the new bundle trust both.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use outpost_store::host::{write_atomically, PRIVATE_FILE_MODE};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::x509::{inspect, inspect_pem, CertificateInfo};
use crate::PkiError;

/// How long a new CA is valid unless configured otherwise: one year.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_hours(365 * 24);
/// How long a listener's server certificate is valid unless configured otherwise: 90 days.
pub const DEFAULT_SERVER_LIFETIME: Duration = Duration::from_hours(90 * 24);
/// How long a module's server certificate from the workload API is valid unless configured otherwise: 30 days.
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_hours(30 * 24);

/// The mode of files anyone may read (certificates).
const PUBLIC_FILE_MODE: u32 = 0o644;

/// A certificate authority that issues server certificates.
pub struct CertificateAuthority {
    dir: PathBuf,
    /// The name of the first CA; renewed ones add a generation number.
    common_name: String,
    /// How long a new CA is valid.
    lifetime: Duration,
    /// A std `RwLock`: issuing reads it, a renewal replaces it; never held across an `.await`.
    state: RwLock<Authority>,
    /// The newest leaf issued under each label (`hub server`, `module filter server`), for [`Self::expiries`].
    /// One entry per listener and per module, so bounded by the deployment; expired entries are dropped.
    issued: Mutex<BTreeMap<String, CertificateInfo>>,
}

/// The CA in force and the ones it replaced.
struct Authority {
    key: KeyPair,
    /// The current CA rebuilt from its key and name: what rcgen signs with (only its name and key matter).
    issuer: rcgen::Certificate,
    current: CertificateInfo,
    current_pem: String,
    /// Replaced CAs not expired yet, newest first.
    previous: Vec<(CertificateInfo, String)>,
    /// The current CA signed by the one it replaced, while that one is valid.
    cross: Option<(CertificateInfo, String)>,
}

/// A certificate and its key, as issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The leaf, then what leads to the trust bundle (the CA, or its cross-signed certificate), as PEM.
    pub chain_pem: String,
    /// The leaf's private key, as PEM.
    pub key_pem: String,
    /// What the leaf says about itself.
    pub info: CertificateInfo,
}

impl CertificateAuthority {
    /// Loads the CA from `dir/ca.key`, or creates it (and `dir/ca.pem`) when there is none, valid for
    /// [`DEFAULT_CA_LIFETIME`].
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, PkiError> {
        Self::open(dir, common_name, DEFAULT_CA_LIFETIME, crate::unix_now())
    }

    /// Loads the CA kept in `dir`, or creates one valid for `lifetime` from `now` (Unix seconds).
    ///
    /// A missing `dir` is created `0700`; the key is written `0600`, and an existing key readable by others is
    /// tightened to `0600`. A renewal interrupted by a crash is completed or forgotten. An expired or expiring
    /// CA is loaded as it is: [`Self::renew`] replaces it.
    pub fn open(
        dir: &Path,
        common_name: &str,
        lifetime: Duration,
        now: i64,
    ) -> Result<Self, PkiError> {
        outpost_store::host::private_dir(dir).map_err(|source| io(dir, source))?;
        let key_path = dir.join("ca.key");
        let state = if key_path.exists() {
            outpost_store::host::private_file(&key_path).map_err(|source| io(&key_path, source))?;
            load(dir, now)?
        } else {
            create(dir, common_name, lifetime, now)?
        };
        Ok(Self {
            dir: dir.to_owned(),
            common_name: common_name.to_owned(),
            lifetime,
            state: RwLock::new(state),
            issued: Mutex::new(BTreeMap::new()),
        })
    }

    /// The trust bundle clients load, as PEM: the current CA, then the replaced ones still valid.
    pub fn pem(&self) -> String {
        let state = self.read();
        let mut bundle = state.current_pem.clone();
        for (_, pem) in &state.previous {
            bundle.push_str(pem);
        }
        bundle
    }

    /// The current CA.
    pub fn current(&self) -> CertificateInfo {
        self.read().current.clone()
    }

    /// The CAs of the trust bundle: the current one, then the replaced ones still valid.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let state = self.read();
        std::iter::once(state.current.clone())
            .chain(state.previous.iter().map(|(info, _)| info.clone()))
            .collect()
    }

    /// Issues a server certificate for `host_name` (its common name and first SAN) and `other_names`, valid for
    /// `lifetime` from `now` but never past the CA's own end; it is remembered as `label` for [`Self::expiries`].
    pub fn issue(
        &self,
        label: &str,
        host_name: &str,
        other_names: &[&str],
        lifetime: Duration,
        now: i64,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        let mut names = vec![san_for(host_name)?];
        for name in other_names {
            names.push(san_for(name)?);
        }
        params.subject_alt_names = names;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let issued = {
            let state = self.read();
            // Cut to the CA's remaining life before the validity is worked out: `notBefore`'s setback is a tenth
            // of the life the certificate really gets, so its renewal point (80 % of the way from `notBefore`)
            // lies ahead. Set back by a tenth of the asked-for life instead, a certificate cut short by its CA
            // was due at once and was reissued on every tick until the CA renewed.
            let remaining = u64::try_from(state.current.not_after - now).unwrap_or(0);
            let (not_before, not_after) =
                validity(now, lifetime.min(Duration::from_secs(remaining)));
            set_validity(
                &mut params,
                not_before,
                not_after.min(state.current.not_after),
            );
            let certificate = params.signed_by(&key, &state.issuer, &state.key)?;
            let link = state
                .cross
                .as_ref()
                .map_or(&state.current_pem, |(_, pem)| pem);
            IssuedCertificate {
                chain_pem: format!("{}{link}", certificate.pem()),
                key_pem: key.serialize_pem(),
                info: inspect(certificate.der())?,
            }
        };
        self.issued_leaves()
            .insert(label.to_owned(), issued.info.clone());
        Ok(issued)
    }

    /// Issues a TLS server certificate for `host_name` (an IP address or a DNS name, and `localhost`) valid for
    /// [`DEFAULT_SERVER_LIFETIME`], and returns `(chain PEM, key PEM)`.
    pub fn issue_server_certificate(&self, host_name: &str) -> Result<(String, String), PkiError> {
        let extra: &[&str] = if host_name == "localhost" {
            &[]
        } else {
            &["localhost"]
        };
        self.issue_server_certificate_for(host_name, extra)
    }

    /// Issues a TLS server certificate whose common name is `host_name`, naming it and `other_names` as SANs,
    /// valid for [`DEFAULT_SERVER_LIFETIME`].
    pub fn issue_server_certificate_for(
        &self,
        host_name: &str,
        other_names: &[&str],
    ) -> Result<(String, String), PkiError> {
        let issued = self.issue(
            &format!("server {host_name}"),
            host_name,
            other_names,
            DEFAULT_SERVER_LIFETIME,
            crate::unix_now(),
        )?;
        Ok((issued.chain_pem, issued.key_pem))
    }

    /// A rustls server configuration (TLS 1.2 and 1.3) presenting a fresh certificate for `host_name`, which is
    /// never renewed (see [`crate::ServerCertificate`] for one that is).
    pub fn server_tls_config(
        &self,
        host_name: &str,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let (chain_pem, key_pem) = self.issue_server_certificate(host_name)?;
        crate::server_tls_config(&chain_pem, &key_pem)
    }

    /// Replaces the CA with a new one (new key, next generation's name) valid for the configured lifetime from
    /// `now`, keeping the old one in the trust bundle, and cross-signed by it, until it expires.
    ///
    /// The files change so that a crash leaves either the old CA or the new one: the new key is written aside
    /// (`ca.key.new`), then the bundle naming the new CA first, then the key is renamed into place; loading
    /// finishes or forgets a renewal that stopped in between.
    pub fn renew(&self, now: i64) -> Result<CertificateInfo, PkiError> {
        let mut state = self.write();
        let key = KeyPair::generate()?;
        let name = next_common_name(&self.common_name, &state.current.common_name);
        let (not_before, not_after) = validity(now, self.lifetime);
        let certificate = ca_params(&name, not_before, not_after).self_signed(&key)?;
        let current = inspect(certificate.der())?;
        let old = state.current.clone();
        let cross = if old.not_after > now {
            let cross = ca_params(&name, not_before, not_after.min(old.not_after)).signed_by(
                &key,
                &state.issuer,
                &state.key,
            )?;
            Some((inspect(cross.der())?, cross.pem()))
        } else {
            None
        };
        let mut previous = vec![(old, state.current_pem.clone())];
        previous.append(&mut state.previous);
        previous.retain(|(info, _)| info.not_after > now);

        let next = Authority {
            issuer: ca_params(&name, not_before, not_after).self_signed(&key)?,
            key,
            current,
            current_pem: certificate.pem(),
            previous,
            cross,
        };
        let pending = self.dir.join("ca.key.new");
        write(&pending, &next.key.serialize_pem(), PRIVATE_FILE_MODE)?;
        write_bundle(&self.dir, &next)?;
        promote(&pending, &self.dir.join("ca.key"))?;
        let renewed = next.current.clone();
        *state = next;
        Ok(renewed)
    }

    /// Drops the replaced CAs (and the cross-signed certificate) that expired by `now` from the bundle and its
    /// files; returns whether anything was dropped (servers then drop the cross-signed link from their chain).
    pub fn forget_expired(&self, now: i64) -> Result<bool, PkiError> {
        self.issued_leaves().retain(|_, info| info.not_after > now);
        let mut state = self.write();
        let before = (state.previous.len(), state.cross.is_some());
        state.previous.retain(|(info, _)| info.not_after > now);
        if state
            .cross
            .as_ref()
            .is_some_and(|(info, _)| info.not_after <= now)
        {
            state.cross = None;
        }
        if before == (state.previous.len(), state.cross.is_some()) {
            return Ok(false);
        }
        write_bundle(&self.dir, &state)?;
        Ok(true)
    }

    /// When something of the CA next needs attention: its renewal, or the end of a replaced CA (Unix seconds).
    pub fn next_event(&self) -> i64 {
        let state = self.read();
        state
            .previous
            .iter()
            .map(|(info, _)| info.not_after)
            .chain(state.cross.as_ref().map(|(info, _)| info.not_after))
            .fold(state.current.renewal_due_at(), i64::min)
    }

    /// `(name, notAfter in Unix seconds)` of every certificate this CA knows: the CAs of the trust bundle
    /// (`CA Outpost hub CA`) and the newest leaf issued under each label (`hub server`).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut expiries: Vec<_> = self
            .certificates()
            .into_iter()
            .map(|info| (format!("CA {}", info.common_name), info.not_after))
            .collect();
        expiries.extend(
            self.issued_leaves()
                .iter()
                .map(|(label, info)| (label.clone(), info.not_after)),
        );
        expiries
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Authority> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Authority> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn issued_leaves(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CertificateInfo>> {
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn create(
    dir: &Path,
    common_name: &str,
    lifetime: Duration,
    now: i64,
) -> Result<Authority, PkiError> {
    let key = KeyPair::generate()?;
    let (not_before, not_after) = validity(now, lifetime);
    let certificate = ca_params(common_name, not_before, not_after).self_signed(&key)?;
    let state = Authority {
        current: inspect(certificate.der())?,
        current_pem: certificate.pem(),
        issuer: certificate,
        key,
        previous: Vec::new(),
        cross: None,
    };
    write(
        &dir.join("ca.key"),
        &state.key.serialize_pem(),
        PRIVATE_FILE_MODE,
    )?;
    write_bundle(dir, &state)?;
    Ok(state)
}

fn load(dir: &Path, now: i64) -> Result<Authority, PkiError> {
    let key_path = dir.join("ca.key");
    let bundle = read(&dir.join("ca.pem"))?;
    let mut certificates = pem_blocks(&bundle)
        .into_iter()
        .map(|pem| Ok((inspect_pem(&pem)?.remove(0), pem)))
        .collect::<Result<Vec<_>, PkiError>>()?
        .into_iter();
    let (current, current_pem) = certificates.next().ok_or_else(|| {
        PkiError::Malformed(format!("{}: no certificate", dir.join("ca.pem").display()))
    })?;
    let pending = dir.join("ca.key.new");
    if pending.exists() {
        let next = KeyPair::from_pem(&read(&pending)?)?;
        if next.public_key_raw() == current.public_key.as_slice() {
            promote(&pending, &key_path)?;
        } else {
            std::fs::remove_file(&pending).map_err(|source| io(&pending, source))?;
        }
    }
    let key = KeyPair::from_pem(&read(&key_path)?)?;
    if key.public_key_raw() != current.public_key.as_slice() {
        return Err(PkiError::Malformed(format!(
            "{} is not the key of the first certificate in {}",
            key_path.display(),
            dir.join("ca.pem").display()
        )));
    }
    let cross_path = dir.join("ca-cross.pem");
    let cross = if cross_path.exists() {
        let pem = read(&cross_path)?;
        let info = inspect_pem(&pem)?.into_iter().next().ok_or_else(|| {
            PkiError::Malformed(format!("{}: no certificate", cross_path.display()))
        })?;
        (info.public_key == current.public_key && info.not_after > now).then_some((info, pem))
    } else {
        None
    };
    Ok(Authority {
        issuer: ca_params(&current.common_name, current.not_before, current.not_after)
            .self_signed(&key)?,
        key,
        current,
        current_pem,
        previous: certificates
            .filter(|(info, _)| info.not_after > now)
            .collect(),
        cross,
    })
}

/// Writes `ca.pem` (the bundle) and `ca-cross.pem` (or removes it) for `state`.
fn write_bundle(dir: &Path, state: &Authority) -> Result<(), PkiError> {
    let mut bundle = state.current_pem.clone();
    for (_, pem) in &state.previous {
        bundle.push_str(pem);
    }
    write(&dir.join("ca.pem"), &bundle, PUBLIC_FILE_MODE)?;
    let cross_path = dir.join("ca-cross.pem");
    match &state.cross {
        Some((_, pem)) => write(&cross_path, pem, PUBLIC_FILE_MODE),
        None => match std::fs::remove_file(&cross_path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(io(&cross_path, error))
            }
            _ => Ok(()),
        },
    }
}

/// The name of the CA after one named `current`: `{base} 2` after `{base}`, `{base} 3` after `{base} 2`.
fn next_common_name(base: &str, current: &str) -> String {
    let generation = current
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    format!("{base} {}", generation + 1)
}

/// `(notBefore, notAfter)` of a certificate issued at `now` for `lifetime`. `notBefore` is set back by a tenth of
/// the lifetime, at most 5 minutes, so that a client whose clock is a little behind accepts a new certificate.
fn validity(now: i64, lifetime: Duration) -> (i64, i64) {
    let lifetime = i64::try_from(lifetime.as_secs())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    (now - (lifetime / 10).min(300), now.saturating_add(lifetime))
}

/// Sets a certificate's validity from Unix seconds (whole seconds: `UTCTime` has no fractions). rcgen's time type
/// is reached from its epoch so that this crate need not depend on the `time` crate.
fn set_validity(params: &mut CertificateParams, not_before: i64, not_after: i64) {
    let at = |unix: i64| Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + at(not_before);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + at(not_after);
}

fn ca_params(common_name: &str, not_before: i64, not_after: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, not_before, not_after);
    params
}

fn san_for(host_name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host_name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host_name
        .try_into()
        .map_err(|_| PkiError::HostName(host_name.to_owned()))?;
    Ok(SanType::DnsName(name))
}

/// The PEM blocks of `text`, each with its armour.
fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let end = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| io(path, source))
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    write_atomically(path, contents.as_bytes(), mode).map_err(|source| io(path, source))
}

/// Renames `pending` over `path` and makes the rename durable.
fn promote(pending: &Path, path: &Path) -> Result<(), PkiError> {
    std::fs::rename(pending, path).map_err(|source| io(path, source))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io(dir, source))
}

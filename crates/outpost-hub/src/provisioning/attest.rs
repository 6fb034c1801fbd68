//! The pure rules of a registration: which enrollment a device's proof belongs to ([`attest`]) and what its
//! registration does ([`plan`]). No storage, no clock of its own: the service reads what they need and does what
//! they say.

use outpost_core::provisioning::{derive_device_key, registration_resource};
use outpost_core::quote::unquote;
use outpost_core::SasToken;
use outpost_pki::client_auth;
use rustls::pki_types::CertificateDer;

use super::model::{
    Attestation, EnrollmentGroup, EnrollmentRef, EnrollmentSettings, IndividualEnrollment,
    InitialTwin, ProvisioningStatus, RegistrationRecord, X509Certificates,
};
use outpost_core::provisioning::RegistrationStatus;

/// What a device presents at CONNECT.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A SAS token for `{idScope}/registrations/{registrationId}`.
    Token(&'a SasToken),
    /// The certificate chain (leaf first) the client presented at the TLS handshake, which proved it holds the
    /// leaf's key.
    Certificate(&'a [CertificateDer<'a>]),
}

/// The keys the device will have in the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    /// Primary.
    pub primary: String,
    /// Secondary.
    pub secondary: String,
}

/// How the registered device will authenticate to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCredentials {
    /// SAS keys: the individual enrollment's, or those derived from the group's.
    Keys(DeviceKeys),
    /// `selfSigned` X.509 with these SHA-256 thumbprints: an individual enrollment's primary and secondary
    /// certificates, or a group member's own leaf certificate.
    Thumbprints {
        /// Primary.
        primary: String,
        /// Secondary, if the enrollment has a second certificate.
        secondary: Option<String>,
    },
}

/// What a successful CONNECT proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The registration id.
    pub registration_id: String,
    /// The enrollment it belongs to.
    pub enrollment: EnrollmentRef,
    /// What the device authenticates with in the hub.
    pub credentials: DeviceCredentials,
}

/// Why a proof was refused (all are CONNACK 5, "not authorized", as DPS refuses them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The token is not for this scope and registration.
    #[error("the token's resource is not {0}")]
    WrongResource(String),
    /// No enrollment of this registration id, and no group whose derived key signed the token.
    #[error("no enrollment matches the registration and its key")]
    NoMatch,
    /// The token is expired or its signature matches no key of the enrollment.
    #[error("the token does not verify against the enrollment's keys")]
    BadSignature,
    /// The proof is a token and the enrollment attests with certificates, or the other way round.
    #[error("the enrollment's attestation is not the kind of proof presented")]
    WrongAttestation,
    /// The certificate's common name is not the registration id.
    #[error("the certificate's common name {found:?} is not the registration id {expected:?}")]
    CommonNameMismatch {
        /// The registration id.
        expected: String,
        /// The leaf's common name.
        found: String,
    },
    /// The certificate does not match the enrollment (thumbprint, chain or validity).
    #[error("the certificate does not match the enrollment: {0}")]
    Certificate(String),
}

/// Finds the enrollment `proof` belongs to: the individual enrollment of `registration_id` when there is one
/// (it takes precedence over groups, as in DPS), else the symmetric-key group whose key, derived for this
/// registration id, signed the token.
///
/// A certificate chain ([`Proof::Certificate`]) must name the registration id as its leaf's common name, and
/// matches an individual X.509 enrollment whose primary or secondary `clientCertificates` has the leaf's
/// thumbprint, or else an X.509 group whose primary or secondary `signingCertificates` the chain verifies to
/// (for client authentication, at `now_unix`).
pub fn attest(
    id_scope: &str,
    registration_id: &str,
    proof: Proof<'_>,
    individual: Option<&IndividualEnrollment>,
    groups: &[EnrollmentGroup],
    now_unix: u64,
) -> Result<Attested, AttestError> {
    let token = match proof {
        Proof::Token(token) => token,
        Proof::Certificate(chain) => {
            return attest_certificate(registration_id, chain, individual, groups, now_unix)
        }
    };
    let expected = registration_resource(id_scope, registration_id);
    let resource = unquote(&token.resource_raw).unwrap_or_default();
    if !resource.eq_ignore_ascii_case(&expected) {
        return Err(AttestError::WrongResource(expected));
    }
    let attested = |enrollment, keys| Attested {
        registration_id: registration_id.to_owned(),
        enrollment,
        credentials: DeviceCredentials::Keys(keys),
    };
    if let Some(enrollment) = individual {
        let Attestation::SymmetricKey { symmetric_key } = &enrollment.settings.attestation else {
            return Err(AttestError::WrongAttestation);
        };
        token
            .verify(
                &[&symmetric_key.primary_key, &symmetric_key.secondary_key],
                now_unix,
            )
            .map_err(|_| AttestError::BadSignature)?;
        return Ok(attested(
            EnrollmentRef::Individual,
            DeviceKeys {
                primary: symmetric_key.primary_key.clone(),
                secondary: symmetric_key.secondary_key.clone(),
            },
        ));
    }
    for group in groups {
        let Attestation::SymmetricKey { symmetric_key } = &group.settings.attestation else {
            continue;
        };
        let (Ok(primary), Ok(secondary)) = (
            derive_device_key(&symmetric_key.primary_key, registration_id),
            derive_device_key(&symmetric_key.secondary_key, registration_id),
        ) else {
            continue;
        };
        if token.verify(&[&primary, &secondary], now_unix).is_ok() {
            return Ok(attested(
                EnrollmentRef::Group(group.enrollment_group_id.clone()),
                DeviceKeys { primary, secondary },
            ));
        }
    }
    Err(AttestError::NoMatch)
}

/// The DER certificates of a primary and optional secondary (PEM that no longer reads is skipped: the service
/// API checked it when the enrollment was written).
fn ders(certificates: Option<&X509Certificates>) -> Vec<CertificateDer<'static>> {
    let Some(certificates) = certificates else {
        return Vec::new();
    };
    std::iter::once(&certificates.primary)
        .chain(&certificates.secondary)
        .filter_map(|c| {
            rustls_pemfile::certs(&mut c.certificate.as_bytes())
                .next()?
                .ok()
        })
        .collect()
}

/// [`attest`] for a certificate chain.
fn attest_certificate(
    registration_id: &str,
    chain: &[CertificateDer<'_>],
    individual: Option<&IndividualEnrollment>,
    groups: &[EnrollmentGroup],
    now_unix: u64,
) -> Result<Attested, AttestError> {
    let leaf = chain.first().ok_or(AttestError::NoMatch)?;
    let info =
        outpost_pki::x509::inspect(leaf).map_err(|e| AttestError::Certificate(e.to_string()))?;
    if info.common_name != registration_id {
        return Err(AttestError::CommonNameMismatch {
            expected: registration_id.to_owned(),
            found: info.common_name,
        });
    }
    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    let sha256 = |der: &[u8]| client_auth::thumbprints(der).sha256;
    if let Some(enrollment) = individual {
        let Attestation::X509 { x509 } = &enrollment.settings.attestation else {
            return Err(AttestError::WrongAttestation);
        };
        let enrolled: Vec<String> = ders(x509.client_certificates.as_ref())
            .iter()
            .map(|der| sha256(der))
            .collect();
        let registered: Vec<&str> = enrolled.iter().map(String::as_str).collect();
        client_auth::verify_self_signed(chain, &registered, now)
            .map_err(|e| AttestError::Certificate(e.to_string()))?;
        let mut enrolled = enrolled.into_iter();
        return Ok(Attested {
            registration_id: registration_id.to_owned(),
            enrollment: EnrollmentRef::Individual,
            credentials: DeviceCredentials::Thumbprints {
                primary: enrolled.next().unwrap_or_default(),
                secondary: enrolled.next(),
            },
        });
    }
    for group in groups {
        let Attestation::X509 { x509 } = &group.settings.attestation else {
            continue;
        };
        let cas = ders(x509.signing_certificates.as_ref());
        if client_auth::verify_ca_signed(chain, &cas, registration_id, now).is_ok() {
            return Ok(Attested {
                registration_id: registration_id.to_owned(),
                enrollment: EnrollmentRef::Group(group.enrollment_group_id.clone()),
                credentials: DeviceCredentials::Thumbprints {
                    primary: sha256(leaf),
                    secondary: None,
                },
            });
        }
    }
    Err(AttestError::NoMatch)
}

/// What a registration does to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The enrollment is disabled: nothing changes; the answer's status is `disabled`.
    Refuse,
    /// Create or update the device, maybe write its twin, answer `assigned` with this substatus.
    Assign {
        /// Create the device, or update its keys and edge capability.
        write_device: bool,
        /// The initial twin to apply, and whether it replaces tags and desired (a reset) or merges.
        twin: Option<(InitialTwin, bool)>,
        /// `initialAssignment`, `deviceDataMigrated` or `deviceDataReset`.
        substatus: &'static str,
    },
}

/// Decides a registration of a device of `settings`, given its last registration and whether its device is
/// still in the hub.
///
/// A first registration (or one whose device was deleted since) creates the device and applies the initial
/// twin (`initialAssignment`). Registering again follows the reprovisioning policy: `migrateDeviceData` keeps
/// the twin (`deviceDataMigrated`), otherwise the initial twin replaces tags and desired properties
/// (`deviceDataReset`); without `updateHubAssignment` the device stays as it is.
pub fn plan(
    settings: &EnrollmentSettings,
    previous: Option<&RegistrationRecord>,
    device_exists: bool,
) -> Plan {
    if settings.provisioning_status == ProvisioningStatus::Disabled {
        return Plan::Refuse;
    }
    let initial = settings.initial_twin.clone();
    let assigned_before =
        previous.is_some_and(|p| p.status == RegistrationStatus::Assigned) && device_exists;
    if !assigned_before {
        return Plan::Assign {
            write_device: true,
            twin: initial.map(|twin| (twin, false)),
            substatus: "initialAssignment",
        };
    }
    let policy = settings.reprovision_policy;
    if !policy.update_hub_assignment {
        return Plan::Assign {
            write_device: false,
            twin: None,
            substatus: "initialAssignment",
        };
    }
    if policy.migrate_device_data {
        Plan::Assign {
            write_device: true,
            twin: None,
            substatus: "deviceDataMigrated",
        }
    } else {
        Plan::Assign {
            write_device: true,
            twin: Some((initial.unwrap_or_default(), true)),
            substatus: "deviceDataReset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioning::model::{
        Capabilities, ReprovisionPolicy, SymmetricKeys, X509Attestation,
    };
    use chrono::Utc;
    use outpost_core::provisioning::registration_token;
    use serde_json::json;

    const SCOPE: &str = "0ne00000001";
    const INDIVIDUAL_KEY: &str = "aW5kaXZpZHVhbCBrZXkgb2YgZGV2aWNlIG9uZQ==";
    const GROUP_KEY: &str = "Z3JvdXAga2V5IG9mIHRoZSBmbGVldCAxMjM0NTY=";
    const OTHER_GROUP_KEY: &str = "YW5vdGhlciBncm91cCBrZXkgMTIzNDU2Nzg5MA==";
    const NOW: u64 = 1_800_000_000;

    fn settings(key: &str) -> EnrollmentSettings {
        EnrollmentSettings {
            attestation: Attestation::SymmetricKey {
                symmetric_key: SymmetricKeys {
                    primary_key: key.into(),
                    secondary_key: key.into(),
                },
            },
            capabilities: Capabilities::default(),
            initial_twin: Some(InitialTwin {
                tags: Some(json!({"site": "a"})),
                properties: None,
            }),
            provisioning_status: ProvisioningStatus::Enabled,
            reprovision_policy: ReprovisionPolicy::default(),
            created_date_time_utc: Utc::now(),
            last_updated_date_time_utc: Utc::now(),
            etag: String::new(),
        }
    }

    fn group(id: &str, key: &str) -> EnrollmentGroup {
        EnrollmentGroup {
            enrollment_group_id: id.into(),
            settings: settings(key),
        }
    }

    fn token(registration: &str, key: &str) -> SasToken {
        SasToken::parse(&registration_token(SCOPE, registration, key, NOW + 3600).unwrap()).unwrap()
    }

    #[test]
    fn a_group_member_proves_the_key_derived_for_its_registration_id() {
        let groups = [group("other", OTHER_GROUP_KEY), group("fleet", GROUP_KEY)];
        let derived = derive_device_key(GROUP_KEY, "sensor-7").unwrap();
        let attested = attest(
            SCOPE,
            "sensor-7",
            Proof::Token(&token("sensor-7", &derived)),
            None,
            &groups,
            NOW,
        )
        .unwrap();
        assert_eq!(attested.enrollment, EnrollmentRef::Group("fleet".into()));
        assert_eq!(
            attested.credentials,
            DeviceCredentials::Keys(DeviceKeys {
                primary: derived.clone(),
                secondary: derived
            })
        );
    }

    #[test]
    fn the_group_key_itself_or_another_members_key_is_refused() {
        let groups = [group("fleet", GROUP_KEY)];
        let raw = token("sensor-7", GROUP_KEY);
        assert_eq!(
            attest(SCOPE, "sensor-7", Proof::Token(&raw), None, &groups, NOW),
            Err(AttestError::NoMatch)
        );
        let other_member = derive_device_key(GROUP_KEY, "sensor-8").unwrap();
        let stolen = token("sensor-7", &other_member);
        assert!(attest(SCOPE, "sensor-7", Proof::Token(&stolen), None, &groups, NOW).is_err());
    }

    #[test]
    fn an_individual_enrollment_takes_precedence_and_needs_its_own_key() {
        let individual = IndividualEnrollment {
            registration_id: "sensor-7".into(),
            device_id: None,
            settings: settings(INDIVIDUAL_KEY),
        };
        let groups = [group("fleet", GROUP_KEY)];
        let own = token("sensor-7", INDIVIDUAL_KEY);
        let attested = attest(
            SCOPE,
            "sensor-7",
            Proof::Token(&own),
            Some(&individual),
            &groups,
            NOW,
        )
        .unwrap();
        assert_eq!(attested.enrollment, EnrollmentRef::Individual);
        let derived = derive_device_key(GROUP_KEY, "sensor-7").unwrap();
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Token(&token("sensor-7", &derived)),
                Some(&individual),
                &groups,
                NOW
            ),
            Err(AttestError::BadSignature)
        );
    }

    #[test]
    fn a_token_for_another_scope_registration_or_expired_is_refused() {
        let individual = IndividualEnrollment {
            registration_id: "sensor-7".into(),
            device_id: None,
            settings: settings(INDIVIDUAL_KEY),
        };
        let for_other = token("sensor-8", INDIVIDUAL_KEY);
        assert!(matches!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Token(&for_other),
                Some(&individual),
                &[],
                NOW
            ),
            Err(AttestError::WrongResource(_))
        ));
        let own = token("sensor-7", INDIVIDUAL_KEY);
        assert!(attest(
            "0ne00000002",
            "sensor-7",
            Proof::Token(&own),
            Some(&individual),
            &[],
            NOW
        )
        .is_err());
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Token(&own),
                Some(&individual),
                &[],
                NOW + 7200
            ),
            Err(AttestError::BadSignature)
        );
    }

    #[test]
    fn an_x509_individual_enrollment_is_not_accepted_with_a_token() {
        let mut x509 = settings(INDIVIDUAL_KEY);
        x509.attestation = Attestation::X509 {
            x509: X509Attestation::default(),
        };
        let individual = IndividualEnrollment {
            registration_id: "sensor-7".into(),
            device_id: None,
            settings: x509,
        };
        let own = token("sensor-7", INDIVIDUAL_KEY);
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Token(&own),
                Some(&individual),
                &[],
                NOW
            ),
            Err(AttestError::WrongAttestation)
        );
    }

    fn x509_settings(client: Option<&str>, signing: Option<&str>) -> EnrollmentSettings {
        let certificates = |pem: &str| X509Certificates {
            primary: crate::provisioning::model::X509Certificate {
                certificate: pem.into(),
            },
            secondary: None,
        };
        let mut x509 = settings(INDIVIDUAL_KEY);
        x509.attestation = Attestation::X509 {
            x509: X509Attestation {
                client_certificates: client.map(certificates),
                signing_certificates: signing.map(certificates),
            },
        };
        x509
    }

    fn params(cn: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
    }

    fn self_signed(cn: &str) -> rcgen::Certificate {
        params(cn)
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
    }

    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = params("Fleet CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (ca.self_signed(&key).unwrap(), key)
    }

    fn signed(cn: &str, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> rcgen::Certificate {
        let mut leaf = params(cn);
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        leaf.signed_by(&rcgen::KeyPair::generate().unwrap(), ca, ca_key)
            .unwrap()
    }

    fn now() -> u64 {
        u64::try_from(Utc::now().timestamp()).unwrap()
    }

    #[test]
    fn an_individual_x509_enrollment_matches_its_certificate_by_thumbprint() {
        let cert = self_signed("sensor-7");
        let individual = IndividualEnrollment {
            registration_id: "sensor-7".into(),
            device_id: None,
            settings: x509_settings(Some(&cert.pem()), None),
        };
        let chain = [cert.der().clone()];
        let attested = attest(
            SCOPE,
            "sensor-7",
            Proof::Certificate(&chain),
            Some(&individual),
            &[],
            now(),
        )
        .unwrap();
        assert_eq!(attested.enrollment, EnrollmentRef::Individual);
        assert_eq!(
            attested.credentials,
            DeviceCredentials::Thumbprints {
                primary: client_auth::thumbprints(cert.der()).sha256,
                secondary: None
            }
        );
        // Another certificate with the same name is not the enrolled one.
        let other = [self_signed("sensor-7").der().clone()];
        assert!(matches!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Certificate(&other),
                Some(&individual),
                &[],
                now()
            ),
            Err(AttestError::Certificate(_))
        ));
        // A token is not accepted for an x509 enrollment, nor a certificate for a symmetric-key one.
        let keyed = IndividualEnrollment {
            registration_id: "sensor-7".into(),
            device_id: None,
            settings: settings(INDIVIDUAL_KEY),
        };
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Certificate(&chain),
                Some(&keyed),
                &[],
                now()
            ),
            Err(AttestError::WrongAttestation)
        );
    }

    #[test]
    fn a_group_member_certificate_chains_to_the_groups_ca_and_names_its_registration() {
        let (fleet_ca, fleet_key) = ca();
        let (other_ca, _) = ca();
        let groups = [
            EnrollmentGroup {
                enrollment_group_id: "other".into(),
                settings: x509_settings(None, Some(&other_ca.pem())),
            },
            EnrollmentGroup {
                enrollment_group_id: "keys".into(),
                settings: settings(GROUP_KEY),
            },
            EnrollmentGroup {
                enrollment_group_id: "fleet".into(),
                settings: x509_settings(None, Some(&fleet_ca.pem())),
            },
        ];
        let leaf = signed("sensor-7", &fleet_ca, &fleet_key);
        let chain = [leaf.der().clone()];
        let attested = attest(
            SCOPE,
            "sensor-7",
            Proof::Certificate(&chain),
            None,
            &groups,
            now(),
        )
        .unwrap();
        assert_eq!(attested.enrollment, EnrollmentRef::Group("fleet".into()));
        assert_eq!(
            attested.credentials,
            DeviceCredentials::Thumbprints {
                primary: client_auth::thumbprints(leaf.der()).sha256,
                secondary: None
            }
        );
        // The name must be the registration id.
        assert!(matches!(
            attest(
                SCOPE,
                "sensor-8",
                Proof::Certificate(&chain),
                None,
                &groups,
                now()
            ),
            Err(AttestError::CommonNameMismatch { .. })
        ));
        // A self-signed certificate, or one of no group's CA, matches nothing.
        let stranger = [self_signed("sensor-7").der().clone()];
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Certificate(&stranger),
                None,
                &groups,
                now()
            ),
            Err(AttestError::NoMatch)
        );
        // Expired (rcgen makes certificates valid until 4096).
        assert_eq!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Certificate(&chain),
                None,
                &groups,
                70_000_000_000
            ),
            Err(AttestError::NoMatch)
        );
        assert!(matches!(
            attest(
                SCOPE,
                "sensor-7",
                Proof::Certificate(&[]),
                None,
                &groups,
                now()
            ),
            Err(AttestError::NoMatch)
        ));
    }

    fn record(status: RegistrationStatus) -> RegistrationRecord {
        RegistrationRecord {
            registration_id: "r".into(),
            enrollment_group_id: None,
            device_id: "r".into(),
            assigned_hub: "hub".into(),
            status,
            substatus: "initialAssignment".into(),
            error_code: None,
            error_message: None,
            created_date_time_utc: Utc::now(),
            last_updated_date_time_utc: Utc::now(),
            etag: "1".into(),
            operation_id: "op".into(),
        }
    }

    #[test]
    fn a_first_registration_creates_the_device_with_its_initial_twin() {
        let plan = plan(&settings(GROUP_KEY), None, false);
        let Plan::Assign {
            write_device,
            twin: Some((twin, replace)),
            substatus,
        } = plan
        else {
            panic!("{plan:?}")
        };
        assert!(write_device && !replace);
        assert_eq!(twin.tags, Some(json!({"site": "a"})));
        assert_eq!(substatus, "initialAssignment");
    }

    #[test]
    fn registering_again_follows_the_reprovisioning_policy() {
        let previous = record(RegistrationStatus::Assigned);
        let mut migrate = settings(GROUP_KEY);
        assert!(matches!(
            plan(&migrate, Some(&previous), true),
            Plan::Assign {
                twin: None,
                substatus: "deviceDataMigrated",
                ..
            }
        ));
        migrate.reprovision_policy.migrate_device_data = false;
        assert!(matches!(
            plan(&migrate, Some(&previous), true),
            Plan::Assign {
                twin: Some((_, true)),
                substatus: "deviceDataReset",
                ..
            }
        ));
        migrate.reprovision_policy.update_hub_assignment = false;
        assert!(matches!(
            plan(&migrate, Some(&previous), true),
            Plan::Assign {
                write_device: false,
                twin: None,
                ..
            }
        ));
        // The device was deleted since: a first assignment again.
        assert!(matches!(
            plan(&migrate, Some(&previous), false),
            Plan::Assign {
                write_device: true,
                twin: Some((_, false)),
                substatus: "initialAssignment"
            }
        ));
    }

    #[test]
    fn a_disabled_enrollment_changes_nothing() {
        let mut disabled = settings(GROUP_KEY);
        disabled.provisioning_status = ProvisioningStatus::Disabled;
        assert_eq!(plan(&disabled, None, false), Plan::Refuse);
        assert_eq!(
            plan(&disabled, Some(&record(RegistrationStatus::Assigned)), true),
            Plan::Refuse
        );
    }
}

//! The pure rules of a registration: which enrollment a device's proof belongs to ([`attest`]) and what its
//! registration does ([`plan`]). No storage, no clock of its own: the service reads what they need and does what
//! they say.

use outpost_core::provisioning::{derive_device_key, registration_resource};
use outpost_core::quote::unquote;
use outpost_core::SasToken;

use super::model::{
    Attestation, EnrollmentGroup, EnrollmentRef, EnrollmentSettings, IndividualEnrollment,
    InitialTwin, ProvisioningStatus, RegistrationRecord,
};
use outpost_core::provisioning::RegistrationStatus;

/// What a device presents at CONNECT. X.509 attestation adds a variant here carrying the TLS client
/// certificate chain (see [`attest`]).
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A SAS token for `{idScope}/registrations/{registrationId}`.
    Token(&'a SasToken),
}

/// The keys the device will have in the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    /// Primary.
    pub primary: String,
    /// Secondary.
    pub secondary: String,
}

/// What a successful CONNECT proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The registration id.
    pub registration_id: String,
    /// The enrollment it belongs to.
    pub enrollment: EnrollmentRef,
    /// The keys the device gets: the individual enrollment's, or those derived from the group's.
    pub keys: DeviceKeys,
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
    /// The enrollment attests with certificates, which registration does not accept yet.
    #[error("the enrollment uses X.509 attestation, which this hub does not accept for registration yet")]
    X509NotSupported,
}

/// Finds the enrollment `proof` belongs to: the individual enrollment of `registration_id` when there is one
/// (it takes precedence over groups, as in DPS), else the symmetric-key group whose key, derived for this
/// registration id, signed the token.
///
/// X.509 attestation plugs in here: a `Proof::Certificate(chain)` matched against an individual enrollment's
/// `clientCertificates` (thumbprint) or a group's `signingCertificates` (the chain leads to it), and the
/// registration id taken from the certificate's common name; [`Attested::keys`] then becomes an enum of keys
/// or thumbprints for the device's authentication.
pub fn attest(
    id_scope: &str,
    registration_id: &str,
    proof: Proof<'_>,
    individual: Option<&IndividualEnrollment>,
    groups: &[EnrollmentGroup],
    now_unix: u64,
) -> Result<Attested, AttestError> {
    let Proof::Token(token) = proof;
    let expected = registration_resource(id_scope, registration_id);
    let resource = unquote(&token.resource_raw).unwrap_or_default();
    if !resource.eq_ignore_ascii_case(&expected) {
        return Err(AttestError::WrongResource(expected));
    }
    let attested = |enrollment, keys| Attested {
        registration_id: registration_id.to_owned(),
        enrollment,
        keys,
    };
    if let Some(enrollment) = individual {
        let Attestation::SymmetricKey { symmetric_key } = &enrollment.settings.attestation else {
            return Err(AttestError::X509NotSupported);
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
        assert_eq!(attested.keys.primary, derived);
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
            Err(AttestError::X509NotSupported)
        );
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

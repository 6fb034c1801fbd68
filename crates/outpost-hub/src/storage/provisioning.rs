//! The provisioning service's tables ([`crate::provisioning`]): individual enrollments by registration id,
//! enrollment groups by id, and the registration record of each registration id (the state DPS's service API
//! shows, and the operation a device polls). Records are JSON in DPS's service API shape.
//!
//! A trait of its own, which [`Tables`](super::Tables) requires, so that each engine keeps it in a file of its
//! own (`sqlite/provisioning.rs`, `postgres/provisioning.rs`).

use crate::provisioning::model::{EnrollmentGroup, IndividualEnrollment, RegistrationRecord};
use crate::store::StorageError;

/// One transaction's view of the provisioning tables.
pub trait ProvisioningTables {
    /// The individual enrollment of a registration id.
    fn individual_enrollment(
        &mut self,
        registration_id: &str,
    ) -> Result<Option<IndividualEnrollment>, StorageError>;
    /// Every individual enrollment, ordered by registration id.
    fn individual_enrollments(&mut self) -> Result<Vec<IndividualEnrollment>, StorageError>;
    /// Inserts or replaces an individual enrollment.
    fn put_individual_enrollment(
        &mut self,
        enrollment: &IndividualEnrollment,
    ) -> Result<(), StorageError>;
    /// Deletes an individual enrollment; whether it existed.
    fn delete_individual_enrollment(&mut self, registration_id: &str)
        -> Result<bool, StorageError>;
    /// One enrollment group.
    fn enrollment_group(&mut self, id: &str) -> Result<Option<EnrollmentGroup>, StorageError>;
    /// Every enrollment group, ordered by id.
    fn enrollment_groups(&mut self) -> Result<Vec<EnrollmentGroup>, StorageError>;
    /// Inserts or replaces an enrollment group.
    fn put_enrollment_group(&mut self, group: &EnrollmentGroup) -> Result<(), StorageError>;
    /// Deletes an enrollment group; whether it existed.
    fn delete_enrollment_group(&mut self, id: &str) -> Result<bool, StorageError>;
    /// The registration record of a registration id.
    fn registration(
        &mut self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StorageError>;
    /// Every registration record, ordered by registration id.
    fn registrations(&mut self) -> Result<Vec<RegistrationRecord>, StorageError>;
    /// Inserts or replaces a registration record.
    fn put_registration(&mut self, record: &RegistrationRecord) -> Result<(), StorageError>;
    /// Deletes a registration record; whether it existed.
    fn delete_registration(&mut self, registration_id: &str) -> Result<bool, StorageError>;
}

//! The provisioning tables in PostgreSQL (see [`crate::storage::provisioning`]).

use super::{json, PgTables};
use crate::provisioning::model::{EnrollmentGroup, IndividualEnrollment, RegistrationRecord};
use crate::storage::provisioning::ProvisioningTables;
use crate::store::StorageError;

impl ProvisioningTables for PgTables<'_, '_> {
    fn individual_enrollment(
        &mut self,
        registration_id: &str,
    ) -> Result<Option<IndividualEnrollment>, StorageError> {
        self.record(
            "SELECT record::text FROM individual_enrollments WHERE registration_id = $1",
            &[&registration_id],
        )
    }

    fn individual_enrollments(&mut self) -> Result<Vec<IndividualEnrollment>, StorageError> {
        self.records(
            "SELECT record::text FROM individual_enrollments ORDER BY registration_id",
            &[],
        )
    }

    fn put_individual_enrollment(
        &mut self,
        enrollment: &IndividualEnrollment,
    ) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO individual_enrollments (registration_id, record) VALUES ($1, $2)
             ON CONFLICT (registration_id) DO UPDATE SET record = excluded.record",
            &[&enrollment.registration_id, &json(enrollment)],
        )?;
        Ok(())
    }

    fn delete_individual_enrollment(
        &mut self,
        registration_id: &str,
    ) -> Result<bool, StorageError> {
        Ok(self.execute(
            "DELETE FROM individual_enrollments WHERE registration_id = $1",
            &[&registration_id],
        )? > 0)
    }

    fn enrollment_group(&mut self, id: &str) -> Result<Option<EnrollmentGroup>, StorageError> {
        self.record(
            "SELECT record::text FROM enrollment_groups WHERE id = $1",
            &[&id],
        )
    }

    fn enrollment_groups(&mut self) -> Result<Vec<EnrollmentGroup>, StorageError> {
        self.records(
            "SELECT record::text FROM enrollment_groups ORDER BY id",
            &[],
        )
    }

    fn put_enrollment_group(&mut self, group: &EnrollmentGroup) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO enrollment_groups (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&group.enrollment_group_id, &json(group)],
        )?;
        Ok(())
    }

    fn delete_enrollment_group(&mut self, id: &str) -> Result<bool, StorageError> {
        Ok(self.execute("DELETE FROM enrollment_groups WHERE id = $1", &[&id])? > 0)
    }

    fn registration(
        &mut self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StorageError> {
        self.record(
            "SELECT record::text FROM registrations WHERE registration_id = $1",
            &[&registration_id],
        )
    }

    fn registrations(&mut self) -> Result<Vec<RegistrationRecord>, StorageError> {
        self.records(
            "SELECT record::text FROM registrations ORDER BY registration_id",
            &[],
        )
    }

    fn put_registration(&mut self, record: &RegistrationRecord) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO registrations (registration_id, record) VALUES ($1, $2)
             ON CONFLICT (registration_id) DO UPDATE SET record = excluded.record",
            &[&record.registration_id, &json(record)],
        )?;
        Ok(())
    }

    fn delete_registration(&mut self, registration_id: &str) -> Result<bool, StorageError> {
        Ok(self.execute(
            "DELETE FROM registrations WHERE registration_id = $1",
            &[&registration_id],
        )? > 0)
    }
}

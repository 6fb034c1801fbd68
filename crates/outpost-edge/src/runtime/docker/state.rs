//! What a container's inspection says about its module instance: the Azure status mapping (AZURE-COMPAT §5.2),
//! exit code, times, image.

use bollard::models::{ContainerInspectResponse, ContainerState, ContainerStateStatusEnum};
use chrono::{DateTime, Utc};

use super::{LABEL_DIGEST, LABEL_MODULE};
use crate::runtime::{InstanceState, InstanceStatus};

/// The instance a container holds, or `None` when it carries no module label (not one of ours).
pub(super) fn instance_state(inspect: &ContainerInspectResponse) -> Option<InstanceState> {
    let config = inspect.config.as_ref()?;
    let labels = config.labels.as_ref()?;
    let name = labels.get(LABEL_MODULE)?.clone();
    let state = inspect.state.clone().unwrap_or_default();
    let (status, exit_code) = status_of(&state);
    Some(InstanceState {
        name,
        digest: labels.get(LABEL_DIGEST).cloned().unwrap_or_default(),
        status,
        exit_code,
        started_at: docker_time(state.started_at.as_deref()),
        exited_at: docker_time(state.finished_at.as_deref()),
        image: config.image.clone().unwrap_or_default(),
        image_id: inspect.image.clone(),
    })
}

/// The module status of a container state, and the exit code when the state has one: `running` → running;
/// `created`, `paused`, `restarting` → stopped; `exited`, `removing` → stopped on exit code 0, failed otherwise;
/// `dead` → dead.
pub(super) fn status_of(state: &ContainerState) -> (InstanceStatus, Option<i64>) {
    let code = state.exit_code.unwrap_or(0);
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => (InstanceStatus::Running, None),
        // A state Docker does not name is taken as "not running".
        Some(
            ContainerStateStatusEnum::CREATED
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::EMPTY,
        )
        | None => (InstanceStatus::Stopped, None),
        Some(ContainerStateStatusEnum::RESTARTING) => (InstanceStatus::Stopped, Some(code)),
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING)
            if code == 0 =>
        {
            (InstanceStatus::Stopped, Some(0))
        }
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING) => {
            (InstanceStatus::Failed, Some(code))
        }
        Some(ContainerStateStatusEnum::DEAD) => (InstanceStatus::Dead, Some(code)),
    }
}

/// A Docker timestamp; Docker's zero time (`0001-01-01T00:00:00Z`, "never") is `None`.
pub(super) fn docker_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(text?)
        .ok()?
        .with_timezone(&Utc);
    (time.timestamp() > 0).then_some(time)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::ContainerConfig;

    use super::*;

    fn state(status: ContainerStateStatusEnum, exit_code: i64) -> ContainerState {
        ContainerState {
            status: Some(status),
            exit_code: Some(exit_code),
            ..Default::default()
        }
    }

    #[test]
    fn container_states_map_as_azure_maps_them() {
        use ContainerStateStatusEnum as S;
        assert_eq!(
            status_of(&state(S::RUNNING, 0)),
            (InstanceStatus::Running, None)
        );
        assert_eq!(status_of(&state(S::CREATED, 0)).0, InstanceStatus::Stopped);
        assert_eq!(status_of(&state(S::PAUSED, 0)).0, InstanceStatus::Stopped);
        assert_eq!(
            status_of(&state(S::RESTARTING, 1)).0,
            InstanceStatus::Stopped
        );
        assert_eq!(
            status_of(&state(S::EXITED, 0)),
            (InstanceStatus::Stopped, Some(0))
        );
        assert_eq!(
            status_of(&state(S::EXITED, 137)),
            (InstanceStatus::Failed, Some(137))
        );
        assert_eq!(
            status_of(&state(S::REMOVING, 2)),
            (InstanceStatus::Failed, Some(2))
        );
        assert_eq!(status_of(&state(S::DEAD, 0)).0, InstanceStatus::Dead);
    }

    #[test]
    fn docker_zero_time_means_never() {
        assert_eq!(docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(docker_time(None), None);
        let t = docker_time(Some("2024-03-01T10:20:30.123456789Z")).unwrap();
        assert_eq!(t.to_rfc3339(), "2024-03-01T10:20:30.123456789+00:00");
    }

    #[test]
    fn an_inspection_gives_name_digest_times_and_image() {
        let inspect = ContainerInspectResponse {
            image: Some("sha256:abc".into()),
            config: Some(ContainerConfig {
                image: Some("127.0.0.1:5000/filter:1".into()),
                labels: Some(HashMap::from([
                    (LABEL_MODULE.to_owned(), "filter".to_owned()),
                    (LABEL_DIGEST.to_owned(), "d1".to_owned()),
                ])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(3),
                started_at: Some("2024-03-01T10:20:30Z".into()),
                finished_at: Some("2024-03-01T10:21:30Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = instance_state(&inspect).unwrap();
        assert_eq!((s.name.as_str(), s.digest.as_str()), ("filter", "d1"));
        assert_eq!((s.status, s.exit_code), (InstanceStatus::Failed, Some(3)));
        assert_eq!(s.image, "127.0.0.1:5000/filter:1");
        assert_eq!(s.image_id.as_deref(), Some("sha256:abc"));
        assert!(s.started_at.is_some() && s.exited_at.is_some());
    }

    #[test]
    fn a_container_without_a_module_label_is_not_an_instance() {
        assert!(instance_state(&ContainerInspectResponse::default()).is_none());
    }
}

//! The hub's errors, each with the IoT Hub error code that callers see.

use crate::store::StorageError;

/// What can go wrong in a hub operation.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The device does not exist.
    #[error("device {0} not found")]
    DeviceNotFound(String),
    /// The module does not exist.
    #[error("module {0} not found")]
    ModuleNotFound(String),
    /// A device with that id exists already.
    #[error("a device with id {0} already exists")]
    DeviceAlreadyExists(String),
    /// A module with that name exists already on the device.
    #[error("a module with id {0} already exists on the device")]
    ModuleAlreadyExists(String),
    /// The job does not exist.
    #[error("job {0} not found")]
    JobNotFound(String),
    /// A job with that id exists already.
    #[error("a job with id {0} already exists")]
    JobAlreadyExists(String),
    /// The configuration does not exist.
    #[error("configuration {0} not found")]
    ConfigurationNotFound(String),
    /// A configuration with that id exists already.
    #[error("a configuration with id {0} already exists")]
    ConfigurationAlreadyExists(String),
    /// The enrollment or enrollment group does not exist.
    #[error("enrollment {0} not found")]
    EnrollmentNotFound(String),
    /// No registration of this registration id is recorded.
    #[error("registration {0} not found")]
    RegistrationNotFound(String),
    /// The `If-Match` etag is stale.
    #[error("the etag in If-Match does not match the current one")]
    PreconditionFailed,
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    ArgumentInvalid(String),
    /// A deployment manifest was refused.
    #[error("invalid configuration content: {0}")]
    InvalidConfigurationContent(String),
    /// The caller's credentials do not allow this.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A direct method's target is not connected or not listening for methods.
    #[error("{0} is not online")]
    DeviceNotOnline(String),
    /// A direct method's target did not answer in time.
    #[error("timed out waiting for the response of {0}")]
    GatewayTimeout(String),
    /// The device's cloud-to-device queue is full.
    #[error("the cloud-to-device queue of {0} is full")]
    QueueFull(String),
    /// A message or payload is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Too many requests of this kind are in progress (IoT Hub's throttling answer).
    #[error("throttled: {0}")]
    Throttled(String),
    /// Storage failed; when the database cannot be reached ([`StorageError::Unavailable`]) callers get 503 and
    /// may retry: the hub recovers when it comes back.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
}

impl From<rusqlite::Error> for HubError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl HubError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::DeviceNotFound(_)
            | Self::ModuleNotFound(_)
            | Self::DeviceNotOnline(_)
            | Self::JobNotFound(_)
            | Self::ConfigurationNotFound(_)
            | Self::EnrollmentNotFound(_)
            | Self::RegistrationNotFound(_) => 404,
            Self::DeviceAlreadyExists(_)
            | Self::ModuleAlreadyExists(_)
            | Self::JobAlreadyExists(_)
            | Self::ConfigurationAlreadyExists(_) => 409,
            Self::PreconditionFailed => 412,
            Self::ArgumentInvalid(_) | Self::InvalidConfigurationContent(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::GatewayTimeout(_) => 504,
            Self::QueueFull(_) => 403,
            Self::TooLarge(_) => 413,
            Self::Throttled(_) => 429,
            Self::Storage(StorageError::Unavailable(_)) => 503,
            Self::Storage(_) => 500,
        }
    }

    /// The IoT Hub error name and number (`DeviceNotFound`, 404001).
    pub fn code(&self) -> (&'static str, u32) {
        match self {
            Self::DeviceNotFound(_) => ("DeviceNotFound", 404_001),
            Self::ModuleNotFound(_) => ("ModuleNotFound", 404_010),
            Self::DeviceNotOnline(_) => ("DeviceNotOnline", 404_103),
            Self::DeviceAlreadyExists(_) => ("DeviceAlreadyExists", 409_001),
            Self::ModuleAlreadyExists(_) => ("ModuleAlreadyExistsOnDevice", 409_301),
            Self::JobNotFound(_) => ("JobNotFound", 404_002),
            Self::JobAlreadyExists(_) => ("JobAlreadyExists", 409_002),
            Self::ConfigurationNotFound(_) => ("ConfigurationNotFound", 404_104),
            Self::ConfigurationAlreadyExists(_) => ("ConfigurationAlreadyExists", 409_004),
            Self::EnrollmentNotFound(_) => ("EnrollmentNotFound", 404_201),
            Self::RegistrationNotFound(_) => ("DeviceRegistrationNotFound", 404_202),
            Self::PreconditionFailed => ("PreconditionFailed", 412_001),
            Self::ArgumentInvalid(_) => ("ArgumentInvalid", 400_004),
            Self::InvalidConfigurationContent(_) => ("InvalidConfigurationContent", 400_004),
            Self::Unauthorized(_) => ("IotHubUnauthorizedAccess", 401_002),
            Self::GatewayTimeout(_) => ("GatewayTimeout", 504_101),
            Self::QueueFull(_) => ("DeviceMaximumQueueDepthExceeded", 403_004),
            Self::TooLarge(_) => ("MessageTooLarge", 413_001),
            Self::Throttled(_) => ("ThrottlingException", 429_001),
            Self::Storage(StorageError::Unavailable(_)) => ("ServiceUnavailable", 503_001),
            Self::Storage(_) => ("ServerError", 500_001),
        }
    }
}

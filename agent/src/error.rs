//! The agent's error kinds and their ttrpc status codes. Module errors convert into
//! `AgentError`; `rpc` turns it into a ttrpc status.
use crate::cgroups::CgroupError;
use crate::container::spec::SpecError;
use crate::mount::PathError;
use crate::process::ProcessError;
use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
        }
    }

    pub fn into_ttrpc(self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), self.to_string()))
    }
}

pub fn invalid(msg: impl std::fmt::Display) -> AgentError {
    AgentError::InvalidArgument(msg.to_string())
}

pub fn internal(msg: impl std::fmt::Display) -> AgentError {
    AgentError::Internal(msg.to_string())
}

impl From<SpecError> for AgentError {
    fn from(e: SpecError) -> Self {
        AgentError::InvalidArgument(e.to_string())
    }
}

impl From<PathError> for AgentError {
    fn from(e: PathError) -> Self {
        AgentError::InvalidArgument(e.to_string())
    }
}

impl From<CgroupError> for AgentError {
    fn from(e: CgroupError) -> Self {
        match e {
            CgroupError::Invalid { .. } => AgentError::InvalidArgument(e.to_string()),
            CgroupError::Controller { .. } => AgentError::FailedPrecondition(e.to_string()),
            _ => AgentError::Internal(e.to_string()),
        }
    }
}

impl From<ProcessError> for AgentError {
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::StdinClosed | ProcessError::NoTty | ProcessError::Exec(_) => {
                AgentError::FailedPrecondition(e.to_string())
            }
            _ => AgentError::Internal(e.to_string()),
        }
    }
}

/// Ids name directories and cgroups: keep them to a safe alphabet.
pub fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(format!("{field}: {id:?} is not a valid id")));
    }
    Ok(())
}

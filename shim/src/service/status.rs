//! The pod's errors as ttrpc statuses containerd shows as they are (containerd-shim's
//! own error type would wrap the message in its enum's debug form).
use crate::pod::PodError;
use crate::sandbox::SandboxError;

pub fn status(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

impl From<PodError> for ttrpc::Error {
    fn from(e: PodError) -> Self {
        use ttrpc::Code;
        let code = match &e {
            PodError::NotFound(_) => Code::NOT_FOUND,
            PodError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            PodError::Precondition(_) => Code::FAILED_PRECONDITION,
            PodError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            PodError::Unimplemented(_) => Code::UNIMPLEMENTED,
            // The agent's own code: NOT_FOUND stays NOT_FOUND for containerd.
            PodError::Agent(a) => a.code,
            PodError::Sandbox(SandboxError::Agent(a)) => a.code,
            PodError::Sandbox(_) => Code::INTERNAL,
        };
        status(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentError;

    #[test]
    fn pod_errors_keep_their_meaning() {
        let cases: Vec<(&str, PodError, ttrpc::Code, &str)> = vec![
            (
                "not found",
                PodError::NotFound("container c1".into()),
                ttrpc::Code::NOT_FOUND,
                "container c1 not found",
            ),
            (
                "agent code kept",
                PodError::Agent(AgentError::new(
                    "StartContainer",
                    ttrpc::Code::NOT_FOUND,
                    "no such file",
                )),
                ttrpc::Code::NOT_FOUND,
                "agent StartContainer: no such file",
            ),
            (
                "one container per VM",
                PodError::Unimplemented("holds one container only".into()),
                ttrpc::Code::UNIMPLEMENTED,
                "holds one container only",
            ),
        ];
        let mut failures = Vec::new();
        for (name, e, code, message) in cases {
            match ttrpc::Error::from(e) {
                ttrpc::Error::RpcStatus(s) if s.code() == code && s.message() == message => {}
                other => failures.push(format!("{name}: got {other:?}")),
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

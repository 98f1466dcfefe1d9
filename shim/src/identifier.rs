//! containerd's identifier rule (github.com/containerd/containerd/identifiers), checked
//! before an id names a path, a VMM argument or a config file: a container id or a pod
//! id from an annotation must not be able to say `..` or `/`.
//!
//! The rule: `^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`, at most 76 characters.

/// containerd's maximum identifier length.
pub const MAX_LENGTH: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("it must not be empty")]
    Empty,
    #[error("it is {0} characters long, more than {MAX_LENGTH}")]
    TooLong(usize),
    #[error(
        "it must be letters and digits, joined by single '.', '_' or '-' (the first bad character is at byte {0})"
    )]
    BadCharacter(usize),
}

/// An id that failed the rule, with what it was and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {id:?} from {origin} is not a valid identifier: {reason}")]
pub struct InvalidId {
    /// "container id", "pod id", …
    pub what: &'static str,
    pub id: String,
    /// Where the id was read: "the create request", "annotation io.kubernetes.cri.sandbox-id", …
    pub origin: String,
    pub reason: IdentifierError,
}

/// Checks `id` against containerd's identifier rule.
pub fn validate(id: &str) -> Result<(), IdentifierError> {
    if id.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if id.len() > MAX_LENGTH {
        return Err(IdentifierError::TooLong(id.len()));
    }
    let is_separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let mut previous_was_separator = true; // so a leading separator is refused
    for (i, b) in id.bytes().enumerate() {
        if b.is_ascii_alphanumeric() {
            previous_was_separator = false;
        } else if is_separator(b) && !previous_was_separator {
            previous_was_separator = true;
        } else {
            return Err(IdentifierError::BadCharacter(i));
        }
    }
    if previous_was_separator {
        return Err(IdentifierError::BadCharacter(id.len() - 1));
    }
    Ok(())
}

/// Checks `id` and names it in the error: `what` it is and the `origin` it came from.
pub fn check(what: &'static str, id: &str, origin: impl Into<String>) -> Result<(), InvalidId> {
    validate(id).map_err(|reason| InvalidId {
        what,
        id: id.to_string(),
        origin: origin.into(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_containerds_rule() {
        let longest = "a".repeat(MAX_LENGTH);
        let too_long = "a".repeat(MAX_LENGTH + 1);
        let cases: Vec<(&str, &str, Result<(), IdentifierError>)> = vec![
            ("one letter", "a", Ok(())),
            ("digits", "0123", Ok(())),
            ("containerd style", "my-pod_1.2", Ok(())),
            (
                "sha-like",
                "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1b2c3d4e5f6",
                Ok(()),
            ),
            ("mixed case", "Pod-A.b_C", Ok(())),
            ("longest", &longest, Ok(())),
            ("empty", "", Err(IdentifierError::Empty)),
            (
                "too long",
                &too_long,
                Err(IdentifierError::TooLong(MAX_LENGTH + 1)),
            ),
            ("dot dot", "..", Err(IdentifierError::BadCharacter(0))),
            ("lone dot", ".", Err(IdentifierError::BadCharacter(0))),
            ("parent path", "../x", Err(IdentifierError::BadCharacter(0))),
            ("slash", "a/b", Err(IdentifierError::BadCharacter(1))),
            ("comma", "a,b", Err(IdentifierError::BadCharacter(1))),
            ("leading dash", "-a", Err(IdentifierError::BadCharacter(0))),
            ("trailing dash", "a-", Err(IdentifierError::BadCharacter(1))),
            (
                "double dot inside",
                "a..b",
                Err(IdentifierError::BadCharacter(2)),
            ),
            (
                "mixed separators",
                "a-_b",
                Err(IdentifierError::BadCharacter(2)),
            ),
            ("space", "a b", Err(IdentifierError::BadCharacter(1))),
            ("nul", "a\0b", Err(IdentifierError::BadCharacter(1))),
            ("newline", "a\n", Err(IdentifierError::BadCharacter(1))),
            ("non-ascii", "pöd", Err(IdentifierError::BadCharacter(1))),
        ];
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(name, id, want)| {
                let got = validate(id);
                (got != want).then(|| format!("{name} ({id:?}): got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn the_error_names_the_id_and_its_origin() {
        let e = check("pod id", "../x", "annotation io.kubernetes.cri.sandbox-id").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "pod id \"../x\" from annotation io.kubernetes.cri.sandbox-id is not a valid identifier: "
            ),
            "{text}"
        );
    }
}

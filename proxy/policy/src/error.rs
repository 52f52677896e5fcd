use std::fmt;

/// One reason a policy was refused: which policy, where in it, and why. Validation gathers
/// all of them so that a user fixes a document in one round trip.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// `namespace/name`, or the source (file, document index) when the name is unknown.
    pub policy: String,
    /// Field path such as `spec.routes[0].timeout.request`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "policy {}: {}", self.policy, self.message)
        } else {
            write!(f, "policy {}: {}: {}", self.policy, self.path, self.message)
        }
    }
}

/// Collects errors for one policy while walking it.
pub(crate) struct Errors<'a> {
    pub policy: String,
    pub out: &'a mut Vec<ValidationError>,
}

impl Errors<'_> {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.out.push(ValidationError { policy: self.policy.clone(), path: path.into(), message: message.into() });
    }
}

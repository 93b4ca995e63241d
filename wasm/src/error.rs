//! Errors the JavaScript API throws: each becomes a JS `Error` whose `name`
//! the wrapper (`js/index.js`) maps to a class (`KeyMismatchError`, …), and
//! whose message a person can act on.

use std::fmt;

use mycel_core::doc::ReplicaError;
use mycel_core::id::{DocId, ParseError};
use mycel_core::node::NodeError;
use wasm_bindgen::JsValue;

/// Why a call of the JS API failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    /// A share or pin link that does not parse.
    Link(ParseError),
    /// The link's key differs from the key this browser holds for the document.
    KeyMismatch(DocId),
    /// The document is not in this repo.
    UnknownDoc(DocId),
    /// IndexedDB refused or failed (quota, private mode, a blocked upgrade).
    Storage(String),
    /// The change could not be applied (a bad path, a value that cannot be stored).
    Change(String),
    /// The relay address is not a WebSocket URL.
    Relay(String),
    /// The repo was closed.
    Closed,
    /// The engine refused an input.
    Engine(String),
}

impl HostError {
    /// The JS error name; `js/index.js` turns it into an instance of the class of that name.
    pub fn name(&self) -> &'static str {
        match self {
            HostError::Link(_) => "LinkError",
            HostError::KeyMismatch(_) => "KeyMismatchError",
            HostError::UnknownDoc(_) => "UnknownDocumentError",
            HostError::Storage(_) => "StorageError",
            HostError::Change(_) => "ChangeError",
            HostError::Relay(_) => "RelayError",
            HostError::Closed => "ClosedError",
            HostError::Engine(_) => "MycelError",
        }
    }

    /// A storage failure, with what JS said (a DOMException, usually).
    pub fn storage(what: &str, e: impl fmt::Debug) -> HostError {
        HostError::Storage(format!("{what}: {e:?}"))
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Link(e) => write!(f, "this is not a valid mycel link: {e}"),
            HostError::KeyMismatch(d) => write!(
                f,
                "the link's key for document {d} differs from the one this browser holds: the link's key is wrong"
            ),
            HostError::UnknownDoc(d) => write!(f, "document {d} is not in this repo"),
            HostError::Storage(e) => write!(f, "the browser's storage (IndexedDB) failed: {e}"),
            HostError::Change(e) => write!(f, "the change was not made: {e}"),
            HostError::Relay(e) => write!(f, "{e}"),
            HostError::Closed => f.write_str("the repo is closed"),
            HostError::Engine(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for HostError {}

impl From<ParseError> for HostError {
    fn from(e: ParseError) -> Self {
        HostError::Link(e)
    }
}

impl From<NodeError> for HostError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::UnknownDoc(d) => HostError::UnknownDoc(d),
            other => HostError::Engine(other.to_string()),
        }
    }
}

impl From<ReplicaError> for HostError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Node(n) => n.into(),
            other => HostError::Change(other.to_string()),
        }
    }
}

impl From<HostError> for JsValue {
    fn from(e: HostError) -> JsValue {
        let err = js_sys::Error::new(&e.to_string());
        err.set_name(e.name());
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_key_says_so() {
        let e = HostError::KeyMismatch(DocId([1; 16]));
        assert_eq!(e.name(), "KeyMismatchError");
        assert!(e.to_string().contains("the link's key is wrong"));
    }

    #[test]
    fn a_bad_link_names_the_problem() {
        let e: HostError = "http://x/"
            .parse::<mycel_core::id::ShareLink>()
            .unwrap_err()
            .into();
        assert_eq!(e.name(), "LinkError");
        assert!(e.to_string().contains("no '#' part"), "{e}");
    }
}

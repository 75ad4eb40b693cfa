//! Import of the original Go project's `db.json`: one JSON object mapping string keys to
//! string values.

use serde_json::Value as Json;
use thiserror::Error;

use super::command::Command;

/// Why a `db.json` could not be imported.
#[derive(Debug, Error)]
pub enum LegacyImportError {
    /// The file is not JSON at all.
    #[error("db.json is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The top level is JSON but not an object.
    #[error("db.json must be a JSON object of string keys to string values, found {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// A value is not a string.
    #[error("db.json value of key {key:?} must be a string, found {found}")]
    ValueNotAString {
        /// The key whose value is wrong.
        key: String,
        /// The JSON type found.
        found: &'static str,
    },
}

/// Parses the original's `db.json` into key, value pairs, sorted by key (a key repeated
/// in the file keeps its last value).
pub fn parse_legacy_db_json(bytes: &[u8]) -> Result<Vec<(String, String)>, LegacyImportError> {
    let object = match serde_json::from_slice::<Json>(bytes)? {
        Json::Object(object) => object,
        other => return Err(LegacyImportError::NotAnObject { found: json_type(&other) }),
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            Json::String(value) => Ok((key, value)),
            other => Err(LegacyImportError::ValueNotAString { key, found: json_type(&other) }),
        })
        .collect()
}

/// The `Import` command that loads `pairs`.
pub fn import_command(pairs: Vec<(String, String)>) -> Command {
    Command::Import { pairs: pairs.into_iter().map(|(key, value)| (key.into(), value.into())).collect() }
}

fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

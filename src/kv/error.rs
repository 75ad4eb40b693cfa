//! Why bytes could not be decoded into a command or a state machine.

use thiserror::Error;

use crate::byte_reader::Truncated;

/// A command or snapshot payload that is not valid. Every variant names the byte offset
/// where decoding stopped, so a corrupt file or entry can be inspected by hand.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated at byte {offset}: field needs {needed} bytes, {available} left")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes that were left.
        available: usize,
    },
    /// The leading format-version byte is not one this build reads.
    #[error("format version {version} at byte {offset} is not one this build reads ({reads}): a newer mmapd wrote it")]
    UnsupportedVersion {
        /// Where the version byte is.
        offset: usize,
        /// The byte found.
        version: u8,
        /// The versions this build reads, e.g. "version 1".
        reads: &'static str,
    },
    /// A tag byte (command kind, condition kind) has no meaning.
    #[error("unknown {what} tag {tag} at byte {offset}")]
    UnknownTag {
        /// Where the tag is.
        offset: usize,
        /// Which tag it is.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A count promises more records than the remaining bytes could hold; nothing was
    /// allocated for it.
    #[error("count {count} at byte {offset} needs more than the {available} bytes left")]
    CountTooLarge {
        /// Where the count is.
        offset: usize,
        /// The count found.
        count: u64,
        /// Bytes that were left after it.
        available: usize,
    },
    /// A field is well-formed but breaks a rule of the format (see `reason`).
    #[error("invalid field at byte {offset}: {reason}")]
    Invalid {
        /// Where the field starts.
        offset: usize,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Bytes follow the end of the encoded value.
    #[error("{count} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

impl From<Truncated> for DecodeError {
    fn from(truncated: Truncated) -> DecodeError {
        DecodeError::Truncated {
            offset: truncated.offset,
            needed: truncated.needed,
            available: truncated.available,
        }
    }
}

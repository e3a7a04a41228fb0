use thiserror::Error;

/// What went wrong while decoding bytes.
///
/// `Incomplete` means "more bytes are needed" (a WAL still being written, a short read);
/// every other variant means the bytes are wrong and will stay wrong.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before a whole header, frame or object was read.
    #[error("incomplete input: need {needed} more bytes")]
    Incomplete {
        /// How many more bytes were expected at least.
        needed: usize,
    },
    /// The bytes do not have the expected structure.
    #[error("corrupt data at byte {offset}: {reason}")]
    Corrupt {
        /// Byte offset, within the input, where the problem was seen.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A checksum stored in the data does not match the data.
    #[error("checksum mismatch ({what}): stored {stored:#x}, computed {computed:#x}")]
    ChecksumMismatch {
        /// Which checksum failed.
        what: &'static str,
        /// The stored value.
        stored: u64,
        /// The value computed from the bytes.
        computed: u64,
    },
    /// The object was written by a newer lifeboat.
    #[error("unsupported format version {0}: upgrade lifeboat to read this replica")]
    UnsupportedVersion(u16),
}

impl Error {
    pub(crate) fn corrupt(offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            offset,
            reason: reason.into(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Incomplete { needed: 1 }
        } else {
            Error::corrupt(0, format!("read failed: {e}"))
        }
    }
}

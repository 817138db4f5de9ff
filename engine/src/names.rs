//! Collection names: the one piece of user input that becomes a path, so it is checked before it
//! touches the file system.

/// The longest collection name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a collection name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The empty string.
    #[error("collection name is empty")]
    Empty,
    /// Over [`MAX_NAME_LEN`] bytes.
    #[error("collection name is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `A-Z a-z 0-9 _ - .`.
    #[error(
        "collection name has {found:?} at byte {at}; use letters, digits, '_', '-' and '.' (not first)"
    )]
    BadChar {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// Starts with `.` or `-` (hidden files, `.` and `..`, and names that look like flags).
    #[error("collection name may not start with {0:?}")]
    BadStart(char),
}

/// Checks that `name` is a valid collection name: 1 to 128 bytes of ASCII letters, digits, `_`, `-`
/// and `.`, not starting with `.` or `-`. Such a name is always a single, ordinary path component
/// (never `.`, `..`, empty, absolute, or containing a separator or NUL) on every platform.
///
/// # Errors
/// A [`NameError`] saying what is wrong.
pub fn validate_collection_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if let Some((at, found)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadChar { found, at });
    }
    let first = name.chars().next().expect("not empty");
    if first == '.' || first == '-' {
        return Err(NameError::BadStart(first));
    }
    Ok(())
}

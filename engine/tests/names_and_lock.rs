//! Collection names become directory names, so hostile ones (`..`, separators, NUL, hidden files,
//! absurd lengths) must be refused with a reason before any path is built; and a database directory
//! must never be opened twice at once, or two writers would interleave one WAL.

use quiver_engine::internals::DirLock;
use quiver_engine::{MAX_NAME_LEN, NameError, validate_collection_name};

#[test]
fn hostile_collection_names_are_refused_with_a_reason() {
    let long = "a".repeat(MAX_NAME_LEN + 1);
    let cases: &[(&str, NameError)] = &[
        ("", NameError::Empty),
        (".", NameError::BadStart('.')),
        ("..", NameError::BadStart('.')),
        (".hidden", NameError::BadStart('.')),
        ("-rf", NameError::BadStart('-')),
        ("a/b", NameError::BadChar { found: '/', at: 1 }),
        ("../etc", NameError::BadChar { found: '/', at: 2 }),
        ("/abs", NameError::BadChar { found: '/', at: 0 }),
        ("a\\b", NameError::BadChar { found: '\\', at: 1 }),
        ("nul\0byte", NameError::BadChar { found: '\0', at: 3 }),
        ("sp ace", NameError::BadChar { found: ' ', at: 2 }),
        ("café", NameError::BadChar { found: 'é', at: 3 }),
        (&long, NameError::TooLong { len: MAX_NAME_LEN + 1 }),
    ];
    for (name, want) in cases {
        assert_eq!(validate_collection_name(name).as_ref(), Err(want), "{name:?}");
        assert!(!validate_collection_name(name).unwrap_err().to_string().is_empty());
    }
    for ok in ["a", "sift-1m", "Glove_6B.50d", "x".repeat(MAX_NAME_LEN).as_str(), "0"] {
        validate_collection_name(ok).unwrap();
    }
}

#[test]
fn a_database_directory_cannot_be_locked_twice() {
    let dir = tempfile::tempdir().unwrap();
    let first = DirLock::acquire(dir.path()).unwrap();
    let err = DirLock::acquire(dir.path()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("already open"), "{err}");
    drop(first);
    DirLock::acquire(dir.path()).unwrap();
}

//! Engine errors as gRPC statuses: which code each failure gets, and how long a message may be.

use std::time::Duration;

use arrow_flight::error::FlightError;
use quiver_engine::{CollectionError, FlushError, ReadError, WriteError};
use tonic::Status;

pub(super) fn invalid(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}

pub(super) fn collection_status(e: CollectionError) -> Status {
    match e {
        CollectionError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        CollectionError::AlreadyExists(n) => {
            Status::already_exists(format!("collection {n:?} already exists"))
        }
        CollectionError::Name(e) => invalid(format!("bad collection name: {e}")),
        CollectionError::Schema(e) => invalid(format!("bad collection schema: {e}")),
        CollectionError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

/// Backpressure gave up (the engine's `max_stall` passed): the client should retry later.
pub(super) fn stalled_status(waited: Duration) -> Status {
    Status::resource_exhausted(format!(
        "background indexing is behind (waited {waited:?}); retry later"
    ))
}

/// A full disk, wherever in an error's chain it shows. After a failed log write the database
/// refuses writes until it is reopened; otherwise the client may retry once space is freed.
pub(super) fn no_space_status(
    e: &(dyn std::error::Error + 'static),
    reopen: bool,
) -> Option<Status> {
    let next = if reopen {
        "free space, then restart the server (the write-ahead log refuses writes after a failed write)"
    } else {
        "retry once space is freed"
    };
    quiver_engine::is_no_space(e).then(|| {
        Status::resource_exhausted(format!(
            "the disk is full (ENOSPC): {e}; nothing acknowledged is lost; {next}"
        ))
    })
}

pub(super) fn write_status(collection: &str, e: WriteError) -> Status {
    let reopen = matches!(e, WriteError::Wal(_) | WriteError::Poisoned(_));
    if let Some(s) = no_space_status(&e, reopen) {
        return s;
    }
    match e {
        WriteError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        WriteError::Batch(b) => invalid(format!("collection {collection:?}: {b}")),
        WriteError::Stalled(d) => stalled_status(d),
        WriteError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

pub(super) fn flush_status(e: FlushError) -> Status {
    let reopen = matches!(e, FlushError::Wal(_) | FlushError::Poisoned(_));
    if let Some(s) = no_space_status(&e, reopen) {
        return s;
    }
    match e {
        FlushError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

pub(super) fn read_status(e: ReadError) -> Status {
    match e {
        ReadError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        ReadError::Query(e) => invalid(e.to_string()),
        ReadError::UnknownColumn(c) => invalid(format!("no column named {c:?}")),
        ReadError::Ids(b) => invalid(b.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// A decoding failure of a client's stream is the client's fault unless it carries a status.
pub(super) fn decode_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => invalid(format!("cannot decode the Arrow stream: {other}")),
    }
}

/// tonic reports a request message that does not parse as protobuf (say, a descriptor path
/// that is not UTF-8) as `INTERNAL`, as gRPC's table of codes has it; it is the client's
/// input, so Quiver answers `INVALID_ARGUMENT`. Applied through [`bounded_status`] where
/// statuses leave the server (the response-header layer in `lib.rs`, and stream items).
pub(super) fn client_decode_status(s: Status) -> Status {
    if s.code() == tonic::Code::Internal && s.message().starts_with(PROTOBUF_DECODE_PREFIX) {
        invalid(format!("the request does not parse: {}", s.message()))
    } else {
        s
    }
}

/// The longest status message sent, in bytes: error messages may quote the client's input
/// (names, filters), and gRPC clients refuse response metadata over a limit (8 KiB by default
/// in gRPC C++, so pyarrow), turning the error into `RESOURCE_EXHAUSTED`.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `s` fit to send: an unparsable request becomes `INVALID_ARGUMENT`
/// ([`client_decode_status`]), and the message is cut to [`MAX_STATUS_MESSAGE`] bytes at a
/// character boundary, saying how much was cut. Details and metadata are dropped.
pub(crate) fn bounded_status(s: Status) -> Status {
    let s = client_decode_status(s);
    let m = s.message();
    if m.len() <= MAX_STATUS_MESSAGE {
        return s;
    }
    let mut cut = MAX_STATUS_MESSAGE - 40;
    while !m.is_char_boundary(cut) {
        cut -= 1;
    }
    Status::new(s.code(), format!("{}… ({} more bytes cut)", &m[..cut], m.len() - cut))
}

/// How tonic's prost codec words a decode failure.
pub(crate) const PROTOBUF_DECODE_PREFIX: &str = "failed to decode Protobuf message";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A full disk was reported as INTERNAL (or, for a flush that waited on failing index
    /// builds, as "background work is behind" after 600 s); it must say ENOSPC, and whether a
    /// retry can succeed without a restart.
    #[test]
    fn a_full_disk_is_resource_exhausted_and_says_whether_to_restart() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        let wal = WriteError::Wal(quiver_engine::WalAppendError::Failed(Arc::new(enospc())));
        let s = write_status("c", wal);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("disk is full") && s.message().contains("restart"), "{s:?}");
        let segment = |source| FlushError::Io { path: "/x".into(), source };
        let s = flush_status(segment(enospc()));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("retry once space is freed"), "{s:?}");
        let s = flush_status(segment(std::io::Error::other("x")));
        assert!(!s.message().contains("disk is full (ENOSPC)"), "only ENOSPC says so");
    }
}

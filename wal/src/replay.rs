//! Streaming the records back: [`Replay`].

use std::path::PathBuf;
use std::sync::Arc;

use quiver_vfs::{OpenMode, Vfs, VfsFile};

use crate::format::{FLAG_ZSTD, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN};
use crate::recovery::SegmentFile;
use crate::{Lsn, ReadError};

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub lsn: Lsn,
    /// The type byte given at append.
    pub kind: u8,
    /// The payload as given at append (decompressed).
    pub payload: Vec<u8>,
}

/// An iterator over records in LSN order, from [`crate::Wal::replay`]. Each record's checksums are
/// verified again as it is read.
pub struct Replay {
    vfs: Arc<dyn Vfs>,
    segments: Vec<SegmentFile>,
    segment: usize,
    file: Option<Box<dyn VfsFile>>,
    offset: u64,
    /// The LSN of the record at `offset`.
    at: Lsn,
    from: Lsn,
    end: Lsn,
    failed: bool,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("at", &self.at)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Replay {
    pub(crate) fn new(
        vfs: Arc<dyn Vfs>,
        segments: Vec<SegmentFile>,
        from: Lsn,
        end: Lsn,
    ) -> Replay {
        // Start in the last segment that begins at or before `from`.
        let segment = segments.iter().rposition(|s| s.first_lsn <= from).unwrap_or(0);
        let at = segments[segment].first_lsn;
        Replay {
            vfs,
            segments,
            segment,
            file: None,
            offset: SEGMENT_HEADER_LEN as u64,
            at,
            from,
            end,
            failed: false,
        }
    }

    fn path(&self) -> PathBuf {
        self.segments[self.segment].path.clone()
    }

    fn corrupt(&self, reason: impl Into<String>) -> ReadError {
        ReadError::Corrupt {
            segment: self.path(),
            offset: self.offset,
            lsn: self.at,
            reason: reason.into(),
        }
    }

    fn read_next(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.at > self.end {
                return Ok(None);
            }
            if self.segment + 1 < self.segments.len()
                && self.segments[self.segment + 1].first_lsn <= self.at
            {
                self.segment += 1;
                self.file = None;
                self.offset = SEGMENT_HEADER_LEN as u64;
                if self.segments[self.segment].first_lsn != self.at {
                    return Err(self.corrupt("segments do not chain"));
                }
            }
            if self.file.is_none() {
                let path = self.path();
                let file = self
                    .vfs
                    .open(&path, OpenMode::Read)
                    .map_err(|source| ReadError::Io { path, source })?;
                self.file = Some(file);
            }
            let file = self.file.as_ref().expect("opened above");
            let mut h = [0u8; RECORD_HEADER_LEN];
            file.read_exact_at(&mut h, self.offset)
                .map_err(|source| ReadError::Io { path: self.path(), source })?;
            let Some(header) = RecordHeader::decode(&h) else {
                return Err(self.corrupt("record header fails its checksum"));
            };
            if header.lsn != self.at {
                return Err(self.corrupt(format!("record has LSN {}", header.lsn)));
            }
            let payload_at = self.offset + RECORD_HEADER_LEN as u64;
            let span = header.span() as u64;
            if header.lsn < self.from {
                self.offset += span;
                self.at += 1;
                continue;
            }
            let mut stored = vec![0u8; header.stored_len as usize];
            file.read_exact_at(&mut stored, payload_at)
                .map_err(|source| ReadError::Io { path: self.path(), source })?;
            if crc32c::crc32c(&stored) != header.payload_crc {
                return Err(self.corrupt("record payload fails its checksum"));
            }
            let payload = if header.flags & FLAG_ZSTD != 0 {
                let raw = zstd::bulk::decompress(&stored, header.raw_len as usize)
                    .map_err(|e| self.corrupt(format!("payload does not decompress: {e}")))?;
                if raw.len() != header.raw_len as usize {
                    return Err(self.corrupt("decompressed payload has the wrong length"));
                }
                raw
            } else {
                stored
            };
            self.offset += span;
            self.at += 1;
            return Ok(Some(Record { lsn: header.lsn, kind: header.kind, payload }));
        }
    }
}

impl Iterator for Replay {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.read_next() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

//! A segment's string ids on disk (`segments/{id:016x}.ids`): what lets a segment of string
//! ids keep only their 128-bit hashes in RAM ([`super::keys`]) and read a row's id back when a
//! search returns it or a merge copies it.
//!
//! ```text
//! header   32 bytes: magic "QVRIDS01", rows (u64), text bytes (u64), the segment file's
//!          CRC-32C (u32), CRC-32C of the 28 bytes before it (u32)
//! entries  12 bytes a row: where its id ends in the text (u64, exclusive), CRC-32C of the id
//! text     the ids' UTF-8 bytes, one after another
//! ```
//!
//! All integers little-endian. The file is derived: its segment's Parquet file holds the same
//! ids. It is written and synced with its segment, before the manifest names the segment; one
//! that is missing, of another length or with a bad header at open is written again from the
//! Parquet ids. A row whose id fails its checksum is reported corrupt, never returned.

use std::path::{Path, PathBuf};

use quiver_wal::vfs::{OpenMode, Vfs, VfsFile};

use crate::segment::SegmentError;

const MAGIC: [u8; 8] = *b"QVRIDS01";
const HEADER: u64 = 32;
const ENTRY: u64 = 12;
/// Bytes of entries and of text buffered while the file is written.
const WRITE_BUFFER: usize = 256 << 10;

/// The file name of segment `id`'s string ids.
pub(super) fn ids_name(id: u64) -> String {
    format!("{id:016x}.ids")
}

/// An open ids file: the handle and its shape; nothing per row in RAM.
#[derive(Debug)]
pub(super) struct IdFile {
    file: Box<dyn VfsFile>,
    path: PathBuf,
    rows: u64,
    text_bytes: u64,
}

impl IdFile {
    /// Writes `ids` (every row's, in row order) as segment `path`'s ids file, bound to the
    /// segment file's checksum `segment_crc`, synced (not its directory), and opens it
    /// ([`IdWriter`] in one call).
    ///
    /// # Errors
    /// As [`IdWriter`]'s.
    #[cfg(test)]
    pub(super) fn write<'a>(
        vfs: &dyn Vfs,
        path: &Path,
        segment_crc: u32,
        ids: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<IdFile, SegmentError> {
        let mut writer = IdWriter::create(vfs, path, ids.len() as u64)?;
        for id in ids {
            writer.push(id)?;
        }
        writer.finish(segment_crc)
    }

    /// Opens segment `path`'s ids file, which must hold `rows` rows and be bound to
    /// `segment_crc`.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if it cannot be read (missing, say); [`SegmentError::Corrupt`] if
    /// its header fails its checksum, names other rows or another segment file, or its length
    /// disagrees.
    pub(super) fn open(
        vfs: &dyn Vfs,
        path: &Path,
        segment_crc: u32,
        rows: u64,
    ) -> Result<IdFile, SegmentError> {
        let io = |source| SegmentError::Io { path: path.to_path_buf(), source };
        let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
        let file = vfs.open(path, OpenMode::Read).map_err(io)?;
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0).map_err(io)?;
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        let crc = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if h[..8] != MAGIC || crc(28) != crc32c::crc32c(&h[..28]) {
            return Err(corrupt("bad magic or header checksum".into()));
        }
        let (n, text_bytes) = (word(8), word(16));
        if n != rows || crc(24) != segment_crc {
            return Err(corrupt(format!(
                "written for {n} rows of a segment file with CRC {:08x}, not {rows} rows with \
                 {segment_crc:08x}",
                crc(24)
            )));
        }
        let len = file.len().map_err(io)?;
        let want = HEADER + ENTRY * rows + text_bytes;
        if len != want {
            return Err(corrupt(format!("{len} bytes, {want} expected")));
        }
        Ok(IdFile { file, path: path.to_path_buf(), rows, text_bytes })
    }

    /// Row `row`'s id, read and checked.
    ///
    /// # Errors
    /// [`SegmentError::Io`] for a failed read; [`SegmentError::Corrupt`] if its entry or bytes
    /// fail their checks.
    ///
    /// # Panics
    /// If `row` is not a row of the file.
    pub(super) fn read(&self, row: u32) -> Result<Box<str>, SegmentError> {
        let r = u64::from(row);
        assert!(r < self.rows, "row {row} of {} ids", self.rows);
        let io = |source| SegmentError::Io { path: self.path.clone(), source };
        let mut e = [0u8; 2 * ENTRY as usize];
        let (at, e) = if r == 0 {
            (HEADER, &mut e[ENTRY as usize..])
        } else {
            (HEADER + ENTRY * (r - 1), &mut e[..])
        };
        self.file.read_exact_at(e, at).map_err(io)?;
        let start = if r == 0 { 0 } else { entry(e).0 };
        let (end, crc) = entry(&e[e.len() - ENTRY as usize..]);
        self.check_span(r, start, end, self.text_bytes)?;
        let mut bytes = vec![0u8; (end - start) as usize];
        let text_at = HEADER + ENTRY * self.rows;
        self.file.read_exact_at(&mut bytes, text_at + start).map_err(io)?;
        self.checked(r, &bytes, crc).map(Box::from)
    }

    /// That row `row`'s id at `start..end` of the text lies within `..limit`.
    fn check_span(&self, row: u64, start: u64, end: u64, limit: u64) -> Result<(), SegmentError> {
        if start > end || end > limit {
            let reason = format!("row {row}: id at {start}..{end} of {}", self.text_bytes);
            return Err(SegmentError::Corrupt { path: self.path.clone(), reason });
        }
        Ok(())
    }

    /// Row `row`'s id `bytes`, if they pass their checksum `crc` and are UTF-8.
    fn checked<'b>(&self, row: u64, bytes: &'b [u8], crc: u32) -> Result<&'b str, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt { path: self.path.clone(), reason };
        if crc32c::crc32c(bytes) != crc {
            return Err(corrupt(format!("row {row}: the id fails its checksum")));
        }
        std::str::from_utf8(bytes).map_err(|_| corrupt(format!("row {row}: the id is not UTF-8")))
    }

    /// Calls `each` with every row's id, in row order, each checked as [`IdFile::read`] checks
    /// it, reading the entries and their text a buffer at a time (a merge copying a segment's
    /// ids: one read a buffer, not two a row).
    ///
    /// # Errors
    /// As [`IdFile::read`], or the first of `each`'s.
    pub(super) fn for_each(
        &self,
        mut each: impl FnMut(&str) -> Result<(), SegmentError>,
    ) -> Result<(), SegmentError> {
        let io = |source| SegmentError::Io { path: self.path.clone(), source };
        let per_read = WRITE_BUFFER as u64 / ENTRY;
        let (mut entries, mut text) = (Vec::new(), Vec::new());
        let mut start = 0u64;
        for first in (0..self.rows).step_by(per_read as usize) {
            let count = per_read.min(self.rows - first);
            entries.resize((count * ENTRY) as usize, 0);
            self.file.read_exact_at(&mut entries, HEADER + ENTRY * first).map_err(io)?;
            let (last_end, _) = entry(&entries[entries.len() - ENTRY as usize..]);
            self.check_span(first, start, last_end, self.text_bytes)?;
            text.resize((last_end - start) as usize, 0);
            self.file.read_exact_at(&mut text, HEADER + ENTRY * self.rows + start).map_err(io)?;
            let chunk_start = start;
            for (k, e) in entries.chunks_exact(ENTRY as usize).enumerate() {
                let row = first + k as u64;
                let (end, crc) = entry(e);
                self.check_span(row, start, end, last_end)?;
                let bytes = &text[(start - chunk_start) as usize..(end - chunk_start) as usize];
                each(self.checked(row, bytes, crc)?)?;
                start = end;
            }
        }
        Ok(())
    }
}

/// Writes an ids file as its ids come, in row order: the entries and the text each through a
/// buffer, the header last (so a file cut short never verifies).
pub(super) struct IdWriter {
    file: Box<dyn VfsFile>,
    path: PathBuf,
    rows: u64,
    pushed: u64,
    entries: Vec<u8>,
    entries_at: u64,
    text: Vec<u8>,
    text_written: u64,
    end: u64,
}

impl IdWriter {
    /// Starts segment `path`'s ids file for `rows` rows, replacing any file of that name.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if the file cannot be made.
    pub(super) fn create(vfs: &dyn Vfs, path: &Path, rows: u64) -> Result<IdWriter, SegmentError> {
        let io = |source| SegmentError::Io { path: path.to_path_buf(), source };
        match vfs.remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let file = vfs.open(path, OpenMode::CreateNew).map_err(io)?;
        Ok(IdWriter {
            file,
            path: path.to_path_buf(),
            rows,
            pushed: 0,
            entries: Vec::with_capacity(WRITE_BUFFER),
            entries_at: HEADER,
            text: Vec::with_capacity(WRITE_BUFFER),
            text_written: 0,
            end: 0,
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
        |source| SegmentError::Io { path: self.path.clone(), source }
    }

    /// Appends the next row's id.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if a buffer's write fails.
    ///
    /// # Panics
    /// If every declared row was pushed already.
    pub(super) fn push(&mut self, id: &str) -> Result<(), SegmentError> {
        assert!(self.pushed < self.rows, "more ids than the {} rows declared", self.rows);
        self.pushed += 1;
        self.end += id.len() as u64;
        self.entries.extend_from_slice(&self.end.to_le_bytes());
        self.entries.extend_from_slice(&crc32c::crc32c(id.as_bytes()).to_le_bytes());
        self.text.extend_from_slice(id.as_bytes());
        if self.entries.len() >= WRITE_BUFFER {
            self.write_entries()?;
        }
        if self.text.len() >= WRITE_BUFFER {
            self.write_text()?;
        }
        Ok(())
    }

    fn write_entries(&mut self) -> Result<(), SegmentError> {
        self.file.write_all_at(&self.entries, self.entries_at).map_err(self.io())?;
        self.entries_at += self.entries.len() as u64;
        self.entries.clear();
        Ok(())
    }

    fn write_text(&mut self) -> Result<(), SegmentError> {
        let at = HEADER + ENTRY * self.rows + self.text_written;
        self.file.write_all_at(&self.text, at).map_err(self.io())?;
        self.text_written += self.text.len() as u64;
        self.text.clear();
        Ok(())
    }

    /// Completes the file, bound to the segment file's checksum `segment_crc`, synced (not its
    /// directory), and opens it.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if a write or the sync fails (the header, written last, then does
    /// not verify).
    ///
    /// # Panics
    /// If fewer ids than declared were pushed.
    pub(super) fn finish(mut self, segment_crc: u32) -> Result<IdFile, SegmentError> {
        assert_eq!(self.pushed, self.rows, "ids pushed against rows declared");
        self.write_entries()?;
        self.write_text()?;
        let h = header(self.rows, self.end, segment_crc);
        self.file.write_all_at(&h, 0).map_err(self.io())?;
        self.file.sync_data().map_err(self.io())?;
        Ok(IdFile { file: self.file, path: self.path, rows: self.rows, text_bytes: self.end })
    }
}

/// An entry's fields: where its id ends in the text, and the id's CRC-32C.
fn entry(e: &[u8]) -> (u64, u32) {
    let end = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
    (end, u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")))
}

fn header(rows: u64, text_bytes: u64, segment_crc: u32) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&rows.to_le_bytes());
    h[16..24].copy_from_slice(&text_bytes.to_le_bytes());
    h[24..28].copy_from_slice(&segment_crc.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vfs() -> (tempfile::TempDir, quiver_wal::vfs::OsVfs) {
        (tempfile::tempdir().unwrap(), quiver_wal::vfs::OsVfs)
    }

    #[test]
    fn ids_read_back_and_a_flipped_byte_or_another_segment_is_caught() {
        let (dir, vfs) = vfs();
        let path = dir.path().join(ids_name(7));
        let ids = ["", "a", "héllo", "a much longer id of forty-odd bytes, say 44"];
        let file = IdFile::write(&vfs, &path, 0xfeed, ids.iter().copied()).unwrap();
        for (r, id) in ids.iter().enumerate() {
            assert_eq!(&*file.read(r as u32).unwrap(), *id);
        }
        let reopened = IdFile::open(&vfs, &path, 0xfeed, 4).unwrap();
        assert_eq!(&*reopened.read(2).unwrap(), "héllo");
        let mut all = Vec::new();
        reopened
            .for_each(|id| {
                all.push(id.to_string());
                Ok(())
            })
            .unwrap();
        assert_eq!(all, ids);
        assert!(matches!(IdFile::open(&vfs, &path, 0xbeef, 4), Err(SegmentError::Corrupt { .. })));
        assert!(matches!(IdFile::open(&vfs, &path, 0xfeed, 5), Err(SegmentError::Corrupt { .. })));

        // A flipped byte of the last id's text: that row is corrupt, the others still read.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let file = IdFile::open(&vfs, &path, 0xfeed, 4).unwrap();
        assert!(matches!(file.read(3), Err(SegmentError::Corrupt { .. })));
        assert_eq!(&*file.read(1).unwrap(), "a");
        assert!(matches!(file.for_each(|_| Ok(())), Err(SegmentError::Corrupt { .. })));
        // A cut file fails at open.
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(IdFile::open(&vfs, &path, 0xfeed, 4), Err(SegmentError::Corrupt { .. })));
    }
}

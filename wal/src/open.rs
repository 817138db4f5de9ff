//! Opening: scanning every segment, deciding the repair, recovering, starting the flusher.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use quiver_vfs::{AlignedBuf, OpenMode, Vfs, VfsFile};

use crate::flusher::Flusher;
use crate::format::{SEGMENT_HEADER_LEN, segment_name};
use crate::recovery::{SegmentFile, SegmentScan, all_zero, scan_segment};
use crate::shared::{Shared, State};
use crate::{Lsn, OpenError, Wal, WalOptions, format, recovery};

/// What [`Wal::open`] found and repaired (or, from [`Wal::scan`], will repair).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Whole records found.
    pub records: u64,
    /// The first LSN in the log.
    pub first_lsn: Lsn,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// Bytes of torn tail cut from the last segment.
    pub torn_bytes_cut: u64,
    /// Whether the last segment's header had never been written and was rewritten.
    pub rewrote_segment_header: bool,
    /// Whether a truncated last segment was cut, as [`WalOptions::cut_truncated_tail`] allows.
    pub truncated_tail_cut: bool,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_path_buf(), source }
}

/// Creates segment `first_lsn` durably: space reserved, header written and synced, directory
/// entry synced.
pub(crate) fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    first_lsn: Lsn,
    segment_bytes: u64,
) -> io::Result<(Box<dyn VfsFile>, PathBuf)> {
    let path = dir.join(segment_name(first_lsn));
    let file = vfs.open(&path, OpenMode::CreateNew)?;
    write_segment_header(file.as_ref(), first_lsn, segment_bytes)?;
    file.sync_data()?;
    vfs.sync_dir(dir)?;
    Ok((file, path))
}

/// Reserves `segment_bytes` for an empty segment file and writes its header, which records the
/// reservation if the file system made one (not synced).
pub(crate) fn write_segment_header(
    file: &dyn VfsFile,
    first_lsn: Lsn,
    segment_bytes: u64,
) -> io::Result<()> {
    // Reserve the whole segment now: appends then write into allocated zeros instead of growing
    // the file (see `VfsFile::allocate`). Unwritten space reads as zeros, which recovery already
    // tells from records; a segment is cut to its records when it is sealed. The header records
    // the reservation so that recovery can tell a truncated file from a torn write.
    file.allocate(segment_bytes)?;
    let reserved = if file.len()? >= segment_bytes { segment_bytes } else { 0 };
    let header = format::SegmentHeader { first_lsn, reserved };
    file.write_all_at(&format::encode_segment_header(header), 0)
}

/// The log as [`Wal::scan`] found it, before any repair: its extent, and what opening will
/// change. Nothing on disk has been touched; [`Recovery::open`] repairs and starts the log.
#[derive(Debug)]
pub struct Recovery {
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) segments: Vec<SegmentFile>,
    pub(crate) next_lsn: Lsn,
    pub(crate) repair: Repair,
    pub(crate) report: RecoveryReport,
}

/// What opening does to the last segment.
#[derive(Debug)]
pub(crate) enum Repair {
    /// No segment exists: create the first.
    Create,
    /// The last segment's header was never completed: write it again.
    RewriteHeader,
    /// The last segment is the active one from `offset`; `cut_to` sets its length (a torn tail
    /// cut, or padding cut inside restored) before its reservation (at least `reserved`) is
    /// made again.
    Tail { offset: u64, cut_to: Option<u64>, reserved: u64 },
}

impl Recovery {
    /// The LSN the first append after opening will get: one past the last whole record.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The first LSN still in the log (1 for a new log).
    #[must_use]
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(1, |s| s.first_lsn)
    }

    /// Whether the directory holds no segment at all (a new log).
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.segments.is_empty()
    }

    /// What the scan found, and the repairs [`Recovery::open`] will make.
    #[must_use]
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Makes the repairs the scan decided (create the first segment, rewrite an unfinished
    /// header, or cut a torn tail), makes what it recovered durable, and starts the flusher.
    ///
    /// # Errors
    /// [`OpenError::Io`].
    pub fn open(self) -> Result<Wal, OpenError> {
        let Recovery { dir, options, mut segments, next_lsn, repair, report } = self;
        let vfs = Arc::clone(&options.vfs);
        vfs.create_dir_all(&dir).map_err(io_err(&dir))?;
        let (file, offset, reserved) = match repair {
            Repair::Create => {
                let (file, path) = create_segment(vfs.as_ref(), &dir, 1, options.segment_bytes)
                    .map_err(io_err(&dir))?;
                segments.push(SegmentFile { first_lsn: 1, path });
                (file, SEGMENT_HEADER_LEN as u64, 0)
            }
            Repair::RewriteHeader => {
                let last = &segments[segments.len() - 1];
                let file = vfs.open(&last.path, OpenMode::ReadWrite).map_err(io_err(&last.path))?;
                file.set_len(0).map_err(io_err(&last.path))?;
                write_segment_header(file.as_ref(), last.first_lsn, options.segment_bytes)
                    .map_err(io_err(&last.path))?;
                (file, SEGMENT_HEADER_LEN as u64, 0)
            }
            Repair::Tail { offset, cut_to, reserved } => {
                let last = &segments[segments.len() - 1];
                let file = vfs.open(&last.path, OpenMode::ReadWrite).map_err(io_err(&last.path))?;
                if let Some(len) = cut_to {
                    file.set_len(len).map_err(io_err(&last.path))?;
                }
                (file, offset, reserved)
            }
        };
        let last_path = segments[segments.len() - 1].path.clone();
        // The active segment is kept at least as long as its recorded reservation, so that a
        // later scan can still tell a truncation from a tear.
        file.allocate(options.segment_bytes.max(reserved)).map_err(io_err(&last_path))?;
        // What recovery returns must be durable before anything is written after it.
        file.sync_data().map_err(io_err(&last_path))?;
        // So must the names: a segment created just before a crash or a failed directory sync is
        // visible now but might not survive the next crash, taking acknowledged records with it.
        vfs.sync_dir(&dir).map_err(io_err(&dir))?;

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                next_lsn,
                acked_lsn: next_lsn - 1,
                durable_lsn: next_lsn - 1,
                ..State::default()
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            acked: Condvar::new(),
            buffers: crossbeam_channel::bounded(options.pooled_buffers.max(1)),
            compressors: crossbeam_channel::bounded(64),
            segments: Mutex::new(segments),
            checkpoint: Mutex::new(()),
            counters: crate::stats::Counters::default(),
            opts: options,
        });
        let mut flusher = Flusher {
            shared: Arc::clone(&shared),
            file,
            offset,
            durable: next_lsn - 1,
            written: next_lsn - 1,
            buf: AlignedBuf::default(),
            head: 0,
            direct: false,
            last_sync: Instant::now(),
            last_group: 0,
            sync_ewma: Duration::ZERO,
        };
        flusher.enter_direct().map_err(io_err(&last_path))?;
        let handle = std::thread::Builder::new()
            .name("quiver-wal-flusher".into())
            .spawn(move || flusher.run())
            .map_err(io_err(&dir))?;
        Ok(Wal { shared, flusher: Some(handle), report })
    }
}

/// Maps a scan's verification failure in `segment` to the open error.
pub(crate) fn scan_error(segment: &Path, c: recovery::Corruption) -> OpenError {
    let segment = segment.to_path_buf();
    match c.damage {
        recovery::Damage::Corrupt(reason) => {
            OpenError::Corrupt { segment, offset: c.offset, lsn: c.lsn, reason }
        }
        recovery::Damage::Truncated { len, reserved } => {
            OpenError::Truncated { segment, offset: c.offset, lsn: c.lsn, len, reserved }
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in directory `dir`: scans every segment, cuts a torn
    /// tail, makes what it recovered durable, and starts the flusher. One process at a time may
    /// open a directory; the caller (the engine) holds the lock that ensures it. The same as
    /// [`Wal::scan`] followed by [`Recovery::open`].
    ///
    /// # Errors
    /// [`OpenError::Corrupt`] if a record fails verification and is not a torn tail (or segments do
    /// not chain); [`OpenError::Truncated`]; [`OpenError::Io`] on I/O errors;
    /// [`OpenError::InvalidOptions`].
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal, OpenError> {
        Wal::scan(dir, options)?.open()
    }

    /// Reads and verifies every segment of the log in `dir` without changing anything, and
    /// decides what opening would repair. A caller that must check the log's extent before
    /// committing to it (the engine checks it reaches its checkpoint) decides on the
    /// [`Recovery`], then calls [`Recovery::open`] or drops it. A missing directory is a new log.
    ///
    /// # Errors
    /// As [`Wal::open`], except that nothing is created or repaired.
    pub fn scan(dir: impl AsRef<Path>, options: WalOptions) -> Result<Recovery, OpenError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let vfs = Arc::clone(&options.vfs);
        let names = match vfs.list_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut segments: Vec<SegmentFile> = names
            .iter()
            .filter_map(|name| {
                format::parse_segment_name(name)
                    .map(|first_lsn| SegmentFile { first_lsn, path: dir.join(name) })
            })
            .collect();
        segments.sort_by_key(|s| s.first_lsn);
        let mut report = RecoveryReport { segments: segments.len(), ..RecoveryReport::default() };
        let Some(first) = segments.first() else {
            report.first_lsn = 1;
            report.next_lsn = 1;
            return Ok(Recovery {
                dir,
                options,
                segments,
                next_lsn: 1,
                repair: Repair::Create,
                report,
            });
        };
        let mut next_lsn = first.first_lsn;
        let mut repair = None;
        for (i, seg) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            if seg.first_lsn != next_lsn {
                return Err(OpenError::Corrupt {
                    segment: seg.path.clone(),
                    offset: 0,
                    lsn: next_lsn,
                    reason: format!(
                        "segment starts at LSN {}, but the log before it ends at LSN {}",
                        seg.first_lsn,
                        next_lsn - 1
                    ),
                });
            }
            let file = vfs.open(&seg.path, OpenMode::Read).map_err(io_err(&seg.path))?;
            let bytes = file.read_to_vec().map_err(io_err(&seg.path))?;
            let scan = match scan_segment(&bytes, seg.first_lsn, is_last, false) {
                Err(c)
                    if options.cut_truncated_tail
                        && matches!(c.damage, recovery::Damage::Truncated { .. }) =>
                {
                    tracing::error!(segment = %seg.path.display(), offset = c.offset, lsn = c.lsn, "WAL: the last segment was truncated inside a record; cutting it there as asked, losing the records from this LSN on");
                    report.truncated_tail_cut = true;
                    scan_segment(&bytes, seg.first_lsn, is_last, true)
                }
                other => other,
            }
            .map_err(|c| scan_error(&seg.path, c))?;
            match scan {
                SegmentScan::TornHeader => {
                    // Creation was cut short before the header was durable: write it again.
                    report.rewrote_segment_header = true;
                    repair = Some(Repair::RewriteHeader);
                }
                SegmentScan::Records { next_lsn: n, valid_len, records } => {
                    report.records += records;
                    next_lsn = n;
                    if is_last {
                        // Past the records: nothing, reserved zeros, or the remains of a write
                        // that never completed (cut, so the next record lands on zeros).
                        let tail = bytes.get(valid_len as usize..).unwrap_or_default();
                        let cut_to = if !all_zero(tail) {
                            report.torn_bytes_cut = tail.len() as u64;
                            tracing::warn!(segment = %seg.path.display(), offset = valid_len, bytes = report.torn_bytes_cut, "WAL: cutting a torn tail");
                            Some(valid_len)
                        } else if (bytes.len() as u64) < valid_len {
                            // Cut inside a record's padding: restore it.
                            Some(valid_len)
                        } else {
                            None
                        };
                        let reserved = bytes
                            .get(..SEGMENT_HEADER_LEN)
                            .and_then(|h| format::decode_segment_header(h.try_into().ok()?).ok())
                            .map_or(0, |h| h.reserved);
                        repair = Some(Repair::Tail { offset: valid_len, cut_to, reserved });
                    }
                }
            }
        }
        report.first_lsn = segments[0].first_lsn;
        report.next_lsn = next_lsn;
        let repair = repair.expect("the last segment is scanned");
        Ok(Recovery { dir, options, segments, next_lsn, repair, report })
    }
}

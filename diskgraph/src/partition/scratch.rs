//! The partitioned build's scratch files, and the directory they live in (removed when the
//! build ends, however it ends):
//!
//! - `members-P`: partition P's members, written by the assign pass, each an id and its stored
//!   row ([`Members`]);
//! - `lists`: every point's home list, one fixed-size record a point, laid out by home partition
//!   ([`ListsFile`], [`home_starts`]);
//! - `guests-H`: the lists built for partition H's members in the other partitions they joined,
//!   each an id and a record ([`append_guests`], [`read_guests`]);
//! - `order-P`: partition P's home members in packed order ([`read_ids`], [`write_ids`]).
//!
//! Member files and guest logs share one layout (an id, then a payload of fixed size), are
//! written by appending and read in one sequential pass, and a file that is not a whole number
//! of entries is refused.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::data::{Row, VectorSet};
use crate::index::IndexError;
use crate::plan::{SCRATCH_STREAM_BYTES, Shape};

use super::SCRATCH_DIR;

/// The scratch directory, removed when dropped.
pub(super) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub(super) fn create(out: &Path) -> Result<Scratch, IndexError> {
        let dir = out.join(SCRATCH_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Scratch { dir })
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove build scratch");
        }
    }
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> IndexError + '_ {
    move |e| IndexError::Io { path: path.to_owned(), source: e }
}

/// Where each partition's home lists begin in the lists file, and the total, last. A point's
/// *block* is its record there, in home-partition order: the home members of partition 0 in
/// ascending id order, then those of partition 1, and so on. A partition's build writes its home
/// members' lists as one dense, ascending stretch, and the merge, which takes one partition's home
/// members at a time, reads them from it. In id order (the first layout) every chunk of the merge
/// read nearly the whole file (on GloVe at 32 MiB, 14 GB of reads for a 200 MB file). The starts
/// are also where each partition's nodes begin in the index, as positions follow home partitions.
pub(super) fn home_starts(home: &[u16], partitions: usize) -> Vec<u32> {
    let mut starts = vec![0u32; partitions + 1];
    for &p in home {
        starts[p as usize + 1] += 1;
    }
    for p in 0..partitions {
        starts[p + 1] += starts[p];
    }
    starts
}

/// The blocks of a partition's home members `ids` (ascending, a subset of `home_sorted`, all of
/// the partition's home members ascending, whose blocks start at `first`): ascending too.
pub(super) fn blocks_of(first: u32, home_sorted: &[u32], ids: &[u32]) -> Vec<u32> {
    ids.iter()
        .map(|id| {
            let rank = home_sorted.binary_search(id).expect("a home member of the partition");
            first + rank as u32
        })
        .collect()
}

pub(super) fn members_name(p: usize) -> String {
    format!("members-{p:05}")
}

pub(super) fn order_name(p: usize) -> String {
    format!("order-{p:05}")
}

/// A partition's members as step 2 wrote them (file `members-{p}`): per member, in ascending id
/// order, its id (`u32`, little-endian) and then its stored row. Steps 3 and 4 read a partition's
/// rows from here, one sequential pass each, instead of gathering them from the input, where a
/// partition's members lie all over the file: the gather's reads, coalesced across the gaps
/// between members, read nearly the whole input for every partition (on SIFT 1M at 96 MiB, 15 GB
/// in the graph phase and 16 GB in the merge, against 1 GB written here).
pub(super) struct Members {
    path: PathBuf,
    reader: BufReader<File>,
    /// One row, the buffer a record's row is read into (aligned for any element type).
    row: VectorSet,
    pub(super) len: usize,
}

impl Members {
    pub(super) fn open(scratch: &Scratch, p: usize, shape: &Shape) -> Result<Members, IndexError> {
        let path = scratch.path(&members_name(p));
        let file = File::open(&path).map_err(io(&path))?;
        let row = VectorSet::zeroed(shape.stored_elem, shape.stored_dim, 1)?;
        let len = whole_entries(&path, &file, row.row_bytes(0).len(), "members")?;
        let reader = BufReader::with_capacity(SCRATCH_STREAM_BYTES, file);
        Ok(Members { path, reader, row, len })
    }

    /// Every member: its id, its row in [`Members::row`] as `each(index, id, row)` sees it.
    pub(super) fn for_each(
        mut self,
        mut each: impl FnMut(usize, u32, Row<'_>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        for i in 0..self.len {
            let id = read_entry(&mut self.reader, &self.path, self.row.row_bytes_mut(0))?;
            each(i, id, self.row.row(0))?;
        }
        Ok(())
    }

    /// The rows of `sorted` (ascending member ids), into rows `0..` of a new set.
    pub(super) fn gather(mut self, sorted: &[u32]) -> Result<VectorSet, IndexError> {
        let mut out = VectorSet::zeroed(self.row.elem(), self.row.dim(), sorted.len())?;
        let mut next = 0;
        for _ in 0..self.len {
            // Read into the next wanted row; a member not wanted is overwritten by the next one.
            let row = if next < sorted.len() {
                out.row_bytes_mut(next)
            } else {
                self.row.row_bytes_mut(0)
            };
            let id = read_entry(&mut self.reader, &self.path, row)?;
            next += usize::from(sorted.get(next) == Some(&id));
        }
        if next != sorted.len() {
            return Err(IndexError::Mismatch(format!(
                "{}: member {} missing",
                self.path.display(),
                sorted[next]
            )));
        }
        Ok(out)
    }
}

pub(super) fn read_ids(path: &Path) -> Result<Vec<u32>, IndexError> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path).map_err(io(path))?)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

pub(super) fn write_ids(path: &Path, ids: impl Iterator<Item = u32>) -> Result<(), IndexError> {
    let mut w = BufWriter::new(File::create(path).map_err(io(path))?);
    for id in ids {
        w.write_all(&id.to_le_bytes()).map_err(io(path))?;
    }
    w.into_inner().map_err(|e| io(path)(e.into_error()))?;
    Ok(())
}

/// Home lists on disk: one record per point, in its block (see [`home_starts`]), `1 + R`
/// little-endian words: the length, then the ids. A record never written reads as an empty list.
/// A partition writes its home members' records in one ascending, dense stretch.
pub(super) struct ListsFile {
    pub(super) path: PathBuf,
    file: File,
    pub(super) record: usize,
}

/// A record of a list: its length, then its ids, padded with zeros to `record` bytes.
pub(super) fn encode_record(list: &[u32], record: usize, out: &mut Vec<u8>) {
    assert!(4 * (1 + list.len()) <= record, "a list of {} over the record", list.len());
    let at = out.len();
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for x in list {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.resize(at + record, 0);
}

impl ListsFile {
    pub(super) fn create(
        path: &Path,
        n: usize,
        max_degree: usize,
    ) -> Result<ListsFile, IndexError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io(path))?;
        let record = 4 * (1 + max_degree);
        file.set_len((n * record) as u64).map_err(io(path))?;
        Ok(ListsFile { path: path.to_owned(), file, record })
    }

    /// A writer of consecutive records from block `first` on.
    pub(super) fn writer_at(&self, first: u32) -> Result<BufWriter<File>, IndexError> {
        let mut file = self.file.try_clone().map_err(io(&self.path))?;
        file.seek(SeekFrom::Start((first as usize * self.record) as u64))
            .map_err(io(&self.path))?;
        Ok(BufWriter::with_capacity(SCRATCH_STREAM_BYTES, file))
    }

    /// The records of `blocks` (ascending, distinct), one after another in `out` at `stride`
    /// bytes apart (at least a record; the rest of each stride is left as it is), nearby blocks
    /// read together (as [`VectorFile::gather`] reads rows).
    pub(super) fn read_many(
        &self,
        blocks: &[u32],
        out: &mut [u8],
        stride: usize,
    ) -> Result<(), IndexError> {
        let record = self.record;
        assert!(stride >= record && out.len() == blocks.len() * stride, "room for every record");
        let mut buf = Vec::new();
        for run in crate::source::coalesced_runs(blocks, record as u64) {
            let first = blocks[run.start] as usize;
            buf.resize((blocks[run.end - 1] as usize - first + 1) * record, 0);
            self.file.read_exact_at(&mut buf, (first * record) as u64).map_err(io(&self.path))?;
            for (k, &b) in blocks[run.clone()].iter().enumerate() {
                let from = (b as usize - first) * record;
                let to = (run.start + k) * stride;
                out[to..to + record].copy_from_slice(&buf[from..from + record]);
            }
        }
        Ok(())
    }

    /// A list from its `record` (as [`encode_record`] wrote it), appended to `out`.
    pub(super) fn parse(
        &self,
        id: u32,
        record: &[u8],
        out: &mut Vec<u32>,
    ) -> Result<(), IndexError> {
        let len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes")) as usize;
        let max = self.record / 4 - 1;
        if len > max {
            return Err(IndexError::Mismatch(format!(
                "{}: point {id} has a list of {len} over R = {max}",
                self.path.display()
            )));
        }
        out.extend(
            record[4..4 + 4 * len]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        Ok(())
    }
}

pub(super) fn guests_name(p: usize) -> String {
    format!("guests-{p:05}")
}

/// The guest lists of partition `home`'s members, built in other partitions: one file per home
/// partition, appended to by each partition that hosts some of its members (their records in
/// ascending id order). Appending keeps every write sequential: written into the members' blocks
/// instead, each guest list dirtied a page of its own, which under a memory cap was evicted and
/// read back to be written (about 4 KiB read and written per 260-byte list).
pub(super) fn append_guests(
    scratch: &Scratch,
    home: usize,
    record: usize,
    members: &[u32],
    list_of: impl Fn(u32, &mut Vec<u32>) -> u32,
) -> Result<(), IndexError> {
    let path = scratch.path(&guests_name(home));
    let file = File::options().create(true).append(true).open(&path).map_err(io(&path))?;
    let mut w = BufWriter::with_capacity(SCRATCH_STREAM_BYTES, file);
    let (mut buf, mut list) = (Vec::with_capacity(4 + record), Vec::new());
    for &member in members {
        let id = list_of(member, &mut list);
        buf.clear();
        buf.extend_from_slice(&id.to_le_bytes());
        encode_record(&list, record, &mut buf);
        w.write_all(&buf).map_err(io(&path))?;
    }
    w.into_inner().map_err(|e| io(&path)(e.into_error()))?;
    Ok(())
}

/// Copies the guest record of each of `sorted`'s members (ascending) from partition `home`'s
/// guest log into `out`, at `stride · k + offset` for member `k`. Members without one keep what
/// `out` held there (zeros: an empty list).
pub(super) fn read_guests(
    scratch: &Scratch,
    home: usize,
    record: usize,
    sorted: &[u32],
    out: &mut [u8],
    (stride, offset): (usize, usize),
) -> Result<(), IndexError> {
    let path = scratch.path(&guests_name(home));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // no guests
        Err(e) => return Err(io(&path)(e)),
    };
    let entries = whole_entries(&path, &file, record, "guest lists")?;
    let mut reader = BufReader::with_capacity(SCRATCH_STREAM_BYTES, file);
    let mut list = vec![0u8; record];
    for _ in 0..entries {
        let id = read_entry(&mut reader, &path, &mut list)?;
        if let Ok(k) = sorted.binary_search(&id) {
            let at = k * stride + offset;
            out[at..at + record].copy_from_slice(&list);
        }
    }
    Ok(())
}

/// Entries in `file` (at `path`) of an id and `payload` bytes each, the layout of the member
/// files and the guest logs; a file that is not a whole number of them (torn or foreign) is
/// refused, never read as garbage.
fn whole_entries(
    path: &Path,
    file: &File,
    payload: usize,
    what: &str,
) -> Result<usize, IndexError> {
    let entry = 4 + payload as u64;
    let bytes = file.metadata().map_err(io(path))?.len();
    if bytes % entry != 0 {
        return Err(IndexError::Mismatch(format!(
            "{}: {bytes} bytes is not a whole number of {entry}-byte {what}",
            path.display()
        )));
    }
    Ok((bytes / entry) as usize)
}

/// The next entry of a member file or guest log: its id, returned, and its payload read into
/// `payload`.
fn read_entry(
    reader: &mut BufReader<File>,
    path: &Path,
    payload: &mut [u8],
) -> Result<u32, IndexError> {
    let mut id = [0u8; 4];
    reader.read_exact(&mut id).map_err(io(path))?;
    reader.read_exact(payload).map_err(io(path))?;
    Ok(u32::from_le_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ElemType;

    /// A shape of `dim`-float rows, for the member files.
    fn floats(dim: usize) -> Shape {
        Shape {
            n: 0,
            stored_dim: dim,
            stored_elem: ElemType::F32,
            input_elem: ElemType::F32,
            dim,
            max_degree: 4,
            slack: 1.3,
            pq_bytes: 1,
            pq_samples: 1,
        }
    }

    fn chop(path: &Path, bytes: u64) {
        let file = File::options().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - bytes).unwrap();
    }

    #[test]
    fn guest_lists_reach_their_members_and_a_torn_guest_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(dir.path()).unwrap();
        let record = 4 * (1 + 4);
        // Partition 3's guests, hosted by two partitions: local members 0..3 are points 5, 9
        // and 12 of the first, local member 0 is point 30 of the second.
        let first = |l: u32, list: &mut Vec<u32>| {
            *list = vec![l + 10, l + 20];
            [5, 9, 12][l as usize]
        };
        append_guests(&scratch, 3, record, &[0, 1, 2], first).unwrap();
        append_guests(&scratch, 3, record, &[0], |_, list: &mut Vec<u32>| {
            *list = vec![7, 8, 9, 6];
            30
        })
        .unwrap();
        let lists = ListsFile::create(&scratch.path("lists"), 1, 4).unwrap();
        let (sorted, stride) = ([9u32, 30, 31], 2 * record);
        let mut out = vec![0u8; sorted.len() * stride];
        read_guests(&scratch, 3, record, &sorted, &mut out, (stride, record)).unwrap();
        let guest = |k: usize| {
            let mut list = Vec::new();
            lists.parse(sorted[k], &out[k * stride + record..(k + 1) * stride], &mut list).unwrap();
            list
        };
        assert_eq!(guest(0), [11, 21]);
        assert_eq!(guest(1), [7, 8, 9, 6]);
        assert!(guest(2).is_empty(), "point 31 has no guest list");
        // A partition nobody hosted members of has no log: no guest lists, no error.
        read_guests(&scratch, 4, record, &sorted, &mut out, (stride, record)).unwrap();

        chop(&scratch.path(&guests_name(3)), 3);
        let torn = read_guests(&scratch, 3, record, &sorted, &mut out, (stride, record));
        assert!(matches!(torn, Err(IndexError::Mismatch(_))), "{torn:?}");
    }

    #[test]
    fn a_partitions_members_come_back_with_their_rows_and_a_torn_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(dir.path()).unwrap();
        let shape = floats(3);
        let path = scratch.path(&members_name(0));
        let mut bytes = Vec::new();
        for id in [2u32, 4, 7, 8] {
            bytes.extend_from_slice(&id.to_le_bytes());
            for j in 0..3 {
                bytes.extend_from_slice(&(id as f32 + j as f32 / 10.0).to_le_bytes());
            }
        }
        std::fs::write(&path, &bytes).unwrap();

        let mut seen = Vec::new();
        Members::open(&scratch, 0, &shape)
            .unwrap()
            .for_each(|i, id, row| {
                seen.push((i, id, row.to_f32()[2]));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, [(0, 2, 2.2), (1, 4, 4.2), (2, 7, 7.2), (3, 8, 8.2)]);
        let rows = Members::open(&scratch, 0, &shape).unwrap().gather(&[4, 8]).unwrap();
        assert_eq!(rows.row(0).to_f32(), [4.0, 4.1, 4.2]);
        assert_eq!(rows.row(1).to_f32(), [8.0, 8.1, 8.2]);
        let missing = Members::open(&scratch, 0, &shape).unwrap().gather(&[4, 5]);
        assert!(matches!(missing, Err(IndexError::Mismatch(_))), "{missing:?}");

        chop(&path, 1);
        let torn = Members::open(&scratch, 0, &shape);
        assert!(matches!(torn, Err(IndexError::Mismatch(_))), "{:?}", torn.err());
    }
}

//! The one step that puts a new segment in place of the rows it copied.
//!
//! A flush copies frozen in-memory rows into a segment, a merge copies the live rows of older
//! segments into one. Both copy without blocking writers, so by the time the new segment is
//! committed some of the rows it copied may have been deleted or upserted again. Both then
//! install it the same way, under the state's write lock, here.

use super::body::DeleteMeta;
use super::model::{Collection, Loc, Segment};

/// What [`install_segment`] did.
#[derive(Debug)]
pub(super) struct Installed {
    /// Rows of the new segment killed because their key had moved on since the copy.
    pub(super) late: usize,
    /// The segments the new one replaced, removed from the collection: (id, deletion file).
    pub(super) replaced: Vec<(u64, Option<DeleteMeta>)>,
}

/// Installs `seg` in collection `c` in place of the rows it copied and of the segments
/// `replaces`. Row `i` of `seg` was copied from the row then at `origins[i]`:
///
/// - a row whose origin is still live takes over its key (the origin goes with the frozen
///   table or the replaced segments; the caller remaps the table);
/// - a row whose origin was killed meanwhile (a delete or upsert applied after the copy was
///   taken) is killed in `seg`, which becomes dirty: that write is in the WAL after the checkpoint
///   the new segment was committed with, so until the next flush persists the deletion file,
///   replay re-applies it;
/// - a row already deleted in `seg` (a deletion carried over before the commit) is skipped.
///
/// The segments in `replaces` are removed and `seg` is placed in id order.
pub(super) fn install_segment(
    c: &mut Collection,
    mut seg: Segment,
    origins: impl IntoIterator<Item = Loc>,
    replaces: &[u64],
) -> Installed {
    let id = seg.meta.id;
    if seg.file.schema() != &c.arrow {
        // Columns were added while the segment was written: it is read with nulls in them.
        seg.file = seg.file.with_schema(&c.arrow);
    }
    let slot = c.take_slot(id);
    seg.slot = slot;
    let mut late = 0;
    let mut copied = 0usize;
    for (row, origin) in origins.into_iter().enumerate() {
        copied += 1;
        if seg.deleted.contains(row) {
            continue;
        }
        if !c.is_live(origin) {
            seg.kill(row as u32);
            late += 1;
        }
    }
    assert_eq!(copied, seg.keys.len(), "segment {id:016x}: an origin for every row");
    let mut replaced = Vec::new();
    c.segments.retain(|s| {
        let gone = replaces.contains(&s.meta.id);
        if gone {
            replaced.push((s.meta.id, s.meta.deletes, s.slot));
        }
        !gone
    });
    let replaced: Vec<_> = replaced
        .into_iter()
        .map(|(sid, deletes, old_slot)| {
            c.free_slot(old_slot, sid);
            (sid, deletes)
        })
        .collect();
    assert_eq!(replaced.len(), replaces.len(), "every replaced segment was there");
    if let Some(index) = &seg.index {
        c.adopt_codebook(index);
    }
    let at = c.segments.partition_point(|s| s.meta.id < id);
    c.segments.insert(at, seg);
    Installed { late, replaced }
}

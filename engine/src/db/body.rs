//! The manifest body: what is durable of the database (collections, their segments and
//! deletion files, the WAL checkpoint), and the names of the files the engine writes.

use serde::{Deserialize, Serialize};

use crate::schema::CollectionSchema;

// ---------------------------------------------------------------------------------------------
// Manifest body
// ---------------------------------------------------------------------------------------------

/// Manifest body format version.
pub(super) const BODY_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) format: u32,
    /// Next id for a collection, segment or deletion file.
    pub(super) next_id: u64,
    /// Every WAL record with an LSN below this is reflected in the segments listed here.
    pub(super) wal_checkpoint: u64,
    pub(super) collections: Vec<CollectionMeta>,
}

impl Body {
    /// Marks segment `sid` of collection `cid` as indexed or not.
    pub(super) fn set_indexed(&mut self, cid: u64, sid: u64, indexed: bool) {
        for c in self.collections.iter_mut().filter(|c| c.id == cid) {
            for s in c.segments.iter_mut().filter(|s| s.id == sid) {
                s.indexed = indexed;
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CollectionMeta {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) schema: CollectionSchema,
    pub(super) segments: Vec<SegmentMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SegmentMeta {
    pub(super) id: u64,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) crc: u32,
    pub(super) deletes: Option<DeleteMeta>,
    pub(super) indexed: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct DeleteMeta {
    pub(super) file: u64,
    pub(super) count: u64,
}

pub(super) fn segment_name(id: u64) -> String {
    format!("{id:016x}.parquet")
}

pub(super) fn delete_name(file: u64) -> String {
    format!("{file:016x}.del")
}

pub(super) fn index_name(id: u64) -> String {
    format!("{id:016x}")
}

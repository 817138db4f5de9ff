//! Ids in RAM: each segment's row → id array with its rows in id order (an id is found by
//! binary search), and a map of the in-memory table's live rows by id. There is no map of every
//! live row of a collection: at 1M rows it alone cost 31 bytes a row.
//!
//! A [`Key`] is 16 bytes (an integer, or a boxed string). Integer ids are kept here as bare
//! `u64`s, so a segment costs 8 bytes a row for its ids and 4 for their order; the table's map
//! packs a place into 8 bytes ([`Loc`]). A segment's string ids stay on disk
//! ([`super::id_file`]): RAM holds a 128-bit keyed hash of each (two SipHash-1-3 with random
//! keys per process: no client can choose ids that collide, and a chance collision among 2^32
//! ids is about 2^-64), 16 bytes a row and 4 for their order, whatever the strings' length; a
//! lookup compares hashes, and a row's id is read from disk only when a search returns it or a
//! merge copies it. Which kind a collection uses is fixed by its schema, so a map or array
//! never mixes them; a key of the other kind is absent from it.
//!
//! Invariant: an id is live in at most one place, the table or one segment. Where it is: the
//! table's map first, then each segment's order, checking the segment's deletion set.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use crate::batch::Key;
use crate::schema::IdType;
use crate::segment::SegmentError;

use super::id_file::{IdFile, IdWriter};
use super::id_filter::IdFilter;
use super::model::Loc;

type Hasher = ahash::RandomState;

/// The in-memory table's live rows by id (their [`Loc::mem`] places). aHash with per-process random keys: about three times cheaper
/// than SipHash on the insert path, still not predictable by a client choosing ids.
#[derive(Debug)]
pub(super) enum KeyMap {
    /// `u64` / `i64` ids (as their 64 bits).
    Int(HashMap<u64, Loc, Hasher>),
    /// String ids.
    Str(HashMap<Box<str>, Loc, Hasher>),
}

impl KeyMap {
    /// An empty map for ids of `id_type`.
    pub(super) fn for_ids(id_type: IdType) -> KeyMap {
        match id_type {
            IdType::Utf8 => KeyMap::Str(HashMap::default()),
            _ => KeyMap::Int(HashMap::default()),
        }
    }

    /// Empties the map and gives its memory back (the table it maps was just flushed: an idle
    /// table costs nothing).
    pub(super) fn clear(&mut self) {
        *self = match self {
            KeyMap::Int(_) => KeyMap::Int(HashMap::default()),
            KeyMap::Str(_) => KeyMap::Str(HashMap::default()),
        };
    }

    pub(super) fn get(&self, k: &Key) -> Option<Loc> {
        match (self, k) {
            (KeyMap::Int(m), Key::Int(i)) => m.get(i).copied(),
            (KeyMap::Str(m), Key::Str(s)) => m.get(s).copied(),
            _ => None,
        }
    }

    /// Maps `k` to `loc`, returning its previous place.
    ///
    /// # Panics
    /// If `k` is not of the map's kind (the schema admits one kind per collection).
    pub(super) fn insert(&mut self, k: &Key, loc: Loc) -> Option<Loc> {
        match (self, k) {
            (KeyMap::Int(m), Key::Int(i)) => m.insert(*i, loc),
            (KeyMap::Str(m), Key::Str(s)) => m.insert(s.clone(), loc),
            (map, k) => panic!("a {k:?} key in a map of {} keys", map.kind()),
        }
    }

    pub(super) fn remove(&mut self, k: &Key) -> Option<Loc> {
        match (self, k) {
            (KeyMap::Int(m), Key::Int(i)) => m.remove(i),
            (KeyMap::Str(m), Key::Str(s)) => m.remove(s),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            KeyMap::Int(_) => "integer",
            KeyMap::Str(_) => "string",
        }
    }

    /// Heap bytes: every slot (`capacity × (slot + 1 control byte)`), plus the strings.
    pub(super) fn resident_bytes(&self) -> usize {
        match self {
            KeyMap::Int(m) => m.capacity() * (size_of::<(u64, Loc)>() + 1),
            KeyMap::Str(m) => {
                m.capacity() * (size_of::<(Box<str>, Loc)>() + 1)
                    + m.keys().map(|s| s.len()).sum::<usize>()
            }
        }
    }
}

/// A segment's id of every row (deleted rows too), and its rows in id order, so an id is
/// found by binary search. Shared (an `Arc` clone) by the views reads take and by merges.
///
/// There is no map from every id of a collection to its place: one cost 17 bytes a slot at
/// hashbrown's load factor, 19.5 to 39 bytes a row depending on where the table's capacity
/// fell (31 at 1M rows), beside the 8 of this array. The order costs 4. A segment never holds
/// two rows with one id (a flush writes the frozen table's live rows, a merge its inputs' live
/// rows, and ids are unique among live rows), so a lookup finds at most one row.
#[derive(Clone, Debug)]
pub(super) struct SegmentKeys {
    ids: Ids,
    /// Row numbers sorted by their id (integers), or by their id's hash (strings).
    by_id: Arc<[u32]>,
    /// Which ids may be here ([`id_hash`]): most lookups of an id not here stop at it.
    filter: Arc<IdFilter>,
}

/// The hash of `k` a lookup takes once for every segment: integers mixed (splitmix64's
/// finalizer), strings by [`str_hash`]. A segment's [`IdFilter`] keeps its low 64 bits.
pub(super) fn id_hash(k: &Key) -> u128 {
    match k {
        Key::Int(i) => u128::from(int_hash(*i)),
        Key::Str(s) => str_hash(s),
    }
}

/// splitmix64's finalizer.
pub(super) fn int_hash(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A string id's 128-bit hash, which stands for it in RAM: two SipHash-1-3 (std's
/// `RandomState`) with keys drawn once per process. Hashes live in RAM only (rebuilt at open
/// from the segment files), so they need not agree across processes, and no client can learn
/// the keys to choose ids that collide.
pub(super) fn str_hash(s: &str) -> u128 {
    static KEYS: OnceLock<(std::hash::RandomState, std::hash::RandomState)> = OnceLock::new();
    let (a, b) =
        KEYS.get_or_init(|| (std::hash::RandomState::new(), std::hash::RandomState::new()));
    (u128::from(a.hash_one(s)) << 64) | u128::from(b.hash_one(s))
}

#[derive(Clone, Debug)]
enum Ids {
    /// Integer ids.
    Int(Arc<[u64]>),
    /// String ids: their hashes ([`str_hash`]) in ascending order (`by_id` names each one's
    /// row), the strings in the segment's ids file. Packed in RAM they cost their bytes and 4
    /// more a row; a boxed string each, 16 bytes and an allocation a row before that.
    Str { hashes: Arc<[u128]>, file: Arc<IdFile> },
}

impl SegmentKeys {
    /// The keys of a segment's rows, in row order: integer arrays when every key is an
    /// integer.
    ///
    /// # Errors
    /// The first key found twice: a segment holds one row per id.
    ///
    /// # Panics
    /// If there are 2^32 rows or more.
    pub(super) fn ints(ints: Vec<u64>) -> Result<SegmentKeys, Key> {
        let rows = u32::try_from(ints.len()).expect("a segment holds fewer than 2^32 rows");
        let mut by_id: Vec<u32> = (0..rows).collect();
        by_id.sort_unstable_by_key(|&r| ints[r as usize]);
        if let Some(w) = by_id.windows(2).find(|w| ints[w[0] as usize] == ints[w[1] as usize]) {
            return Err(Key::Int(ints[w[0] as usize]));
        }
        let mut filter = IdFilter::for_ids(by_id.len());
        for &i in &ints {
            filter.insert(int_hash(i));
        }
        let ids = Ids::Int(ints.into());
        Ok(SegmentKeys { ids, by_id: by_id.into(), filter: Arc::new(filter) })
    }

    /// The keys of a segment of string ids: `hashes` ([`str_hash`] of every row's id, in row
    /// order), the ids themselves in `file`. Sorted in place: 20 bytes a row at most, and a bit
    /// a row while the hashes are put in order.
    ///
    /// # Errors
    /// [`KeysError::Twice`] with the first id found twice (a segment holds one row per id), or
    /// [`KeysError::File`] if that id cannot be read back to say so.
    ///
    /// # Panics
    /// If there are 2^32 rows or more.
    fn from_hashes(mut hashes: Vec<u128>, file: IdFile) -> Result<SegmentKeys, KeysError> {
        let rows = u32::try_from(hashes.len()).expect("a segment holds fewer than 2^32 rows");
        let mut by_id: Vec<u32> = (0..rows).collect();
        by_id.sort_unstable_by_key(|&r| hashes[r as usize]);
        gather_in_place(&mut hashes, &by_id);
        if let Some(at) = hashes.windows(2).position(|w| w[0] == w[1]) {
            let key = file.read(by_id[at]).map_err(KeysError::File)?;
            return Err(KeysError::Twice(Key::Str(key)));
        }
        let mut filter = IdFilter::for_ids(hashes.len());
        for &h in &hashes {
            filter.insert(h as u64);
        }
        let ids = Ids::Str { hashes: hashes.into(), file: Arc::new(file) };
        Ok(SegmentKeys { ids, by_id: by_id.into(), filter: Arc::new(filter) })
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Row `row`'s key (a string id is read from disk).
    ///
    /// # Errors
    /// A string id that cannot be read, or fails its checksum.
    pub(super) fn key(&self, row: usize) -> Result<Key, SegmentError> {
        match &self.ids {
            Ids::Int(k) => Ok(Key::Int(k[row])),
            Ids::Str { file, .. } => file.read(row as u32).map(Key::Str),
        }
    }

    /// Pushes every row's key, in row order, to `out` (string ids read from disk in order, a
    /// buffer at a time).
    ///
    /// # Errors
    /// As [`SegmentKeys::key`], or `out`'s push.
    pub(super) fn push_all(&self, out: &mut KeysBuilder) -> Result<(), SegmentError> {
        match &self.ids {
            Ids::Int(ints) => ints.iter().try_for_each(|&i| out.push(&Key::Int(i))),
            Ids::Str { file, .. } => file.for_each(|id| out.push_str(id)),
        }
    }

    /// The row holding `k`, deleted or not; `None` for a key not here (or of the other kind).
    #[cfg(test)]
    pub(super) fn find(&self, k: &Key) -> Option<u32> {
        self.find_hashed(k, id_hash(k))
    }

    /// [`SegmentKeys::find`] with `k`'s [`id_hash`] already taken (one hash for every segment).
    /// Reads nothing from disk: string ids are compared by their hashes.
    pub(super) fn find_hashed(&self, k: &Key, hash: u128) -> Option<u32> {
        if !self.filter.may_contain(hash as u64) {
            return None;
        }
        let at = match (&self.ids, k) {
            (Ids::Int(ids), Key::Int(i)) => {
                self.by_id.binary_search_by(|&r| ids[r as usize].cmp(i))
            }
            (Ids::Str { hashes, .. }, Key::Str(_)) => hashes.binary_search(&hash),
            _ => return None,
        };
        at.ok().map(|at| self.by_id[at])
    }

    /// The first id both segments hold in rows neither has deleted (`live_a`, `live_b` say which
    /// rows are live), by one merge of their id (or id hash) orders.
    ///
    /// # Errors
    /// The shared string id cannot be read back.
    pub(super) fn first_shared_live(
        &self,
        live_a: impl Fn(u32) -> bool,
        other: &SegmentKeys,
        live_b: impl Fn(u32) -> bool,
    ) -> Result<Option<Key>, SegmentError> {
        let (mut i, mut j) = (0, 0);
        while i < self.by_id.len() && j < other.by_id.len() {
            let (ra, rb) = (self.by_id[i], other.by_id[j]);
            match self.ids.cmp_sorted(i, &other.ids, j, &self.by_id, &other.by_id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if live_a(ra) && live_b(rb) {
                        return self.key(ra as usize).map(Some);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(None)
    }

    /// Heap bytes: the ids (8 bytes a row) or their hashes (16), the order (4 bytes a row) and
    /// the filter (1.25). String ids themselves are on disk.
    pub(super) fn resident_bytes(&self) -> usize {
        let order = self.by_id.len() * size_of::<u32>();
        order
            + self.filter.bytes()
            + match &self.ids {
                Ids::Int(k) => k.len() * size_of::<u64>(),
                Ids::Str { hashes, .. } => hashes.len() * size_of::<u128>(),
            }
    }
}

impl Ids {
    /// The `i`-th id of this segment's order against the `j`-th of `other`'s (`by_a`, `by_b`
    /// being the orders): integers by value, strings by hash (the order both are sorted in).
    fn cmp_sorted(
        &self,
        i: usize,
        other: &Ids,
        j: usize,
        by_a: &[u32],
        by_b: &[u32],
    ) -> std::cmp::Ordering {
        match (self, other) {
            (Ids::Int(x), Ids::Int(y)) => x[by_a[i] as usize].cmp(&y[by_b[j] as usize]),
            (Ids::Str { hashes: x, .. }, Ids::Str { hashes: y, .. }) => x[i].cmp(&y[j]),
            (Ids::Int(_), Ids::Str { .. }) => std::cmp::Ordering::Less,
            (Ids::Str { .. }, Ids::Int(_)) => std::cmp::Ordering::Greater,
        }
    }

    fn len(&self) -> usize {
        match self {
            Ids::Int(k) => k.len(),
            Ids::Str { hashes, .. } => hashes.len(),
        }
    }
}

/// Why a segment's keys could not be made.
#[derive(Debug)]
pub(super) enum KeysError {
    /// A key found twice (a segment holds one row per id).
    Twice(Key),
    /// The ids file could not be written or read.
    File(SegmentError),
}

/// Makes a segment's keys as its ids come, in row order (a flush's table, a merge's inputs, a
/// segment file read at open), never holding them all as [`Key`]s: integers gathered, string
/// ids hashed and written to the segment's ids file unless it already holds them.
pub(super) enum KeysBuilder {
    Int(Vec<u64>),
    Str { hashes: Vec<u128>, file: StrIds },
}

/// Where a [`KeysBuilder`]'s string ids go.
pub(super) enum StrIds {
    /// Written as they come.
    Writing(IdWriter),
    /// Already in the segment's ids file (verified at open).
    Held(IdFile),
}

impl KeysBuilder {
    /// A builder for `rows` ids of `id_type`; string ids go to the ids file at `ids_path`. With
    /// `reuse` (the segment file's checksum, for a segment opened again), an existing ids file
    /// that verifies is kept; one that does not (missing, cut, another segment's) is written
    /// again, as it always is without.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if the ids file cannot be made.
    pub(super) fn new(
        vfs: &dyn quiver_wal::vfs::Vfs,
        ids_path: &std::path::Path,
        id_type: IdType,
        rows: u64,
        reuse: Option<u32>,
    ) -> Result<KeysBuilder, SegmentError> {
        if id_type != IdType::Utf8 {
            return Ok(KeysBuilder::Int(Vec::with_capacity(rows as usize)));
        }
        let held = match reuse.map(|crc| IdFile::open(vfs, ids_path, crc, rows)) {
            Some(Ok(file)) => Some(file),
            Some(Err(e)) => {
                tracing::warn!("{e}: writing the segment's ids file again");
                None
            }
            None => None,
        };
        let file = match held {
            Some(file) => StrIds::Held(file),
            None => StrIds::Writing(IdWriter::create(vfs, ids_path, rows)?),
        };
        Ok(KeysBuilder::Str { hashes: Vec::with_capacity(rows as usize), file })
    }

    /// Adds the next row's key.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if writing the ids file fails.
    ///
    /// # Panics
    /// If `k` is not of the builder's kind (the schema admits one kind per collection).
    pub(super) fn push(&mut self, k: &Key) -> Result<(), SegmentError> {
        match (self, k) {
            (KeysBuilder::Int(ints), Key::Int(i)) => ints.push(*i),
            (out, Key::Str(s)) => out.push_str(s)?,
            (_, k) => panic!("a {k:?} key among ids of the other kind"),
        }
        Ok(())
    }

    /// Adds the next row's string id, without making its [`Key`].
    ///
    /// # Errors
    /// As [`KeysBuilder::push`].
    ///
    /// # Panics
    /// If the builder is for integer ids.
    pub(super) fn push_str(&mut self, s: &str) -> Result<(), SegmentError> {
        let KeysBuilder::Str { hashes, file } = self else {
            panic!("a string id among integer ids");
        };
        hashes.push(str_hash(s));
        if let StrIds::Writing(w) = file {
            w.push(s)?;
        }
        Ok(())
    }

    /// Keys pushed so far.
    pub(super) fn len(&self) -> usize {
        match self {
            KeysBuilder::Int(ints) => ints.len(),
            KeysBuilder::Str { hashes, .. } => hashes.len(),
        }
    }

    /// The segment's keys; a written ids file is completed, bound to the segment file's
    /// checksum `segment_crc`.
    ///
    /// # Errors
    /// [`KeysError::Twice`] for an id found twice; [`KeysError::File`] if the ids file cannot
    /// be completed.
    pub(super) fn finish(self, segment_crc: u32) -> Result<SegmentKeys, KeysError> {
        match self {
            KeysBuilder::Int(ints) => SegmentKeys::ints(ints).map_err(KeysError::Twice),
            KeysBuilder::Str { hashes, file } => {
                let file = match file {
                    StrIds::Writing(w) => w.finish(segment_crc).map_err(KeysError::File)?,
                    StrIds::Held(file) => file,
                };
                SegmentKeys::from_hashes(hashes, file)
            }
        }
    }
}

/// Puts `values` in the order `order` gives (`values[i]` becomes the old `values[order[i]]`),
/// in place, following the permutation's cycles with a bit a position to mark those done.
fn gather_in_place(values: &mut [u128], order: &[u32]) {
    assert_eq!(values.len(), order.len(), "a position for every value");
    let mut done = vec![0u64; values.len().div_ceil(64)];
    for start in 0..values.len() {
        if done[start / 64] & (1 << (start % 64)) != 0 {
            continue;
        }
        let first = values[start];
        let mut at = start;
        loop {
            done[at / 64] |= 1 << (at % 64);
            let from = order[at] as usize;
            if from == start {
                values[at] = first;
                break;
            }
            values[at] = values[from];
            at = from;
        }
    }
}

/// Heap bytes of `keys`' strings (integer keys have none).
pub(super) fn key_heap_bytes(keys: &[Key]) -> usize {
    keys.iter()
        .map(|k| match k {
            Key::Int(_) => 0,
            Key::Str(s) => s.len(),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_cost_twelve_bytes_a_row_and_a_key_of_the_other_kind_is_absent() {
        let ints: Vec<u64> = (0..1000u64).map(|i| i * 7919 % 1000).collect();
        let keys: Vec<Key> = ints.iter().map(|&i| Key::Int(i)).collect();
        let seg = SegmentKeys::ints(ints).unwrap();
        assert!(matches!(seg.ids, Ids::Int(_)));
        assert_eq!(
            seg.resident_bytes(),
            12_000 + 1_280,
            "8 for the id, 4 for its place in id order, 1.25 for the filter"
        );
        let all: Vec<Key> = (0..keys.len()).map(|r| seg.key(r).unwrap()).collect();
        assert_eq!(all, keys);
        for (r, k) in keys.iter().enumerate() {
            assert_eq!(seg.find(k), Some(r as u32));
        }
        assert_eq!(seg.find(&Key::Int(1000)), None);
        assert_eq!(seg.find(&Key::Str("5".into())), None);

        let mut map = KeyMap::for_ids(IdType::U64);
        assert_eq!(map.insert(&Key::Int(5), Loc::mem(7)), None);
        assert_eq!(map.get(&Key::Int(5)), Some(Loc::mem(7)));
        assert_eq!(map.get(&Key::Str("5".into())), None);
        assert_eq!(map.remove(&Key::Str("5".into())), None);
        let KeyMap::Int(m) = &map else { panic!("an integer map") };
        assert_eq!(size_of::<(u64, Loc)>(), 16, "a slot: the id and its place, packed");
        assert_eq!(map.resident_bytes(), m.capacity() * 17);
    }

    /// String ids of `strs`, their file in `dir`.
    fn string_keys(dir: &std::path::Path, strs: &[&str]) -> Result<SegmentKeys, Key> {
        let path = dir.join(super::super::id_file::ids_name(1));
        let vfs = quiver_wal::vfs::OsVfs;
        let rows = strs.len() as u64;
        let mut builder = KeysBuilder::new(&vfs, &path, IdType::Utf8, rows, None).unwrap();
        for s in strs {
            builder.push(&Key::Str((*s).into())).unwrap();
        }
        builder.finish(0).map_err(|e| match e {
            KeysError::Twice(k) => k,
            KeysError::File(e) => panic!("{e}"),
        })
    }

    #[test]
    fn a_permutation_gathered_in_place_matches_one_gathered_into_a_copy() {
        let values: Vec<u128> = (0..1000u128).map(|i| i * i * 7 + 3).collect();
        let mut order: Vec<u32> = (0..1000).collect();
        order.sort_unstable_by_key(|&i| (i * 7919) % 1000);
        let copy: Vec<u128> = order.iter().map(|&i| values[i as usize]).collect();
        let mut in_place = values.clone();
        gather_in_place(&mut in_place, &order);
        assert_eq!(in_place, copy);
    }

    #[test]
    fn string_ids_cost_their_hash_and_order_whatever_their_length_and_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let long = "an id of sixty-four bytes, as a URL or a document path might be!";
        let strs = ["bb", "a", long];
        let seg = string_keys(dir.path(), &strs).unwrap();
        assert_eq!(seg.resident_bytes(), 3 * (16 + 4) + 32, "16 for its hash, 4 for its order");
        for (r, s) in strs.iter().enumerate() {
            let k = Key::Str((*s).into());
            assert_eq!(seg.key(r).unwrap(), k);
            assert_eq!(seg.find(&k), Some(r as u32));
        }
        assert_eq!(seg.find(&Key::Str("b".into())), None);
        assert_eq!(seg.find(&Key::Int(3)), None);
        let twice = string_keys(dir.path(), &["x", "y", "x"]).unwrap_err();
        assert_eq!(twice, Key::Str("x".into()));
        let dir_b = tempfile::tempdir().unwrap();
        let other = string_keys(dir_b.path(), &["q", "a"]).unwrap();
        assert_eq!(
            seg.first_shared_live(|_| true, &other, |_| true).unwrap(),
            Some(Key::Str("a".into()))
        );
    }

    #[test]
    fn a_segment_holding_an_id_twice_is_refused() {
        let keys = vec![3u64, 9, 4, 9];
        assert_eq!(SegmentKeys::ints(keys).unwrap_err(), Key::Int(9));
    }

    #[test]
    fn two_segments_sharing_a_live_id_are_found_and_a_dead_copy_is_not_counted() {
        let a = SegmentKeys::ints(vec![1, 5, 9, 12]).unwrap();
        let b = SegmentKeys::ints(vec![12, 2, 5]).unwrap();
        assert_eq!(a.first_shared_live(|_| true, &b, |_| true).unwrap(), Some(Key::Int(5)));
        // Row 1 of `a` (id 5) is deleted: 12 is the first shared live id.
        assert_eq!(a.first_shared_live(|r| r != 1, &b, |_| true).unwrap(), Some(Key::Int(12)));
        assert_eq!(a.first_shared_live(|r| r != 1, &b, |r| r != 0).unwrap(), None);
    }
}

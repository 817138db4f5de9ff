//! Ids in RAM: each segment's row → id array with its rows in id order (an id is found by
//! binary search), and a map of the in-memory table's live rows by id. There is no map of every
//! live row of a collection: at 1M rows it alone cost 31 bytes a row.
//!
//! A [`Key`] is 16 bytes (an integer, or a boxed string). Integer ids are kept here as bare
//! `u64`s, so a segment costs 8 bytes a row for its ids and 4 for their order; the table's map
//! packs a place into 8 bytes ([`Loc`]). String ids keep their boxed strings. Which kind a
//! collection uses is fixed by its schema, so a map or array never mixes them; a key of the
//! other kind is absent from it.
//!
//! Invariant: an id is live in at most one place, the table or one segment. Where it is: the
//! table's map first, then each segment's order, checking the segment's deletion set.

use std::collections::HashMap;
use std::sync::Arc;

use crate::batch::Key;
use crate::schema::IdType;

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
    /// Row numbers sorted by their id.
    by_id: Arc<[u32]>,
    /// Which ids may be here ([`id_hash`]): most lookups of an id not here stop at it.
    filter: Arc<IdFilter>,
}

/// The hash a segment's [`IdFilter`] keeps of `k`: integers mixed (splitmix64's finalizer),
/// strings by aHash with fixed keys (the filters live in RAM only; a client choosing ids that
/// collide costs itself a binary search, nothing more).
pub(super) fn id_hash(k: &Key) -> u64 {
    match k {
        Key::Int(i) => int_hash(*i),
        Key::Str(s) => str_hash(s),
    }
}

/// splitmix64's finalizer.
pub(super) fn int_hash(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn str_hash(s: &str) -> u64 {
    ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(s)
}

#[derive(Clone, Debug)]
enum Ids {
    /// Integer ids.
    Int(Arc<[u64]>),
    /// String ids, one after another in one string: their bytes and 4 bytes a row (a boxed
    /// string each was 16 bytes and an allocation a row).
    Str { text: Arc<str>, ends: Arc<[u32]> },
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
    pub(super) fn new(keys: Vec<Key>) -> Result<SegmentKeys, Key> {
        let ids = if keys.iter().all(|k| matches!(k, Key::Int(_))) {
            let ints = keys.into_iter().map(|k| match k {
                Key::Int(i) => i,
                Key::Str(_) => unreachable!("checked above"),
            });
            Ids::Int(ints.collect())
        } else {
            Ids::strings(&keys)
        };
        let rows = u32::try_from(ids.len()).expect("a segment holds fewer than 2^32 rows");
        let mut by_id: Vec<u32> = (0..rows).collect();
        by_id.sort_unstable_by(|&a, &b| ids.cmp_rows(a, &ids, b));
        if let Some(w) = by_id.windows(2).find(|w| ids.cmp_rows(w[0], &ids, w[1]).is_eq()) {
            return Err(ids.key(w[0] as usize));
        }
        let mut filter = IdFilter::for_ids(by_id.len());
        for r in 0..rows {
            filter.insert(ids.hash(r));
        }
        Ok(SegmentKeys { ids, by_id: by_id.into(), filter: Arc::new(filter) })
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Row `row`'s key.
    pub(super) fn key(&self, row: usize) -> Key {
        self.ids.key(row)
    }

    /// Every row's key, in row order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Key> + '_ {
        (0..self.len()).map(|r| self.key(r))
    }

    /// The row holding `k`, deleted or not; `None` for a key not here (or of the other kind).
    #[cfg(test)]
    pub(super) fn find(&self, k: &Key) -> Option<u32> {
        self.find_hashed(k, id_hash(k))
    }

    /// [`SegmentKeys::find`] with `k`'s [`id_hash`] already taken (one hash for every segment).
    pub(super) fn find_hashed(&self, k: &Key, hash: u64) -> Option<u32> {
        if !self.filter.may_contain(hash) {
            return None;
        }
        let at = match (&self.ids, k) {
            (Ids::Int(ids), Key::Int(i)) => {
                self.by_id.binary_search_by(|&r| ids[r as usize].cmp(i))
            }
            (Ids::Str { .. }, Key::Str(s)) => {
                self.by_id.binary_search_by(|&r| self.ids.str(r).cmp(s))
            }
            _ => return None,
        };
        at.ok().map(|at| self.by_id[at])
    }

    /// The first id both segments hold in rows neither has deleted (`live_a`, `live_b` say which
    /// rows are live), by one merge of their id orders.
    pub(super) fn first_shared_live(
        &self,
        live_a: impl Fn(u32) -> bool,
        other: &SegmentKeys,
        live_b: impl Fn(u32) -> bool,
    ) -> Option<Key> {
        let (mut i, mut j) = (0, 0);
        while i < self.by_id.len() && j < other.by_id.len() {
            let (ra, rb) = (self.by_id[i], other.by_id[j]);
            match self.ids.cmp_rows(ra, &other.ids, rb) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if live_a(ra) && live_b(rb) {
                        return Some(self.key(ra as usize));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        None
    }

    /// Heap bytes: the array, the id order (4 bytes a row) and the filter (1.25), plus the
    /// strings.
    pub(super) fn resident_bytes(&self) -> usize {
        let order = self.by_id.len() * size_of::<u32>();
        order
            + self.filter.bytes()
            + match &self.ids {
                Ids::Int(k) => k.len() * size_of::<u64>(),
                Ids::Str { text, ends } => text.len() + ends.len() * size_of::<u32>(),
            }
    }
}

impl Ids {
    /// String ids packed into one string.
    ///
    /// # Panics
    /// If `keys` holds an integer, or the strings pass 4 GiB.
    fn strings(keys: &[Key]) -> Ids {
        let mut text = String::with_capacity(key_heap_bytes(keys));
        let mut ends = Vec::with_capacity(keys.len());
        for k in keys {
            let Key::Str(s) = k else { panic!("an integer id among string ids") };
            text.push_str(s);
            ends.push(u32::try_from(text.len()).expect("a segment's string ids are under 4 GiB"));
        }
        Ids::Str { text: text.into(), ends: ends.into() }
    }

    /// String id of `row` (of a segment of string ids).
    fn str(&self, row: u32) -> &str {
        let Ids::Str { text, ends } = self else { panic!("string id of an integer segment") };
        let r = row as usize;
        let start = if r == 0 { 0 } else { ends[r - 1] as usize };
        &text[start..ends[r] as usize]
    }

    /// Row `a`'s id against row `b`'s of `other`, as their [`Key`]s order (integers before
    /// strings), without making either.
    fn cmp_rows(&self, a: u32, other: &Ids, b: u32) -> std::cmp::Ordering {
        match (self, other) {
            (Ids::Int(x), Ids::Int(y)) => x[a as usize].cmp(&y[b as usize]),
            (Ids::Str { .. }, Ids::Str { .. }) => self.str(a).cmp(other.str(b)),
            (Ids::Int(_), Ids::Str { .. }) => std::cmp::Ordering::Less,
            (Ids::Str { .. }, Ids::Int(_)) => std::cmp::Ordering::Greater,
        }
    }

    /// Row `row`'s [`id_hash`], without making its key.
    fn hash(&self, row: u32) -> u64 {
        match self {
            Ids::Int(k) => int_hash(k[row as usize]),
            Ids::Str { .. } => str_hash(self.str(row)),
        }
    }

    fn key(&self, row: usize) -> Key {
        match self {
            Ids::Int(k) => Key::Int(k[row]),
            Ids::Str { .. } => Key::Str(self.str(row as u32).into()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Ids::Int(k) => k.len(),
            Ids::Str { ends, .. } => ends.len(),
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
        let keys: Vec<Key> = (0..1000u64).map(|i| Key::Int(i * 7919 % 1000)).collect();
        let seg = SegmentKeys::new(keys.clone()).unwrap();
        assert!(matches!(seg.ids, Ids::Int(_)));
        assert_eq!(
            seg.resident_bytes(),
            12_000 + 1_280,
            "8 for the id, 4 for its place in id order, 1.25 for the filter"
        );
        assert_eq!(seg.iter().collect::<Vec<_>>(), keys);
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

        let strs: Vec<Key> = ["bb", "a", "ccc"].iter().map(|s| Key::Str((*s).into())).collect();
        let seg = SegmentKeys::new(strs.clone()).unwrap();
        assert_eq!(seg.resident_bytes(), 3 * (4 + 4) + 6 + 32, "4 for its end, 4 for its order");
        assert_eq!(seg.key(1), strs[1]);
        assert_eq!(seg.find(&strs[2]), Some(2));
        assert_eq!(seg.find(&Key::Str("b".into())), None);
        assert_eq!(seg.find(&Key::Int(3)), None);
    }

    #[test]
    fn a_segment_holding_an_id_twice_is_refused() {
        let keys: Vec<Key> = [3u64, 9, 4, 9].iter().map(|&i| Key::Int(i)).collect();
        assert_eq!(SegmentKeys::new(keys).unwrap_err(), Key::Int(9));
    }

    #[test]
    fn two_segments_sharing_a_live_id_are_found_and_a_dead_copy_is_not_counted() {
        let a = SegmentKeys::new([1u64, 5, 9, 12].iter().map(|&i| Key::Int(i)).collect()).unwrap();
        let b = SegmentKeys::new([12u64, 2, 5].iter().map(|&i| Key::Int(i)).collect()).unwrap();
        assert_eq!(a.first_shared_live(|_| true, &b, |_| true), Some(Key::Int(5)));
        // Row 1 of `a` (id 5) is deleted: 12 is the first shared live id.
        assert_eq!(a.first_shared_live(|r| r != 1, &b, |_| true), Some(Key::Int(12)));
        assert_eq!(a.first_shared_live(|r| r != 1, &b, |r| r != 0), None);
    }
}

//! Ids in RAM: the key map (every live row's place by id) and each segment's row → id array,
//! stored by id kind so integer ids cost their eight bytes and no more.
//!
//! A [`Key`] is 16 bytes (an integer, or a boxed string), and a place was 16 (an enum of a
//! segment id and a row): a `(Key, Loc)` slot of the hash map was 32 bytes, 37.8 bytes a row at
//! hashbrown's load factor. Integer ids are kept here as bare `u64`s and a place packs into
//! 8 bytes ([`Loc`]: a segment slot and a row), so a slot is 16 bytes, and a segment's key array
//! 8 bytes a row. String ids keep their boxed strings. Which kind a collection uses is fixed by
//! its schema, so a map or array never mixes them; a key of the other kind is absent from it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::batch::Key;
use crate::schema::IdType;

use super::model::Loc;

type Hasher = ahash::RandomState;

/// Every live row's place by id. aHash with per-process random keys: about three times cheaper
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

    pub(super) fn len(&self) -> usize {
        match self {
            KeyMap::Int(m) => m.len(),
            KeyMap::Str(m) => m.len(),
        }
    }

    pub(super) fn get(&self, k: &Key) -> Option<Loc> {
        match (self, k) {
            (KeyMap::Int(m), Key::Int(i)) => m.get(i).copied(),
            (KeyMap::Str(m), Key::Str(s)) => m.get(s).copied(),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, k: &Key) -> Option<&mut Loc> {
        match (self, k) {
            (KeyMap::Int(m), Key::Int(i)) => m.get_mut(i),
            (KeyMap::Str(m), Key::Str(s)) => m.get_mut(s),
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

/// A segment's id of every row (deleted rows too), shared by the views reads take and by
/// merges.
#[derive(Clone, Debug)]
pub(super) enum SegmentKeys {
    /// Integer ids.
    Int(Arc<[u64]>),
    /// String ids.
    Str(Arc<[Key]>),
}

impl SegmentKeys {
    /// The keys of a segment's rows, in row order: integer arrays when every key is an
    /// integer.
    pub(super) fn new(keys: Vec<Key>) -> SegmentKeys {
        if keys.iter().all(|k| matches!(k, Key::Int(_))) {
            let ints = keys.into_iter().map(|k| match k {
                Key::Int(i) => i,
                Key::Str(_) => unreachable!("checked above"),
            });
            SegmentKeys::Int(ints.collect())
        } else {
            SegmentKeys::Str(keys.into())
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            SegmentKeys::Int(k) => k.len(),
            SegmentKeys::Str(k) => k.len(),
        }
    }

    /// Row `row`'s key.
    pub(super) fn key(&self, row: usize) -> Key {
        match self {
            SegmentKeys::Int(k) => Key::Int(k[row]),
            SegmentKeys::Str(k) => k[row].clone(),
        }
    }

    /// Every row's key, in row order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Key> + '_ {
        (0..self.len()).map(|r| self.key(r))
    }

    /// Heap bytes: the array, plus the strings.
    pub(super) fn resident_bytes(&self) -> usize {
        match self {
            SegmentKeys::Int(k) => k.len() * size_of::<u64>(),
            SegmentKeys::Str(k) => k.len() * size_of::<Key>() + key_heap_bytes(k),
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
    fn integer_keys_cost_eight_bytes_a_row_and_a_key_of_the_other_kind_is_absent() {
        let keys: Vec<Key> = (0..1000u64).map(Key::Int).collect();
        let seg = SegmentKeys::new(keys.clone());
        assert!(matches!(seg, SegmentKeys::Int(_)));
        assert_eq!(seg.resident_bytes(), 8000);
        assert_eq!(seg.iter().collect::<Vec<_>>(), keys);
        let mut map = KeyMap::for_ids(IdType::U64);
        for (r, k) in keys.iter().enumerate() {
            assert_eq!(map.insert(k, Loc::seg(7, r as u32)), None);
        }
        assert_eq!(map.get(&Key::Int(5)), Some(Loc::seg(7, 5)));
        assert_eq!(map.get(&Key::Str("5".into())), None);
        assert_eq!(map.remove(&Key::Str("5".into())), None);
        assert_eq!(map.len(), 1000);
        let KeyMap::Int(m) = &map else { panic!("an integer map") };
        assert_eq!(size_of::<(u64, Loc)>(), 16, "a slot: the id and its place, packed");
        assert_eq!(map.resident_bytes(), m.capacity() * 17);

        let strs: Vec<Key> = ["a", "bb", "ccc"].iter().map(|s| Key::Str((*s).into())).collect();
        let seg = SegmentKeys::new(strs.clone());
        assert_eq!(seg.resident_bytes(), 3 * size_of::<Key>() + 6);
        assert_eq!(seg.key(1), strs[1]);
        let mut map = KeyMap::for_ids(IdType::Utf8);
        map.insert(&strs[2], Loc::mem(3));
        assert_eq!(map.get(&strs[2]), Some(Loc::mem(3)));
        assert_eq!(map.get(&Key::Int(3)), None);
    }
}

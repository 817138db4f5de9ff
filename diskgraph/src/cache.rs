//! A sector cache shared by every index opened with it, bounded in bytes.
//!
//! A search that misses the cache reads a node's sectors from disk; once the node verified
//! (checksum and structure), its sectors join the cache, and later searches of any thread take
//! them from RAM instead of the device. Eviction is CLOCK (second chance): each entry has a
//! reference bit set on every hit; the hand clears set bits and evicts the first entry it finds
//! clear. Hot sectors (the graph's dense head near the entry points) stay; sectors met once
//! leave first.
//!
//! Invariants:
//! - The bytes held (entries' sector bytes plus [`ENTRY_OVERHEAD`] each) never exceed the
//!   capacity: an insert evicts first, an entry larger than a shard's share is not admitted,
//!   and [`SectorCache::set_capacity`] evicts down to a lowered capacity before it returns
//!   (each shard's share is read under that shard's lock, so no insert slips past it).
//! - An entry is keyed by (index key, first sector). Index keys come from
//!   [`SectorCache::next_index_key`] and are never reused, so a rebuilt index at the same path
//!   never meets its predecessor's sectors; those age out.
//! - Only verified bytes are inserted (checksums passed, a spanning node's payloads moved
//!   together: [`crate::layout::verify_sectors`]), and they are immutable once in: a hit hands
//!   out a reference to exactly what was inserted, which searches parse without verifying or
//!   copying it again. An entry evicted while a search holds it lives until that search drops
//!   it (the charge leaves the cache at eviction; the bytes stay alive for a moment longer).
//! - No lock is held across I/O: a shard's lock covers a map lookup and a reference count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes each entry is charged beyond its sectors: the map slot, the slot record and the
/// allocation's header, rounded up.
pub const ENTRY_OVERHEAD: usize = 64;

/// Shards, each with its own lock and a share of the capacity. A power of two.
const SHARDS: usize = 16;
const _: () = assert!(SHARDS.is_power_of_two());

/// Which node's sectors: the index they belong to and the first sector's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    index: u64,
    sector: u64,
}

/// One cached node read.
#[derive(Debug)]
struct Entry {
    key: Key,
    bytes: Arc<[u8]>,
    referenced: AtomicBool,
}

/// One shard: its entries in slots the clock hand sweeps, a map to them, and free slots.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Option<Entry>>,
    map: HashMap<Key, usize>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
}

impl Shard {
    fn charge(entry: &Entry) -> usize {
        entry.bytes.len() + ENTRY_OVERHEAD
    }

    /// Evicts one entry by CLOCK: clears reference bits under the hand until it finds a clear
    /// one. Returns false if the shard is empty.
    fn evict_one(&mut self) -> bool {
        if self.map.is_empty() {
            return false;
        }
        // Every occupied slot is visited at most twice: once to clear its bit, once to evict.
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let at = self.hand;
            self.hand += 1;
            let Some(entry) = &self.slots[at] else { continue };
            if entry.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            let entry = self.slots[at].take().expect("occupied");
            self.map.remove(&entry.key);
            self.bytes -= Self::charge(&entry);
            self.free.push(at);
            return true;
        }
    }
}

/// A byte-bounded cache of verified index sectors, shared by the indexes opened with it
/// ([`crate::search::OpenOptionsIndex::sector_cache`]) and by all their searching threads.
#[derive(Debug)]
pub struct SectorCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: AtomicUsize,
    capacity: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    /// Hits and lookups of the recent past: both halved whenever the lookups pass
    /// [`HIT_WINDOW`], so old lookups weigh less and less ([`SectorCache::recent_hit_rate`]).
    window_hits: AtomicU64,
    window_lookups: AtomicU64,
}

/// Lookups after which the recent hit rate's counts are halved.
pub const HIT_WINDOW: u64 = 1 << 12;

/// What a cache holds and has done since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// The capacity in bytes.
    pub capacity: usize,
    /// Bytes held, entries' overhead included.
    pub bytes: usize,
    /// Node reads held.
    pub entries: usize,
    /// Lookups that found their sectors.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Node reads admitted.
    pub inserts: u64,
    /// Node reads evicted to make room.
    pub evictions: u64,
}

/// The source of index keys: process-wide, so two caches never need to agree.
static NEXT_INDEX_KEY: AtomicU64 = AtomicU64::new(1);

impl SectorCache {
    /// A cache that holds at most `capacity` bytes (sectors plus [`ENTRY_OVERHEAD`] per entry).
    /// A capacity under one shard's share of a node read admits nothing.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            shard_capacity: AtomicUsize::new(capacity / SHARDS),
            capacity: AtomicUsize::new(capacity),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            window_hits: AtomicU64::new(0),
            window_lookups: AtomicU64::new(0),
        }
    }

    /// Counts a lookup in the recent window, halving the window's counts when it is full
    /// (two threads may both halve: an estimate, never a count anything depends on exactly).
    fn count_recent(&self, hit: bool) {
        if hit {
            self.window_hits.fetch_add(1, Ordering::Relaxed);
        }
        if self.window_lookups.fetch_add(1, Ordering::Relaxed) + 1 >= HIT_WINDOW {
            let halve = |n: &AtomicU64| {
                let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v / 2));
            };
            halve(&self.window_lookups);
            halve(&self.window_hits);
        }
    }

    /// The share of recent lookups that found their sectors, in `[0, 1]` (0 before any):
    /// what a planner expects of a search's next reads. Lookups count half as much each time
    /// [`HIT_WINDOW`] more have been made.
    #[must_use]
    pub fn recent_hit_rate(&self) -> f64 {
        let lookups = self.window_lookups.load(Ordering::Relaxed);
        let hits = self.window_hits.load(Ordering::Relaxed);
        if lookups == 0 { 0.0 } else { (hits as f64 / lookups as f64).clamp(0.0, 1.0) }
    }

    /// A key for a newly opened index, never handed out before in this process.
    pub fn next_index_key() -> u64 {
        NEXT_INDEX_KEY.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, key: Key) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing of both halves spreads consecutive sectors over the shards.
        let mixed = (key.sector ^ key.index.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let at = (mixed >> 60) as usize & (SHARDS - 1);
        self.shards[at].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached (verified) sectors of (`index`, `sector`), or `None` if they are not cached.
    /// No copy: the entry is shared, and immutable.
    pub fn get(&self, index: u64, sector: u64) -> Option<Arc<[u8]>> {
        let key = Key { index, sector };
        let shard = self.shard(key);
        let Some(&at) = shard.map.get(&key) else {
            drop(shard);
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.count_recent(false);
            return None;
        };
        let entry = shard.slots[at].as_ref().expect("mapped slots are occupied");
        entry.referenced.store(true, Ordering::Relaxed);
        let bytes = Arc::clone(&entry.bytes);
        drop(shard);
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.count_recent(true);
        Some(bytes)
    }

    /// Admits the verified sectors `bytes` of (`index`, `sector`) (as
    /// [`crate::layout::verify_sectors`] left them), evicting by CLOCK to make room. Already cached: nothing changes. Larger than a shard's share: not admitted.
    pub fn insert(&self, index: u64, sector: u64, bytes: &[u8]) {
        let key = Key { index, sector };
        let charge = bytes.len() + ENTRY_OVERHEAD;
        let mut shard = self.shard(key);
        // Read under the shard's lock: a concurrent `set_capacity` either stored its share
        // before (seen here) or evicts this shard after this insert.
        let share = self.shard_capacity.load(Ordering::Acquire);
        if charge > share || shard.map.contains_key(&key) {
            return;
        }
        let mut evicted = 0;
        while shard.bytes + charge > share {
            let emptied = !shard.evict_one();
            assert!(!emptied, "an empty shard has room for an entry under its share");
            evicted += 1;
        }
        let entry = Entry { key, bytes: bytes.into(), referenced: AtomicBool::new(false) };
        let at = match shard.free.pop() {
            Some(at) => at,
            None => {
                shard.slots.push(None);
                shard.slots.len() - 1
            }
        };
        shard.slots[at] = Some(entry);
        shard.map.insert(key, at);
        shard.bytes += charge;
        assert!(shard.bytes <= share, "a shard holds no more than its share");
        drop(shard);
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Node reads evicted since the cache was created (without locking the shards).
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The capacity in bytes.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Acquire)
    }

    /// Changes the capacity: a lower one evicts (CLOCK) until every shard is within its new
    /// share before this returns. For an owner whose other memory grows, so the cache takes
    /// only what is left of a budget.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Release);
        let share = capacity / SHARDS;
        self.shard_capacity.store(share, Ordering::Release);
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while shard.bytes > share {
                assert!(shard.evict_one(), "a shard over its share holds an entry");
                evicted += 1;
            }
        }
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// What the cache holds and has done. Shards are read one after another, not at one instant.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            capacity: self.capacity(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            stats.bytes += shard.bytes;
            stats.entries += shard.map.len();
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: usize = 4096;

    fn sector_bytes(sector: u64) -> Vec<u8> {
        (0..NODE).map(|i| (sector as usize * 31 + i) as u8).collect()
    }

    #[test]
    fn a_hit_returns_exactly_the_bytes_inserted_and_keys_do_not_alias_across_indexes() {
        let cache = SectorCache::new(64 * (NODE + ENTRY_OVERHEAD) * SHARDS);
        let (a, b) = (SectorCache::next_index_key(), SectorCache::next_index_key());
        assert_ne!(a, b);
        cache.insert(a, 7, &sector_bytes(7));
        assert_eq!(cache.get(a, 7).as_deref(), Some(&sector_bytes(7)[..]));
        assert!(cache.get(b, 7).is_none(), "another index's sector 7 is another entry");
        assert!(cache.get(a, 8).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.inserts, s.entries), (1, 2, 1, 1));
    }

    /// A planner reads the recent hit rate to price a node read: it must follow what the
    /// cache does now (a cold start's misses fade), not the whole history.
    #[test]
    fn the_recent_hit_rate_follows_the_latest_lookups() {
        let cache = SectorCache::new(64 * (NODE + ENTRY_OVERHEAD) * SHARDS);
        let ix = SectorCache::next_index_key();
        assert_eq!(cache.recent_hit_rate(), 0.0, "no lookups yet");
        for _ in 0..3 * HIT_WINDOW {
            assert!(cache.get(ix, 1).is_none());
        }
        assert_eq!(cache.recent_hit_rate(), 0.0);
        cache.insert(ix, 1, &sector_bytes(1));
        for _ in 0..4 * HIT_WINDOW {
            assert!(cache.get(ix, 1).is_some());
        }
        let rate = cache.recent_hit_rate();
        assert!(rate > 0.9, "after 4 windows of hits: {rate}");
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (4 * HIT_WINDOW, 3 * HIT_WINDOW), "totals are kept");
    }

    /// The capacity is a bound, not a hint: filling past it evicts, and the bytes held never
    /// pass it, whatever the order of inserts.
    #[test]
    fn inserting_past_the_capacity_evicts_and_never_holds_more_than_it() {
        let capacity = 10 * (NODE + ENTRY_OVERHEAD) * SHARDS;
        let cache = SectorCache::new(capacity);
        let ix = SectorCache::next_index_key();
        for sector in 0..2000u64 {
            cache.insert(ix, sector * 7919 % 5003, &sector_bytes(sector));
            assert!(cache.stats().bytes <= capacity);
        }
        let s = cache.stats();
        assert!(s.evictions > 0 && s.entries <= 10 * SHARDS, "{s:?}");
        assert_eq!(s.bytes, s.entries * (NODE + ENTRY_OVERHEAD));
    }

    /// A lowered capacity is a bound at once, not after later inserts; raised again, the cache
    /// fills to the new bound.
    #[test]
    fn lowering_the_capacity_evicts_down_to_it_before_returning() {
        let full = 20 * (NODE + ENTRY_OVERHEAD) * SHARDS;
        let cache = SectorCache::new(full);
        let ix = SectorCache::next_index_key();
        for sector in 0..4000u64 {
            cache.insert(ix, sector, &sector_bytes(sector));
        }
        let before = cache.stats();
        assert!(before.bytes > full / 2, "{before:?}");
        let low = 3 * (NODE + ENTRY_OVERHEAD) * SHARDS;
        cache.set_capacity(low);
        let after = cache.stats();
        assert!(after.bytes <= low && after.capacity == low, "{after:?}");
        assert!(after.evictions > before.evictions);
        for sector in 4000..8000u64 {
            cache.insert(ix, sector, &sector_bytes(sector));
            assert!(cache.stats().bytes <= low);
        }
        cache.set_capacity(0);
        assert_eq!(cache.stats().bytes, 0);
        cache.insert(ix, 1, &sector_bytes(1));
        assert_eq!(cache.stats().entries, 0, "a zero capacity admits nothing");
        cache.set_capacity(full);
        for sector in 0..4000u64 {
            cache.insert(ix, sector, &sector_bytes(sector));
        }
        assert!(cache.stats().bytes > low, "raised again, it fills past the old bound");
    }

    /// CLOCK's point: a sector hit since the hand last passed survives a stream of one-off
    /// sectors that evicts everything else.
    #[test]
    fn a_sector_hit_again_and_again_survives_a_stream_of_sectors_met_once() {
        let cache = SectorCache::new(8 * (NODE + ENTRY_OVERHEAD) * SHARDS);
        let ix = SectorCache::next_index_key();
        let hot = 1_000_000u64;
        cache.insert(ix, hot, &sector_bytes(hot));
        for sector in 0..5000u64 {
            let held = cache.get(ix, hot);
            assert!(held.is_some(), "evicted after {sector} one-off inserts");
            cache.insert(ix, sector, &sector_bytes(sector));
            assert_eq!(held.as_deref(), Some(&sector_bytes(hot)[..]));
        }
        assert!(cache.stats().evictions > 1000);
    }

    #[test]
    fn a_cache_too_small_for_one_node_admits_nothing_and_holds_nothing() {
        let cache = SectorCache::new(NODE * SHARDS);
        let ix = SectorCache::next_index_key();
        cache.insert(ix, 1, &sector_bytes(1));
        assert!(cache.get(ix, 1).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }
}

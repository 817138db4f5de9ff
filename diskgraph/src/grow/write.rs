//! Step 3 of a growth: the write pass over the old file, kept nodes patched, then the
//! spilled added nodes and the codes.

use super::link::{Linked, Pruner};
use super::spill::Spill;
use super::*;

/// A kept node read in the write pass, owned so that a batch of them is patched in parallel.
pub(super) struct OldNode {
    pub(super) position: u32,
    pub(super) vector: Vec<u8>,
    pub(super) neighbours: Vec<u32>,
    pub(super) label: u32,
}

/// Bytes the write pass's batch of kept nodes may hold, each with its vector and lists.
pub(super) const PATCH_BATCH_BYTES: u64 = 3 << 19;
/// Most nodes patched in parallel at a time in the write pass.
pub(super) const PATCH_BATCH_MAX: u64 = 1024;
/// Fewest nodes patched in parallel at a time in the write pass.
pub(super) const PATCH_BATCH_MIN: u64 = 64;

/// Nodes patched in parallel at a time in the write pass: as many as [`PATCH_BATCH_BYTES`]
/// holds with rows of `row_bytes` and lists of up to `r` (1,024 of 128-d floats, 319 of 1024-d
/// floats, whose batch of 1,024 took 5 MB and kept growths from fitting a tight budget). The
/// batch's size changes nothing in the file written.
pub(super) fn patch_batch(row_bytes: u64, r: u64) -> usize {
    let node = row_bytes + 12 * r + 64;
    (PATCH_BATCH_BYTES / node).clamp(PATCH_BATCH_MIN, PATCH_BATCH_MAX) as usize
}

/// Step 3: the new files.
pub(super) struct Patch<'a> {
    pub(super) growth: &'a Growth<'a>,
    pub(super) h: Header,
    pub(super) old: &'a Old,
    pub(super) linked: &'a Linked,
    pub(super) pruner: &'a Pruner<'a>,
    /// A retrained codebook ([`Growth::retrain`]): every node written is encoded with it.
    pub(super) codebook: Option<&'a PqCodebook>,
}

/// Encodes the nodes a retraining growth writes, a batch at a time in parallel, into the new
/// codes file in position order.
pub(super) struct Encoder<'a> {
    pq: &'a PqCodebook,
    batch: VectorSet,
    len: usize,
    codes: Vec<u8>,
    writer: CodesWriter,
}

impl<'a> Encoder<'a> {
    pub(super) fn create(
        pq: &'a PqCodebook,
        h: &Header,
        rows: usize,
        path: &Path,
    ) -> Result<Encoder<'a>, IndexError> {
        let row_bytes = u64::from(h.dim) * h.elem.size() as u64;
        let batch_len = patch_batch(row_bytes, u64::from(h.max_degree));
        Ok(Encoder {
            pq,
            batch: VectorSet::zeroed(h.elem, h.dim as usize, batch_len)?,
            len: 0,
            codes: vec![0u8; batch_len * pq.bytes()],
            writer: CodesWriter::create(path, pq.bytes(), rows as u64)?,
        })
    }

    /// Adds a node's stored vector.
    pub(super) fn push(&mut self, vector: &[u8]) -> Result<(), IndexError> {
        self.batch.row_bytes_mut(self.len).copy_from_slice(vector);
        self.len += 1;
        if self.len == self.batch.len() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IndexError> {
        if self.len == 0 {
            return Ok(());
        }
        let m = self.pq.bytes();
        let (batch, codes) = if self.len == self.batch.len() {
            (&self.batch, &mut self.codes[..])
        } else {
            self.batch = self.batch.prefix(self.len);
            (&self.batch, &mut self.codes[..self.len * m])
        };
        self.pq.encode_into_slice(batch, codes);
        self.writer.push(codes)?;
        self.len = 0;
        Ok(())
    }

    /// Encodes what is left and completes the file (every row pushed).
    pub(super) fn finish(mut self) -> Result<(), IndexError> {
        self.flush()?;
        self.writer.finish()?;
        Ok(())
    }
}

impl Patch<'_> {
    /// The new header: same shape, the new count, an entry point that survives.
    pub(super) fn header(&self) -> Header {
        let h = self.h;
        let entry = if self.old.is_kept(h.entry) {
            Some(self.old.position[h.entry as usize])
        } else {
            let mates = self.old.dropped_lists.get(&h.entry).into_iter().flatten();
            mates.copied().find(|&u| self.old.is_kept(u)).map(|u| self.old.position[u as usize])
        };
        Header {
            version: crate::layout::VERSION,
            n: u64::from(self.old.kept) + self.linked.position.len() as u64,
            entry: entry.or(self.linked.entry).unwrap_or(0),
            ..h
        }
    }

    /// The new position of a joint id.
    pub(super) fn position(&self, u: u32) -> u32 {
        self.old.joint_position(&self.linked.position, u)
    }

    /// A kept node's list (joint ids): its kept neighbours, the kept neighbours of its dropped
    /// ones, and its reverse edges (`sources`), re-pruned to `R` when longer. Whether it
    /// changed.
    pub(super) fn patched(&self, node: &OldNode, sources: &[u32]) -> (Vec<u32>, bool) {
        let old_p = node.position;
        let mut list: Vec<u32> = Vec::with_capacity(node.neighbours.len());
        let mut changed = false;
        let push = |list: &mut Vec<u32>, u: u32| {
            if u != old_p && !list.contains(&u) {
                list.push(u);
            }
        };
        for &nb in &node.neighbours {
            if self.old.is_kept(nb) {
                push(&mut list, nb);
                continue;
            }
            changed = true;
            for &x in self.old.dropped_lists.get(&nb).into_iter().flatten() {
                if self.old.is_kept(x) {
                    push(&mut list, x);
                }
            }
        }
        for &u in sources {
            changed = true;
            push(&mut list, u);
        }
        (self.pruner.fitted(list, || stored_f32(self.h.elem, &node.vector)), changed)
    }

    /// Writes the graph file: kept nodes (patched), then the spilled added nodes. Returns the
    /// number of patched kept nodes and the sum of degrees.
    pub(super) fn write(
        &self,
        reader: &IndexReader,
        spill: &Spill,
        dir: &Path,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<(usize, u64), IndexError> {
        let header = self.header();
        let total = header.n as usize;
        let mut writer = IndexWriter::create(&dir.join(GRAPH_FILE), header)?;
        let mut encoder = match self.codebook {
            Some(pq) => Some(Encoder::create(pq, &self.h, total, &dir.join(CODES_FILE))?),
            None => None,
        };
        let (mut patched, mut degrees, mut written) = (0usize, 0u64, 0usize);
        let row_bytes = u64::from(self.h.dim) * self.h.elem.size() as u64;
        let batch_len = patch_batch(row_bytes, u64::from(self.h.max_degree));
        let mut batch: Vec<OldNode> = Vec::with_capacity(batch_len);
        let mut cursors = spill.cursors()?;
        let mut edges: Vec<u64> = Vec::new();
        let mut out = Vec::new();
        let mut flush =
            |batch: &mut Vec<OldNode>, writer: &mut IndexWriter| -> Result<(), IndexError> {
                let Some(last) = batch.last().map(|n| n.position) else { return Ok(()) };
                edges.clear();
                for cursor in &mut cursors {
                    cursor.drain_through(last, &mut edges)?;
                }
                edges.sort_unstable();
                let sources: Vec<Vec<u32>> = batch
                    .iter()
                    .map(|n| {
                        let target = u64::from(n.position) << 32;
                        let lo = edges.partition_point(|&e| e < target);
                        let hi = edges.partition_point(|&e| e < target + (1 << 32));
                        edges[lo..hi].iter().map(|&e| e as u32).collect()
                    })
                    .collect();
                let lists: Vec<(Vec<u32>, bool)> =
                    batch.par_iter().zip(&sources).map(|(n, s)| self.patched(n, s)).collect();
                for (node, (list, changed)) in batch.iter().zip(lists) {
                    patched += usize::from(changed);
                    degrees += list.len() as u64;
                    out.clear();
                    out.extend(list.iter().map(|&u| self.position(u)));
                    let label = (self.growth.relabel)(node.label).expect("a kept node");
                    writer.push(&node.vector, &out, label)?;
                    if let Some(encoder) = encoder.as_mut() {
                        encoder.push(&node.vector)?;
                    }
                }
                written += batch.len();
                progress("write", written, total);
                batch.clear();
                Ok(())
            };
        reader.for_each_node::<IndexError>(|p, node| {
            if self.old.is_kept(p) {
                let (vector, neighbours, label) =
                    (node.vector.to_vec(), node.neighbours, node.label);
                batch.push(OldNode { position: p, vector, neighbours, label });
                if batch.len() == batch_len {
                    flush(&mut batch, &mut writer)?;
                }
            }
            Ok(())
        })?;
        flush(&mut batch, &mut writer)?;
        for cursor in &mut cursors {
            assert!(cursor.peek()?.is_none(), "every reverse edge reached a kept node");
        }
        degrees += self.copy_added(spill, &mut writer, encoder.as_mut())?;
        progress("write", total, total);
        writer.finish()?;
        if let Some(encoder) = encoder {
            encoder.finish()?;
        }
        Ok((patched, degrees))
    }

    /// Appends the spilled added nodes (encoded by `encoder`, if retraining); returns the sum
    /// of their degrees.
    pub(super) fn copy_added(
        &self,
        spill: &Spill,
        writer: &mut IndexWriter,
        mut encoder: Option<&mut Encoder<'_>>,
    ) -> Result<u64, IndexError> {
        let r = self.h.max_degree as usize;
        let row_bytes = self.h.dim as usize * self.h.elem.size();
        let mut reader = spill.nodes_reader()?;
        let mut record = vec![0u8; 8 + 4 * r + row_bytes];
        let mut list = Vec::with_capacity(r);
        let mut degrees = 0u64;
        let word = |record: &[u8], k: usize| {
            u32::from_le_bytes(record[4 * k..4 * k + 4].try_into().expect("4 bytes"))
        };
        for _ in 0..self.linked.position.len() {
            reader
                .read_exact(&mut record)
                .map_err(|e| IndexError::Io { path: spill.nodes_path.clone(), source: e })?;
            let (label, count) = (word(&record, 0), word(&record, 1) as usize);
            assert!(count <= r, "a spilled list within R");
            list.clear();
            list.extend((0..count).map(|k| word(&record, 2 + k)));
            degrees += count as u64;
            writer.push(&record[8 + 4 * r..], &list, label)?;
            if let Some(encoder) = encoder.as_deref_mut() {
                encoder.push(&record[8 + 4 * r..])?;
            }
        }
        Ok(degrees)
    }

    /// Writes the PQ codes in the new positions' order, as they are copied (not gathered
    /// first: the new index's codes are its largest structure in RAM).
    pub(super) fn write_codes(&self, dir: &Path) -> Result<(), IndexError> {
        let m = self.growth.base.pq().bytes();
        let old = self.growth.base.codes();
        let n = u64::from(self.old.kept) + self.linked.position.len() as u64;
        let mut writer = CodesWriter::create(&dir.join(CODES_FILE), m, n)?;
        for (p, code) in old.iter().enumerate() {
            if self.old.is_kept(p as u32) {
                writer.push(code)?;
            }
        }
        for code in self.linked.codes.chunks_exact(m) {
            writer.push(code)?;
        }
        writer.finish()?;
        Ok(())
    }
}

/// A stored vector's bytes as `f32`s.
pub(super) fn stored_f32(elem: ElemType, bytes: &[u8]) -> Vec<f32> {
    match elem {
        ElemType::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect()
        }
        ElemType::U8 => bytes.iter().map(|&x| f32::from(x)).collect(),
        ElemType::I8 => bytes.iter().map(|&x| f32::from(x as i8)).collect(),
    }
}

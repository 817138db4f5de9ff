//! The files a growth spills beside the new index: finished added nodes, and sorted runs of
//! reverse edges into old nodes read back by cursors in the write pass.

use super::*;

/// The spilled added nodes, beside the new index while it is written.
pub(super) const NODES_SPILL: &str = "grow-nodes.tmp";
/// The spilled reverse edges into old nodes, one sorted run per chunk.
pub(super) const EDGES_SPILL: &str = "grow-edges.tmp";
/// Most edges into old nodes sorted and spilled as one run (2 MiB of them).
pub(super) const RUN_EDGES: usize = 1 << 18;
/// Bytes the runs' cursors read at a time in the write pass, all together ([`run_buffer`]).
pub(super) const RUN_BUFFERS: u64 = 4 << 20;
/// Bytes the spilled nodes are read back at a time.
pub(super) const NODES_BUFFER: usize = 64 << 10;

/// Bytes each of `runs` cursors reads at a time: a share of [`RUN_BUFFERS`], 4 to 64 KiB.
pub(super) fn run_buffer(runs: u64) -> u64 {
    (RUN_BUFFERS / runs.max(1)).clamp(4 << 10, 64 << 10)
}

/// The spill files beside the new index: the added nodes, finished, in position order; and
/// the reverse edges into old nodes, one run sorted by target per chunk. Removed when done
/// or dropped.
pub(super) struct Spill {
    pub(super) nodes_path: PathBuf,
    pub(super) edges_path: PathBuf,
    pub(super) nodes: Option<BufWriter<File>>,
    pub(super) edges: Option<BufWriter<File>>,
    /// Each run's first byte in the edges file and its edges.
    pub(super) runs: Vec<(u64, u64)>,
    pub(super) edges_written: u64,
}

impl Spill {
    pub(super) fn create(dir: &Path) -> Result<Spill, IndexError> {
        let open = |path: &Path| {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map(BufWriter::new)
                .map_err(|e| IndexError::Io { path: path.into(), source: e })
        };
        let (nodes_path, edges_path) = (dir.join(NODES_SPILL), dir.join(EDGES_SPILL));
        let mut spill = Spill {
            nodes: None,
            edges: None,
            runs: Vec::new(),
            edges_written: 0,
            nodes_path,
            edges_path,
        };
        spill.nodes = Some(open(&spill.nodes_path)?);
        spill.edges = Some(open(&spill.edges_path)?);
        Ok(spill)
    }

    pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
        move |e| IndexError::Io { path: path.into(), source: e }
    }

    /// Appends one finished added node: label, count, `r` ids (the list, then zeros), vector.
    pub(super) fn push_node(
        &mut self,
        label: u32,
        list: &[u32],
        r: usize,
        vector: &[u8],
    ) -> Result<(), IndexError> {
        assert!(list.len() <= r, "a finished list within R");
        let w = self.nodes.as_mut().expect("spilling");
        let mut record = Vec::with_capacity(8 + 4 * r + vector.len());
        record.extend_from_slice(&label.to_le_bytes());
        record.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for k in 0..r {
            record.extend_from_slice(&list.get(k).copied().unwrap_or(0).to_le_bytes());
        }
        record.extend_from_slice(vector);
        w.write_all(&record).map_err(Self::io_error(&self.nodes_path))
    }

    /// Appends a run of edges (`target << 32 | source`, sorted).
    pub(super) fn push_run(&mut self, edges: &[u64]) -> Result<(), IndexError> {
        debug_assert!(edges.windows(2).all(|w| w[0] <= w[1]), "a run is sorted");
        let w = self.edges.as_mut().expect("spilling");
        let bytes: Vec<u8> = edges.iter().flat_map(|e| e.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(Self::io_error(&self.edges_path))?;
        self.runs.push((self.edges_written * 8, edges.len() as u64));
        self.edges_written += edges.len() as u64;
        Ok(())
    }

    /// Flushes both files for reading (they are scratch: never synced).
    pub(super) fn finish(&mut self) -> Result<(), IndexError> {
        for (w, path) in [(&mut self.nodes, &self.nodes_path), (&mut self.edges, &self.edges_path)]
        {
            w.as_mut().expect("spilling").flush().map_err(Self::io_error(path))?;
        }
        Ok(())
    }

    /// The finished added nodes, from the first.
    pub(super) fn nodes_reader(&self) -> Result<BufReader<File>, IndexError> {
        File::open(&self.nodes_path)
            .map(|f| BufReader::with_capacity(NODES_BUFFER, f))
            .map_err(Self::io_error(&self.nodes_path))
    }

    /// A cursor per run.
    pub(super) fn cursors(&self) -> Result<Vec<RunCursor>, IndexError> {
        let file = File::open(&self.edges_path).map_err(Self::io_error(&self.edges_path))?;
        let file = std::sync::Arc::new(file);
        let edges_per_read = (run_buffer(self.runs.len() as u64) / 8) as usize;
        Ok(self
            .runs
            .iter()
            .map(|&(offset, edges)| RunCursor {
                file: file.clone(),
                path: self.edges_path.clone(),
                offset,
                left: edges,
                edges_per_read,
                buf: Vec::new(),
                at: 0,
            })
            .collect())
    }

    pub(super) fn remove(&mut self) {
        drop(self.nodes.take());
        drop(self.edges.take());
        for path in [&self.nodes_path, &self.edges_path] {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Reads one spilled run of edges in order.
pub(super) struct RunCursor {
    pub(super) file: std::sync::Arc<File>,
    pub(super) path: PathBuf,
    /// The next unread byte of the run.
    pub(super) offset: u64,
    /// Edges of the run not yet read into `buf`.
    pub(super) left: u64,
    /// Edges read at a time.
    pub(super) edges_per_read: usize,
    pub(super) buf: Vec<u64>,
    pub(super) at: usize,
}

impl RunCursor {
    /// The next edge, without taking it.
    pub(super) fn peek(&mut self) -> Result<Option<u64>, IndexError> {
        if self.at == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let edges = self.left.min(self.edges_per_read as u64) as usize;
            let mut bytes = vec![0u8; edges * 8];
            self.file
                .read_exact_at(&mut bytes, self.offset)
                .map_err(|e| IndexError::Io { path: self.path.clone(), source: e })?;
            self.buf.clear();
            self.buf.extend(
                bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))),
            );
            self.at = 0;
            self.offset += bytes.len() as u64;
            self.left -= edges as u64;
        }
        Ok(Some(self.buf[self.at]))
    }

    /// Moves the edges whose target is at most `last` into `into`.
    pub(super) fn drain_through(
        &mut self,
        last: u32,
        into: &mut Vec<u64>,
    ) -> Result<(), IndexError> {
        while let Some(e) = self.peek()? {
            if (e >> 32) as u32 > last {
                break;
            }
            into.push(e);
            self.at += 1;
        }
        Ok(())
    }
}

//! Adaptive chunking of streamed results, and single-batch IPC encoding.

use std::collections::VecDeque;

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use bytes::Bytes;
use tonic::Status;

/// Adaptive chunking: regroups a stream of batches into batches of `chunk` rows, where `chunk`
/// starts small (the first rows reach the client quickly) and doubles after each batch up to a
/// maximum (large messages for throughput): `max` rows, or fewer when the rows' size (measured
/// on the first batch) would exceed `max_bytes`. A batch that already has the right size passes
/// without a copy.
#[derive(Debug)]
pub(super) struct Chunker {
    pending: VecDeque<RecordBatch>,
    rows: usize,
    pub(super) chunk: usize,
    max: usize,
    max_bytes: Option<usize>,
}

impl Chunker {
    pub(super) fn new(start: usize, max: usize) -> Self {
        let max = max.max(1);
        Chunker {
            pending: VecDeque::new(),
            rows: 0,
            chunk: start.clamp(1, max),
            max,
            max_bytes: None,
        }
    }

    pub(super) fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes.max(1));
        self
    }

    /// Lowers `max` to the rows of `b`'s size that fit in `max_bytes` (once, on the first rows).
    fn fit(&mut self, b: &RecordBatch) {
        let Some(bytes) = self.max_bytes.take() else { return };
        let row = quiver_engine::value_bytes(b).div_ceil(b.num_rows()).max(1);
        self.max = self.max.min((bytes / row).max(1));
        self.chunk = self.chunk.min(self.max);
    }

    fn take(&mut self, n: usize) -> Result<RecordBatch, arrow_schema::ArrowError> {
        debug_assert!(n <= self.rows);
        let schema = self.pending[0].schema();
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let b = &self.pending[0];
            if b.num_rows() <= need {
                need -= b.num_rows();
                parts.push(self.pending.pop_front().expect("rows are pending"));
            } else {
                parts.push(b.slice(0, need));
                self.pending[0] = b.slice(need, b.num_rows() - need);
                need = 0;
            }
        }
        self.rows -= n;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        arrow_select::concat::concat_batches(&schema, &parts)
    }

    pub(super) fn push(
        &mut self,
        b: RecordBatch,
    ) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
        if b.num_rows() > 0 {
            self.fit(&b);
            self.rows += b.num_rows();
            self.pending.push_back(b);
        }
        let mut out = Vec::new();
        while self.rows >= self.chunk {
            out.push(self.take(self.chunk)?);
            self.chunk = (self.chunk * 2).min(self.max);
        }
        Ok(out)
    }

    pub(super) fn finish(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        if self.rows == 0 { Ok(None) } else { self.take(self.rows).map(Some) }
    }
}

pub(super) fn ipc_stream_bytes(batch: &RecordBatch) -> Result<Bytes, Status> {
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    w.write(batch).map_err(|e| Status::internal(e.to_string()))?;
    w.finish().map_err(|e| Status::internal(e.to_string()))?;
    drop(w);
    Ok(buf.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::Array;
    use arrow_schema::{DataType, Field, Schema};

    use arrow_array::UInt32Array;

    fn batch(from: u32, n: u32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::UInt32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from_iter_values(from..from + n))])
            .unwrap()
    }

    /// Pushes batches of `ns` rows (numbered on from 0) through `c`, then finishes it. Returns
    /// the sizes of the batches `push` released, the size of the final one, and every row seen.
    fn run(mut c: Chunker, ns: &[u32]) -> (Vec<usize>, Option<usize>, Vec<u32>, u32) {
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        let mut next = 0;
        let take = |b: RecordBatch, seen: &mut Vec<u32>| {
            let x = b.column(0).as_any().downcast_ref::<UInt32Array>().unwrap();
            seen.extend(x.values().iter().copied());
            b.num_rows()
        };
        for &n in ns {
            for b in c.push(batch(next, n)).unwrap() {
                sizes.push(take(b, &mut seen));
            }
            next += n;
        }
        let last = c.finish().unwrap().map(|b| take(b, &mut seen));
        (sizes, last, seen, next)
    }

    #[test]
    fn chunker_grows_from_start_to_max_and_keeps_every_row_in_order() {
        let (sizes, _, seen, total) = run(Chunker::new(4, 32), &[3, 1, 7, 50, 0, 2, 100]);
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!(&sizes[..4], &[4, 8, 16, 32]);
        assert!(sizes[4..].iter().all(|&s| s == 32), "{sizes:?}");
    }

    /// A byte cap under the row cap must bound the batches (4-byte rows, 40 bytes: 10 rows),
    /// or scans of wide rows gather 64k-row batches only for the encoder to split them again.
    #[test]
    fn chunker_caps_batches_at_the_message_size_for_wide_rows() {
        let c = Chunker::new(4, 32).with_max_bytes(40);
        let (sizes, last, seen, total) = run(c, &[3, 50, 9, 100]);
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!(sizes[0], 4);
        assert!(sizes[1..].iter().all(|&s| s == 8 || s == 10), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&10));
        assert!(last.is_none_or(|n| n <= 10), "{last:?}");
    }
}

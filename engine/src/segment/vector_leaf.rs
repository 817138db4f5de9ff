//! The whole-file reader of a segment's `vector` column, straight from its Parquet pages.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::{SegmentError, SegmentFile, VfsChunkReader};

/// Reads the `vector` column of a whole segment straight from its pages: decompressed and
/// decoded (`PLAIN` or `BYTE_STREAM_SPLIT` floats) into the output buffer, without the
/// repetition and definition levels that parquet-rs's list reader walks value by value (a
/// fifth of a scan's time). Sound only for the layout Quiver writes, which [`VectorLeaf::new`]
/// checks: a required fixed-size list of `FLOAT`s without a dictionary, so the levels say
/// nothing the schema does not — except where an element is null, which the engine never
/// writes (inserts refuse them). Each row group must hold exactly rows × dim values and each
/// page's value bytes must match its level count, so a null element, a short list or a short
/// page is reported as corruption, never returned as shifted values.
pub(super) struct VectorLeaf {
    path: PathBuf,
    reader: Arc<VfsChunkReader>,
    meta: Arc<parquet::file::metadata::ParquetMetaData>,
    /// The leaf's column index.
    column: usize,
    dim: usize,
    item: arrow_schema::FieldRef,
    next_group: usize,
    pages: Option<parquet::file::serialized_reader::SerializedPageReader<VfsChunkReader>>,
    /// Values the current row group still owes.
    group_left: u64,
    /// The page the last batch ended inside: its value bytes, value count and encoding, and
    /// how many of its values were taken. The next batch decodes the rest from it, so no
    /// value is decoded twice or copied after decoding.
    open_page: Option<OpenPage>,
}

struct OpenPage {
    bytes: Bytes,
    values: usize,
    encoding: parquet::basic::Encoding,
    taken: usize,
}

impl VectorLeaf {
    /// The reader for root column `root` of `file`, if it has the layout this reader handles.
    pub(super) fn new(file: &SegmentFile, root: usize) -> Option<VectorLeaf> {
        use parquet::basic::{Encoding, Type};
        let arrow_schema::DataType::FixedSizeList(item, dim) =
            file.meta.schema().field(root).data_type()
        else {
            return None;
        };
        if item.data_type() != &arrow_schema::DataType::Float32
            || file.meta.schema().field(root).is_nullable()
            || *dim < 1
        {
            return None;
        }
        let md = file.meta.metadata();
        let pschema = md.file_metadata().schema_descr();
        let leaves: Vec<usize> = (0..pschema.num_columns())
            .filter(|&i| pschema.get_column_root_idx(i) == root)
            .collect();
        let [column] = leaves[..] else { return None };
        let descr = pschema.column(column);
        if descr.physical_type() != Type::FLOAT
            || descr.max_def_level() != 1 + i16::from(item.is_nullable())
            || descr.max_rep_level() != 1
        {
            return None;
        }
        let plain = |e: Encoding| {
            matches!(e, Encoding::PLAIN | Encoding::BYTE_STREAM_SPLIT | Encoding::RLE)
        };
        if !md.row_groups().iter().all(|g| g.column(column).encodings().all(plain)) {
            return None;
        }
        Some(VectorLeaf {
            path: file.path.clone(),
            reader: Arc::new(file.reader.clone()),
            meta: md.clone(),
            column,
            dim: *dim as usize,
            item: item.clone(),
            next_group: 0,
            pages: None,
            group_left: 0,
            open_page: None,
        })
    }

    fn corrupt(&self, reason: &str) -> SegmentError {
        SegmentError::Corrupt {
            path: self.path.clone(),
            reason: format!("vector column: {reason}"),
        }
    }

    /// The next data page's value bytes, value count and encoding; `None` after the last.
    fn next_page(
        &mut self,
    ) -> Result<Option<(Bytes, usize, parquet::basic::Encoding)>, SegmentError> {
        use parquet::column::page::{Page, PageReader};
        loop {
            let Some(pages) = self.pages.as_mut() else {
                if self.next_group == self.meta.num_row_groups() {
                    return Ok(None);
                }
                let g = self.meta.row_group(self.next_group);
                let rows = usize::try_from(g.num_rows())
                    .map_err(|_| self.corrupt(&format!("row group of {} rows", g.num_rows())))?;
                let pages = parquet::file::serialized_reader::SerializedPageReader::new(
                    self.reader.clone(),
                    g.column(self.column),
                    rows,
                    None,
                )
                .map_err(|e| self.corrupt(&e.to_string()))?;
                self.group_left = rows as u64 * self.dim as u64;
                self.pages = Some(pages);
                self.next_group += 1;
                continue;
            };
            let page = pages.get_next_page().map_err(|e| self.corrupt(&e.to_string()))?;
            let (buf, levels, n, encoding) = match page {
                None => {
                    if self.group_left != 0 {
                        let g = self.next_group - 1;
                        let left = self.group_left;
                        return Err(
                            self.corrupt(&format!("row group {g} ends {left} values short"))
                        );
                    }
                    self.pages = None;
                    continue;
                }
                Some(Page::DataPage { buf, num_values, encoding, .. }) => {
                    // Repetition, then definition levels, each as a u32 length and its bytes.
                    let mut at = 0usize;
                    for _ in 0..2 {
                        let len = buf
                            .get(at..at + 4)
                            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                            .ok_or_else(|| self.corrupt("a page's levels are cut short"))?;
                        at = at.saturating_add(4).saturating_add(len);
                    }
                    (buf, at, num_values as usize, encoding)
                }
                Some(Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding,
                    num_nulls,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    ..
                }) => {
                    if num_nulls != 0 {
                        return Err(
                            self.corrupt(&format!("{num_nulls} nulls in a required column"))
                        );
                    }
                    let levels = def_levels_byte_len as usize + rep_levels_byte_len as usize;
                    (buf, levels, num_values as usize, encoding)
                }
                Some(Page::DictionaryPage { .. }) => {
                    return Err(self.corrupt("a dictionary page"));
                }
            };
            if levels > buf.len() || buf.len() - levels != n * 4 {
                return Err(self.corrupt(&format!(
                    "a page of {n} values holds {} value bytes",
                    buf.len().saturating_sub(levels)
                )));
            }
            if n as u64 > self.group_left {
                return Err(self.corrupt(&format!(
                    "row group {} holds more than rows × {} values",
                    self.next_group - 1,
                    self.dim
                )));
            }
            self.group_left -= n as u64;
            return Ok(Some((buf.slice(levels..), n, encoding)));
        }
    }

    /// Decodes values `from..from + count` of `page` onto the end of `out`.
    fn decode(
        &self,
        page: &OpenPage,
        from: usize,
        count: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), SegmentError> {
        use parquet::basic::Encoding;
        debug_assert_eq!(page.bytes.len(), 4 * page.values);
        match page.encoding {
            Encoding::PLAIN => out.extend(
                page.bytes[4 * from..4 * (from + count)]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            ),
            Encoding::BYTE_STREAM_SPLIT => {
                super::byte_split::join_range(&page.bytes, from, count, out)
            }
            e => return Err(self.corrupt(&format!("values encoded as {e}"))),
        }
        Ok(())
    }

    /// The next `rows` vectors; fewer only at the end of the file.
    pub(super) fn take(
        &mut self,
        rows: usize,
    ) -> Result<arrow_array::FixedSizeListArray, SegmentError> {
        let want = rows * self.dim;
        let mut out: Vec<f32> = Vec::with_capacity(want);
        while out.len() < want {
            let mut page = match self.open_page.take() {
                Some(page) => page,
                None => match self.next_page()? {
                    Some((bytes, values, encoding)) => {
                        OpenPage { bytes, values, encoding, taken: 0 }
                    }
                    None => break,
                },
            };
            let count = (page.values - page.taken).min(want - out.len());
            self.decode(&page, page.taken, count, &mut out)?;
            page.taken += count;
            if page.taken < page.values {
                self.open_page = Some(page);
            }
        }
        if !out.len().is_multiple_of(self.dim) {
            return Err(self.corrupt(&format!("{} values are not whole vectors", out.len())));
        }
        let values = arrow_array::Float32Array::from(out);
        arrow_array::FixedSizeListArray::try_new(
            self.item.clone(),
            self.dim as i32,
            Arc::new(values),
            None,
        )
        .map_err(|e| self.corrupt(&e.to_string()))
    }
}

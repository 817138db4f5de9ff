//! The `vector` column chunk of a segment, encoded directly (the write-side twin of
//! [`super::VectorLeaf`]).
//!
//! parquet-rs encodes a fixed-size list value by value: it computes a repetition and a
//! definition level for every element, run-length encodes them, and splits the floats into
//! byte streams one value at a time. For 128-d float vectors that was over a third of a
//! flush's CPU beside zstd. Here the levels of a page follow from its row count alone (every
//! row is `dim` present elements), so they are written as precomputed runs; the floats are
//! split into their four byte streams (`BYTE_STREAM_SPLIT`) a slice at a time; and zstd
//! compresses the page. The pages are ordinary Parquet v1 data pages, as parquet-rs writes
//! them, readable by any Parquet reader.
//!
//! Compression is adaptive, per column chunk: the first page is compressed, and if that does
//! not save an eighth of its bytes the chunk is stored `UNCOMPRESSED`, so float vectors that are
//! noise to zstd (many learned embeddings) cost no compression time.

use std::io::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use super::byte_split;

/// Value bytes per data page (the last page of a chunk may hold fewer; a page holds at least
/// one row).
const PAGE_VALUE_BYTES: usize = 1 << 20;

/// zstd's match-table size (log2 entries) for the fast levels (≤ 1) on vector pages.
const FAST_HASH_LOG: u32 = 10;

/// Most 8-value groups in one bit-packed run (what parquet-mr and Arrow C++ write).
const MAX_PACKED_GROUPS: usize = 63;

/// Whether `compressed` bytes are worth storing instead of `raw`: they save at least 1/8.
/// (zstd at level 1 with the small match table encodes byte-split floats at about 1 GB/s on
/// one core here, and decoding them costs a scan about as much again; saving less than an
/// eighth of the bytes is not worth that.)
fn worth_compressing(raw: usize, compressed: usize) -> bool {
    compressed <= raw - raw / 8
}

/// Encodes the `vector` leaf (a required fixed-size list of `dim` floats) of row groups.
pub(super) struct VectorWriter {
    /// The root column in the Arrow schema.
    pub(super) root: usize,
    /// The leaf column in the Parquet schema.
    pub(super) leaf: usize,
    descr: ColumnDescPtr,
    dim: usize,
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    /// One page: its levels, then its values split into byte streams.
    page: Vec<u8>,
    /// One page's compressed values.
    packed: Vec<u8>,
}

impl std::fmt::Debug for VectorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorWriter")
            .field("leaf", &self.leaf)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl VectorWriter {
    /// The writer for root column `root` (leaf `leaf`, described by `descr`), if it is a
    /// required fixed-size list of floats whose levels are a plain list's: repetition level 1,
    /// definition level 1 or 2 (a nullable item). `None` leaves the column to parquet-rs.
    pub(super) fn new(
        root: usize,
        field: &arrow_schema::Field,
        leaf: usize,
        descr: ColumnDescPtr,
        level: i32,
    ) -> Result<Option<Self>> {
        let arrow_schema::DataType::FixedSizeList(item, dim) = field.data_type() else {
            return Ok(None);
        };
        let Ok(dim) = usize::try_from(*dim) else { return Ok(None) };
        if field.is_nullable()
            || dim == 0
            || item.data_type() != &arrow_schema::DataType::Float32
            || descr.physical_type() != parquet::basic::Type::FLOAT
            || descr.max_rep_level() != 1
            || descr.max_def_level() != 1 + i16::from(item.is_nullable())
        {
            return Ok(None);
        }
        let mut compressor = zstd::bulk::Compressor::new(level)
            .map_err(|e| ParquetError::General(format!("zstd level {level}: {e}")))?;
        if level <= 1 {
            // Byte-split floats are mostly literals to zstd's fast strategy: its default
            // 8 Ki-entry match table (level 1, 1 MiB input) only misses cache. A 1 Ki-entry one
            // stays in L1 and finds as much: on 1 MiB pages, 1.35x faster on SIFT-as-f32 and
            // 1.6x on GloVe at slightly better ratios (4.14 -> 4.20, 1.188 -> 1.196).
            compressor
                .set_parameter(zstd::zstd_safe::CParameter::HashLog(FAST_HASH_LOG))
                .map_err(|e| ParquetError::General(format!("zstd hash log: {e}")))?;
        }
        Ok(Some(VectorWriter {
            root,
            leaf,
            descr,
            dim,
            level,
            compressor,
            page: Vec::new(),
            packed: Vec::new(),
        }))
    }

    /// Encodes the vector column of `batches` (`rows` rows in all) as one column chunk: its
    /// bytes (offsets relative to their start) and the metadata to append them with.
    ///
    /// # Errors
    /// A null vector or element (the engine refuses them on insert, so this is a bug upstream
    /// rather than data to store), or a failure of zstd.
    pub(super) fn encode_chunk(
        &mut self,
        batches: &[RecordBatch],
        rows: usize,
    ) -> Result<(Bytes, ColumnCloseResult)> {
        let dim = self.dim;
        let page_rows = (PAGE_VALUE_BYTES / (4 * dim)).max(1);
        let mut sink = TrackedWrite::new(Vec::with_capacity(rows * dim * 4 / 3 + 4096));
        let mut pages = SerializedPageWriter::new(&mut sink);
        let def = self.descr.max_def_level();
        // The levels of a page: repetition, then definition, each behind its u32 length. Every
        // full page has the same.
        let full_levels = levels(page_rows, dim, def)?;
        let (mut compressed_size, mut uncompressed_size, mut values_total) = (0i64, 0i64, 0i64);
        // Decided on the first page.
        let mut compress: Option<bool> = None;
        let mut arrays = Vec::with_capacity(batches.len());
        for b in batches {
            let list = b.column(self.root).as_fixed_size_list();
            let values = list.values().slice(0, list.len() * dim);
            if list.null_count() != 0 || values.null_count() != 0 {
                return Err(ParquetError::General(
                    "a null vector or vector element reached a segment".into(),
                ));
            }
            arrays.push(values);
        }
        let parts: Vec<&[f32]> =
            arrays.iter().map(|a| &a.as_primitive::<Float32Type>().values()[..]).collect();
        assert_eq!(parts.iter().map(|f| f.len()).sum::<usize>(), rows * dim);
        let mut source = Floats { parts, part: 0, at: 0 };
        let mut left = rows;
        while left > 0 {
            let n_rows = left.min(page_rows);
            left -= n_rows;
            let n = n_rows * dim;
            self.page.clear();
            if n_rows == page_rows {
                self.page.extend_from_slice(&full_levels);
            } else {
                self.page.extend_from_slice(&levels(n_rows, dim, def)?);
            }
            source.split_next(n, &mut self.page);
            let raw = self.page.len();
            let zstd = match compress {
                Some(false) => false,
                Some(true) | None => {
                    self.packed.clear();
                    self.packed.reserve(zstd::zstd_safe::compress_bound(raw));
                    self.compressor
                        .compress_to_buffer(&self.page, &mut self.packed)
                        .map_err(|e| ParquetError::General(format!("zstd: {e}")))?;
                    *compress.get_or_insert(worth_compressing(raw, self.packed.len()))
                }
            };
            let page = Page::DataPage {
                buf: Bytes::copy_from_slice(if zstd { &self.packed } else { &self.page }),
                num_values: to_u32(n)?,
                encoding: Encoding::BYTE_STREAM_SPLIT,
                def_level_encoding: Encoding::RLE,
                rep_level_encoding: Encoding::RLE,
                statistics: None,
            };
            let spec = pages.write_page(CompressedPage::new(page, raw))?;
            compressed_size += spec.compressed_size as i64;
            uncompressed_size += spec.uncompressed_size as i64;
            values_total += n as i64;
        }
        pages.close()?;
        sink.flush()?;
        let bytes = Bytes::from(sink.into_inner()?);
        debug_assert_eq!(bytes.len() as i64, compressed_size);
        let codec = if compress == Some(true) {
            Compression::ZSTD(ZstdLevel::try_new(self.level)?)
        } else {
            Compression::UNCOMPRESSED
        };
        let metadata = ColumnChunkMetaData::builder(self.descr.clone())
            .set_compression(codec)
            .set_encodings(vec![Encoding::RLE, Encoding::BYTE_STREAM_SPLIT])
            .set_num_values(values_total)
            .set_total_compressed_size(compressed_size)
            .set_total_uncompressed_size(uncompressed_size)
            .set_data_page_offset(0)
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: rows as u64,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: None,
        };
        Ok((bytes, close))
    }
}

fn to_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| ParquetError::General(format!("{n} is too large for a page")))
}

/// The floats of a chunk, batch by batch, taken a page at a time.
struct Floats<'a> {
    parts: Vec<&'a [f32]>,
    part: usize,
    at: usize,
}

impl Floats<'_> {
    /// Appends the next `n` floats to `out` split into four byte streams
    /// (`BYTE_STREAM_SPLIT`): byte `k` of value `i` goes `k * n + i` bytes past the old end.
    fn split_next(&mut self, n: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + 4 * n, 0);
        let (s0, rest) = out[start..].split_at_mut(n);
        let (s1, rest) = rest.split_at_mut(n);
        let (s2, s3) = rest.split_at_mut(n);
        let mut done = 0;
        while done < n {
            let part = self.parts.get(self.part).expect("the batches hold rows × dim values");
            let take = (part.len() - self.at).min(n - done);
            let src = &part[self.at..self.at + take];
            let range = done..done + take;
            byte_split::split(
                src,
                [
                    &mut s0[range.clone()],
                    &mut s1[range.clone()],
                    &mut s2[range.clone()],
                    &mut s3[range],
                ],
            );
            done += take;
            self.at += take;
            if self.at == part.len() {
                self.part += 1;
                self.at = 0;
            }
        }
    }
}

/// Appends `v` as a ULEB128 varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An RLE run of `count` copies of `value` (at most 8 bits wide: one value byte).
fn rle_run(out: &mut Vec<u8>, count: usize, value: u8) {
    varint(out, (count as u64) << 1);
    out.push(value);
}

/// The repetition levels of `rows` rows of `dim` elements (bit width 1: 0 starts a row, 1
/// continues it) in the RLE / bit-packed hybrid encoding, whichever form is shorter: two runs
/// per row, or the bits packed in runs of at most 63 groups of 8.
fn rep_levels(rows: usize, dim: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if dim == 1 {
        rle_run(&mut out, rows, 0);
        return out;
    }
    let mut probe = Vec::new();
    rle_run(&mut probe, 1, 0);
    rle_run(&mut probe, dim - 1, 1);
    let rle_bytes = probe.len() * rows;
    let n = rows * dim;
    let groups = n.div_ceil(8);
    let packed_bytes = groups + groups.div_ceil(MAX_PACKED_GROUPS);
    if rle_bytes <= packed_bytes {
        out.reserve(rle_bytes);
        for _ in 0..rows {
            out.extend_from_slice(&probe);
        }
        return out;
    }
    out.reserve(packed_bytes);
    let mut i = 0; // the next value
    let mut group = 0;
    while group < groups {
        let run = (groups - group).min(MAX_PACKED_GROUPS);
        varint(&mut out, ((run as u64) << 1) | 1);
        for _ in 0..run {
            let mut byte = 0u8;
            for bit in 0..8 {
                // Values past `n` pad the last group; readers stop at the page's value count.
                if i < n && i % dim != 0 {
                    byte |= 1 << bit;
                }
                i += 1;
            }
            out.push(byte);
        }
        group += run;
    }
    out
}

/// The definition levels of `n` present values whose level is `max` (1 or 2): one RLE run.
fn def_levels(n: usize, max: i16) -> Vec<u8> {
    let mut out = Vec::new();
    rle_run(&mut out, n, max as u8);
    out
}

/// The levels of a v1 data page of `rows` rows of `dim` present elements: the repetition
/// levels, then the definition levels (all `max_def`), each behind its length as a u32.
fn levels(rows: usize, dim: usize, max_def: i16) -> Result<Vec<u8>> {
    let rep = rep_levels(rows, dim);
    let def = def_levels(rows * dim, max_def);
    let mut out = Vec::with_capacity(8 + rep.len() + def.len());
    out.extend_from_slice(&to_u32(rep.len())?.to_le_bytes());
    out.extend_from_slice(&rep);
    out.extend_from_slice(&to_u32(def.len())?.to_le_bytes());
    out.extend_from_slice(&def);
    Ok(out)
}

//! Turning users' record batches into rows a collection can store, refusing bad input before
//! anything is written; row keys; and the WAL payload encoding (Arrow IPC).

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int8Type, Int64Type, UInt8Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{ArrowError, DataType, Schema};

use crate::schema::{
    CollectionSchema, ID_COLUMN, IdType, MAX_STRING_ID, VECTOR_COLUMN, VectorType,
};
use quiver_diskgraph::data::{Row, VectorSet};

/// A row's primary key. `i64` ids are kept as their bit pattern in [`Key::Int`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A `u64` or `i64` id.
    Int(u64),
    /// A string id.
    Str(Box<str>),
}

/// Why a batch of rows (or of ids) is refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A required column is missing.
    #[error("the batch has no {0:?} column")]
    MissingColumn(String),
    /// A column not in the collection's schema.
    #[error("column {0:?} is not in the collection's schema")]
    UnknownColumn(String),
    /// A column of the wrong type.
    #[error("column {column:?} has type {found}, the collection expects {expected}")]
    ColumnType {
        /// The column.
        column: String,
        /// Its type in the batch.
        found: DataType,
        /// The type the schema declares.
        expected: DataType,
    },
    /// A null in a non-nullable column.
    #[error("column {column:?} has a null at row {row}")]
    Null {
        /// The column.
        column: String,
        /// The first row with a null.
        row: usize,
    },
    /// A NaN or infinite vector element.
    #[error("vector at row {row} has the non-finite value {value}")]
    NonFinite {
        /// The row.
        row: usize,
        /// The value.
        value: f32,
    },
    /// A finite vector element so large that squared distances between vectors of this
    /// dimension could overflow `f32` (see [`max_magnitude`]).
    #[error(
        "vector at row {row} has the value {value}, beyond the largest magnitude {limit:e} this dimension allows (larger values make squared distances overflow f32)"
    )]
    TooLarge {
        /// The row.
        row: usize,
        /// The value.
        value: f32,
        /// The largest magnitude allowed.
        limit: f32,
    },
    /// A zero vector under the cosine metric (it has no direction).
    #[error("vector at row {0} is all zeros, which has no cosine distance")]
    ZeroVector(usize),
    /// A string id longer than [`MAX_STRING_ID`] bytes.
    #[error("string id at row {0} is longer than {MAX_STRING_ID} bytes")]
    IdTooLong(usize),
    /// More rows than [`crate::Options::max_batch_rows`].
    #[error("{rows} rows exceed the per-call limit of {limit}")]
    TooManyRows {
        /// Rows in the batch.
        rows: usize,
        /// The limit.
        limit: usize,
    },
    /// Arrow could not assemble the stored batch.
    #[error("arrow: {0}")]
    Arrow(String),
    /// An IPC message given to [`crate::Database::submit_insert_message`] that it does not
    /// log as it is.
    #[error("the IPC message {0}")]
    Message(MessageRefusal),
}

/// Why [`crate::Database::submit_insert_message`] refused a message (insert its decoded batch
/// with [`crate::Database::submit_insert`] instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageRefusal {
    /// The header is not a record batch message.
    #[error("is not a record batch")]
    NotRecordBatch,
    /// The body is compressed (the log stores bodies as they decode).
    #[error("has a compressed body")]
    Compressed,
    /// The schema has dictionary-encoded columns (their values are in other messages).
    #[error("uses dictionaries")]
    Dictionaries,
    /// The body is not as long as the header says.
    #[error("body length differs from its header's")]
    BodyLength,
}

impl From<ArrowError> for BatchError {
    fn from(e: ArrowError) -> Self {
        BatchError::Arrow(e.to_string())
    }
}

/// Vectors in the representation searches use: `f32` (for f32 and f16 collections), `u8` or
/// `i8`, row-major. The buffers are Arrow's, so vectors taken from a batch that needs no
/// conversion share its memory instead of copying it. Cosine vectors are kept as given, with
/// each row's inverse length beside them (4 bytes a row), rather than as a normalised copy: a
/// cosine collection holds one copy of each vector.
#[derive(Clone, Debug, Default)]
pub enum Vectors {
    /// Float vectors.
    F32(ScalarBuffer<f32>),
    /// Float vectors under cosine: the rows as given and `1 / ‖row‖` for each.
    Cosine {
        /// The rows, as given.
        values: ScalarBuffer<f32>,
        /// Each row's inverse length (computed in f64, as
        /// [`unit_length`](quiver_diskgraph::data::unit_length) normalises).
        inverse_norms: ScalarBuffer<f32>,
    },
    /// Unsigned byte vectors.
    U8(ScalarBuffer<u8>),
    /// Signed byte vectors.
    I8(ScalarBuffer<i8>),
    /// No vectors yet (an empty memtable before its first row).
    #[default]
    Empty,
}

/// A validated batch: stored columns in schema order, one key per row, search vectors.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The batch with the collection's Arrow schema.
    pub batch: RecordBatch,
    /// Row keys.
    pub keys: Vec<Key>,
    /// Whether `vectors` shares the batch's vector buffer (no conversion was needed), so it
    /// costs no memory of its own.
    pub vectors_shared: bool,
    /// Search vectors.
    pub vectors: Vectors,
}

fn type_err(column: &str, found: &DataType, expected: DataType) -> BatchError {
    BatchError::ColumnType { column: column.to_string(), found: found.clone(), expected }
}

fn first_null(a: &dyn Array) -> Option<usize> {
    if a.null_count() == 0 {
        return None;
    }
    (0..a.len()).find(|&i| a.is_null(i))
}

/// Keys of an id column of `id_type`, refusing nulls and long strings (repeats are allowed).
///
/// # Errors
/// [`BatchError`] for a wrong type, a null or an over-long string.
pub fn keys_of(ids: &dyn Array, id_type: IdType) -> Result<Vec<Key>, BatchError> {
    if ids.data_type() != &id_type.arrow_type() {
        return Err(type_err(ID_COLUMN, ids.data_type(), id_type.arrow_type()));
    }
    if let Some(row) = first_null(ids) {
        return Err(BatchError::Null { column: ID_COLUMN.into(), row });
    }
    let keys: Vec<Key> = match id_type {
        IdType::U64 => {
            ids.as_primitive::<UInt64Type>().values().iter().map(|&v| Key::Int(v)).collect()
        }
        IdType::I64 => {
            ids.as_primitive::<Int64Type>().values().iter().map(|&v| Key::Int(v as u64)).collect()
        }
        IdType::Utf8 => {
            let s = ids.as_string::<i32>();
            let mut out = Vec::with_capacity(s.len());
            for (i, v) in s.iter().enumerate() {
                let v = v.expect("nulls were refused");
                if v.len() > MAX_STRING_ID {
                    return Err(BatchError::IdTooLong(i));
                }
                out.push(Key::Str(v.into()));
            }
            out
        }
    };
    Ok(keys)
}

/// The rows to keep when `keys` repeats an id, ascending: each id's last occurrence (an id
/// written twice in one batch is an upsert within the batch, and the later row wins). `None`
/// when every id occurs once.
pub fn last_of_each(keys: &[Key]) -> Option<Vec<usize>> {
    let mut last =
        std::collections::HashMap::with_capacity_and_hasher(keys.len(), ahash::RandomState::new());
    for (row, key) in keys.iter().enumerate() {
        last.insert(key, row);
    }
    if last.len() == keys.len() {
        return None;
    }
    let mut rows: Vec<usize> = last.into_values().collect();
    rows.sort_unstable();
    Some(rows)
}

/// A key printed as the user wrote it.
pub fn key_to_string(k: &Key, id_type: IdType) -> String {
    match (k, id_type) {
        (Key::Int(v), IdType::I64) => (*v as i64).to_string(),
        (Key::Int(v), _) => v.to_string(),
        (Key::Str(s), _) => format!("{s:?}"),
    }
}

/// Builds an id array of `id_type` from keys.
pub fn keys_to_array(keys: &[Key], id_type: IdType) -> ArrayRef {
    let int = |k: &Key| match k {
        Key::Int(v) => *v,
        Key::Str(_) => unreachable!("a string key in an integer collection"),
    };
    match id_type {
        IdType::U64 => Arc::new(arrow_array::UInt64Array::from_iter_values(keys.iter().map(int))),
        IdType::I64 => {
            Arc::new(arrow_array::Int64Array::from_iter_values(keys.iter().map(|k| int(k) as i64)))
        }
        IdType::Utf8 => {
            Arc::new(arrow_array::StringArray::from_iter_values(keys.iter().map(|k| match k {
                Key::Str(s) => s.as_ref(),
                Key::Int(_) => unreachable!("an integer key in a string collection"),
            })))
        }
    }
}

/// `batch` (of a collection's schema before columns were added) under `schema`, with nulls in
/// the added columns; the other columns are shared, not copied.
///
/// # Panics
/// If `schema` does not widen the batch's schema (an engine bug: columns are only added).
pub fn widen(batch: &RecordBatch, schema: &arrow_schema::SchemaRef) -> RecordBatch {
    assert!(crate::segment::widens(&batch.schema(), schema), "{schema:?} widens the batch's");
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    for f in schema.fields().iter().skip(columns.len()) {
        columns.push(new_null_array(f.data_type(), rows));
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
        .expect("nullable columns of the batch's length")
}

/// Which values [`prepare`] admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// New input: every rule, including [`max_magnitude`].
    New,
    /// Data already durable (a WAL record being replayed): the rules it was admitted under, so
    /// rows written before a rule was added still recover. The magnitude bound is not applied.
    Logged,
}

/// Validates `batch` against `schema` and converts it to stored form. An id that occurs more
/// than once keeps only its last row (upsert semantics within the batch); every row is
/// validated, including the ones a later row replaces.
///
/// # Errors
/// [`BatchError`] naming the first problem found.
pub fn prepare(
    schema: &CollectionSchema,
    batch: &RecordBatch,
    admit: Admit,
) -> Result<Prepared, BatchError> {
    let prepared = prepare_rows(schema, batch, admit)?;
    match last_of_each(&prepared.keys) {
        None => Ok(prepared),
        Some(rows) => {
            let rows = arrow_array::UInt64Array::from_iter_values(rows.iter().map(|&r| r as u64));
            let kept = arrow_select::take::take_record_batch(batch, &rows)?;
            prepare_rows(schema, &kept, admit)
        }
    }
}

/// [`prepare`] without the merging of repeated ids.
fn prepare_rows(
    schema: &CollectionSchema,
    batch: &RecordBatch,
    admit: Admit,
) -> Result<Prepared, BatchError> {
    let in_schema = batch.schema();
    for f in in_schema.fields() {
        let n = f.name();
        if n != ID_COLUMN
            && n != VECTOR_COLUMN
            && !schema.attributes().iter().any(|a| a.name() == n)
        {
            return Err(BatchError::UnknownColumn(n.clone()));
        }
    }
    let column = |name: &str| batch.column_by_name(name);
    let ids = column(ID_COLUMN).ok_or_else(|| BatchError::MissingColumn(ID_COLUMN.into()))?;
    let keys = keys_of(ids.as_ref(), schema.id_type())?;
    let vector =
        column(VECTOR_COLUMN).ok_or_else(|| BatchError::MissingColumn(VECTOR_COLUMN.into()))?;
    let dim = schema.dim();
    let expected = schema.vector_data_type();
    let DataType::FixedSizeList(item, size) = vector.data_type() else {
        return Err(type_err(VECTOR_COLUMN, vector.data_type(), expected));
    };
    if *size as usize != dim || item.data_type() != &schema.vector_type().arrow_type() {
        return Err(type_err(VECTOR_COLUMN, vector.data_type(), expected));
    }
    if let Some(row) = first_null(vector.as_ref()) {
        return Err(BatchError::Null { column: VECTOR_COLUMN.into(), row });
    }
    let vectors = checked_vectors(schema, vector.as_ref(), admit == Admit::New)?;
    let mut columns: Vec<ArrayRef> = vec![ids.clone(), stored_vector_column(schema, vector)];
    for a in schema.attributes() {
        match column(a.name()) {
            Some(c) => {
                if c.data_type() != a.data_type() {
                    return Err(type_err(a.name(), c.data_type(), a.data_type().clone()));
                }
                if !a.is_nullable()
                    && let Some(row) = first_null(c.as_ref())
                {
                    return Err(BatchError::Null { column: a.name().clone(), row });
                }
                columns.push(c.clone());
            }
            None if a.is_nullable() => {
                columns.push(new_null_array(a.data_type(), batch.num_rows()))
            }
            None => return Err(BatchError::MissingColumn(a.name().clone())),
        }
    }
    let batch = RecordBatch::try_new(schema.arrow_schema(), columns)?;
    Ok(Prepared { batch, keys, vectors, vectors_shared: vectors_share_batch(schema) })
}

/// Search vectors of a vector column already checked to be `FixedSizeList<element>[dim]` with
/// no null lists: refuses null elements, non-finite floats and (under cosine) zero vectors, and
/// normalises under cosine.
///
/// # Errors
/// [`BatchError`] naming the first bad row.
pub fn vectors_of(schema: &CollectionSchema, vector: &dyn Array) -> Result<Vectors, BatchError> {
    checked_vectors(schema, vector, false)
}

/// [`vectors_of`], refusing magnitudes over [`max_magnitude`] too when `bounded`.
fn checked_vectors(
    schema: &CollectionSchema,
    vector: &dyn Array,
    bounded: bool,
) -> Result<Vectors, BatchError> {
    let dim = schema.dim();
    let list = vector.as_fixed_size_list();
    // Sliced batches: the child values of rows offset..offset+len.
    let values = list.values().slice(list.offset() * dim, list.len() * dim);
    if let Some(i) = first_null(values.as_ref()) {
        return Err(BatchError::Null { column: VECTOR_COLUMN.into(), row: i / dim });
    }
    Ok(match schema.vector_type() {
        VectorType::F32 | VectorType::F16 => {
            let cosine = schema.metric() == quiver_diskgraph::data::Metric::Cosine;
            let v: ScalarBuffer<f32> = if schema.vector_type() == VectorType::F32 {
                values.as_primitive::<Float32Type>().values().clone()
            } else {
                values.as_primitive::<Float16Type>().values().iter().map(|x| x.to_f32()).collect()
            };
            let limit = if bounded && !cosine { max_magnitude(dim) } else { f32::MAX };
            if let Some(i) = first_beyond(&v, limit) {
                let (row, value) = (i / dim, v[i]);
                return Err(if value.is_finite() {
                    BatchError::TooLarge { row, value, limit }
                } else {
                    BatchError::NonFinite { row, value }
                });
            }
            if cosine {
                let mut inverse_norms = Vec::with_capacity(v.len() / dim);
                for (row, chunk) in v.chunks_exact(dim).enumerate() {
                    let norm = quiver_diskgraph::data::norm_sq_f64(chunk).sqrt();
                    if norm == 0.0 || !norm.is_finite() {
                        return Err(BatchError::ZeroVector(row));
                    }
                    inverse_norms.push((1.0 / norm) as f32);
                }
                Vectors::Cosine { values: v, inverse_norms: inverse_norms.into() }
            } else {
                Vectors::F32(v)
            }
        }
        VectorType::U8 => Vectors::U8(values.as_primitive::<UInt8Type>().values().clone()),
        VectorType::I8 => Vectors::I8(values.as_primitive::<Int8Type>().values().clone()),
    })
}

/// The largest magnitude an f32 vector element may have under the L2 and inner-product metrics
/// at dimension `dim`: `sqrt(f32::MAX / (8 · dim))`, so that the squared L2 distance between
/// any two such vectors (at most `dim · (2m)²`, half of `f32::MAX`, leaving room for rounding
/// in any summation order) and their dot product stay finite. About 5.8e17 at 128 dimensions,
/// 5.1e16 at the largest (16,384). Cosine normalises vectors, so it needs only finite values.
#[must_use]
pub fn max_magnitude(dim: usize) -> f32 {
    (f64::from(f32::MAX) / (8.0 * dim.max(1) as f64)).sqrt() as f32
}

/// The index of the first value in `v` that is NaN, infinite, or of magnitude above `limit`
/// (a finite, non-negative bound). Checks blocks with a branch-free maximum over the
/// magnitude bits (vectorized; for non-negative floats the bit patterns order like the
/// values, and NaN and infinity lie above every finite bound) and searches only a block that
/// has one: a put's check costs a fraction of a value-by-value scan.
fn first_beyond(v: &[f32], limit: f32) -> Option<usize> {
    const BLOCK: usize = 1024;
    debug_assert!(limit.is_finite() && limit >= 0.0);
    let bound = limit.to_bits();
    for (b, block) in v.chunks(BLOCK).enumerate() {
        let top = block.iter().map(|x| x.to_bits() & 0x7fff_ffff).max().unwrap_or(0);
        if top > bound {
            let i = block
                .iter()
                .position(|x| x.is_nan() || x.abs() > limit)
                .expect("the block has one");
            return Some(b * BLOCK + i);
        }
    }
    None
}

/// Whether [`vectors_of`] returns the column's own buffer (no conversion: f32, u8, i8; under
/// cosine plus 4 bytes a row of inverse lengths, see [`Vectors::extra_bytes`]) rather than a
/// converted copy (f16).
pub fn vectors_share_batch(schema: &CollectionSchema) -> bool {
    match schema.vector_type() {
        VectorType::F32 | VectorType::U8 | VectorType::I8 => true,
        VectorType::F16 => false,
    }
}

/// Scales `v` to unit length (in f64); false for a zero vector, which is left alone.
pub fn normalize(v: &mut [f32]) -> bool {
    quiver_diskgraph::data::unit_length(v)
}

impl Vectors {
    /// Values held (rows × dim).
    pub fn values(&self) -> usize {
        match self {
            Vectors::F32(v) | Vectors::Cosine { values: v, .. } => v.len(),
            Vectors::U8(v) => v.len(),
            Vectors::I8(v) => v.len(),
            Vectors::Empty => 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Vectors::F32(v) => 4 * v.len(),
            Vectors::Cosine { values, inverse_norms } => 4 * (values.len() + inverse_norms.len()),
            _ => self.values(),
        }
    }

    /// Bytes held beside a buffer shared with the batch: the inverse lengths of cosine rows.
    pub fn extra_bytes(&self) -> usize {
        match self {
            Vectors::Cosine { inverse_norms, .. } => 4 * inverse_norms.len(),
            _ => 0,
        }
    }

    /// The factor row `i`'s distances are taken with: its inverse length under cosine, else 1.
    pub fn scale(&self, i: usize) -> f32 {
        match self {
            Vectors::Cosine { inverse_norms, .. } => inverse_norms[i],
            _ => 1.0,
        }
    }

    /// Row `i` of `dim` values.
    pub fn row(&self, i: usize, dim: usize) -> Row<'_> {
        let r = i * dim..(i + 1) * dim;
        match self {
            Vectors::F32(v) | Vectors::Cosine { values: v, .. } => Row::F32(&v[r]),
            Vectors::U8(v) => Row::U8(&v[r]),
            Vectors::I8(v) => Row::I8(&v[r]),
            Vectors::Empty => panic!("row {i} of no vectors"),
        }
    }

    /// The bytes of the values held, in native byte order (a scalar buffer's inner buffer is
    /// sliced to exactly its values).
    pub(crate) fn value_bytes(&self) -> &[u8] {
        match self {
            Vectors::F32(v) | Vectors::Cosine { values: v, .. } => v.inner().as_slice(),
            Vectors::U8(v) => v.inner().as_slice(),
            Vectors::I8(v) => v.inner().as_slice(),
            Vectors::Empty => &[],
        }
    }

    /// `parts` (all of one element type, or empty) one after another, in one buffer.
    pub fn concat(parts: &[Vectors]) -> Vectors {
        fn cat<T: arrow_buffer::ArrowNativeType>(
            parts: &[Vectors],
            get: impl Fn(&Vectors) -> Option<&ScalarBuffer<T>>,
        ) -> ScalarBuffer<T> {
            let mut out = Vec::with_capacity(parts.iter().map(Vectors::values).sum());
            for p in parts {
                match get(p) {
                    Some(b) => out.extend_from_slice(b),
                    None => assert!(
                        matches!(p, Vectors::Empty),
                        "concatenating vectors of different element types"
                    ),
                }
            }
            out.into()
        }
        match parts.iter().find(|p| !matches!(p, Vectors::Empty)) {
            None => Vectors::Empty,
            Some(Vectors::F32(_)) => Vectors::F32(cat(parts, |p| match p {
                Vectors::F32(b) => Some(b),
                _ => None,
            })),
            Some(Vectors::Cosine { .. }) => Vectors::Cosine {
                values: cat(parts, |p| match p {
                    Vectors::Cosine { values, .. } => Some(values),
                    _ => None,
                }),
                inverse_norms: cat(parts, |p| match p {
                    Vectors::Cosine { inverse_norms, .. } => Some(inverse_norms),
                    _ => None,
                }),
            },
            Some(Vectors::U8(_)) => Vectors::U8(cat(parts, |p| match p {
                Vectors::U8(b) => Some(b),
                _ => None,
            })),
            Some(Vectors::I8(_)) => Vectors::I8(cat(parts, |p| match p {
                Vectors::I8(b) => Some(b),
                _ => None,
            })),
            Some(Vectors::Empty) => unreachable!("found a non-empty part"),
        }
    }

    /// These vectors, copied into a buffer of their own if the one they share holds more than
    /// twice their bytes (a batch decoded from one message shares its ids' and attributes'
    /// memory too), so holding them does not hold much else. An allocation of unknown size
    /// (owned outside Arrow) counts as too large.
    pub fn compact(&self) -> Vectors {
        fn keep<T: arrow_buffer::ArrowNativeType>(b: &ScalarBuffer<T>) -> ScalarBuffer<T> {
            let cap = b.inner().capacity();
            if cap != 0 && cap <= 2 * b.inner().len() { b.clone() } else { b.to_vec().into() }
        }
        match self {
            Vectors::F32(v) => Vectors::F32(keep(v)),
            Vectors::Cosine { values, inverse_norms } => {
                Vectors::Cosine { values: keep(values), inverse_norms: keep(inverse_norms) }
            }
            Vectors::U8(v) => Vectors::U8(keep(v)),
            Vectors::I8(v) => Vectors::I8(keep(v)),
            Vectors::Empty => Vectors::Empty,
        }
    }

    /// The rows `rows` (in that order) as new vectors.
    pub fn select(&self, rows: &[u32], dim: usize) -> Vectors {
        fn pick<T: Copy>(v: &[T], rows: &[u32], dim: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(rows.len() * dim);
            for &r in rows {
                let r = r as usize;
                out.extend_from_slice(&v[r * dim..(r + 1) * dim]);
            }
            out
        }
        match self {
            Vectors::F32(v) => Vectors::F32(pick(v, rows, dim).into()),
            Vectors::Cosine { values, inverse_norms } => Vectors::Cosine {
                values: pick(values, rows, dim).into(),
                inverse_norms: pick(inverse_norms, rows, 1).into(),
            },
            Vectors::U8(v) => Vectors::U8(pick(v, rows, dim).into()),
            Vectors::I8(v) => Vectors::I8(pick(v, rows, dim).into()),
            Vectors::Empty => Vectors::Empty,
        }
    }

    /// A copy as a [`VectorSet`] (what the index builder takes).
    ///
    /// # Errors
    /// If the set is empty or too large for a vector set.
    pub fn to_vector_set(
        &self,
        dim: usize,
    ) -> Result<VectorSet, quiver_diskgraph::data::DataError> {
        match self {
            // Cosine rows go as given: the index builder normalises them itself.
            Vectors::F32(v) | Vectors::Cosine { values: v, .. } => VectorSet::from_f32(dim, v),
            Vectors::U8(v) => VectorSet::from_u8(dim, v),
            Vectors::I8(v) => VectorSet::from_i8(dim, v),
            Vectors::Empty => Err(quiver_diskgraph::data::DataError::Invalid("no vectors".into())),
        }
    }
}

/// The vector column relabelled with the stored field (child named `item`), so batches
/// from clients that name the child differently still match the stored schema.
fn stored_vector_column(schema: &CollectionSchema, vector: &ArrayRef) -> ArrayRef {
    let list = vector.as_fixed_size_list();
    let DataType::FixedSizeList(field, size) = schema.vector_data_type() else {
        unreachable!("vector_data_type is a FixedSizeList")
    };
    Arc::new(arrow_array::FixedSizeListArray::new(
        field,
        size,
        list.values().slice(list.offset() * size as usize, list.len() * size as usize),
        None,
    ))
}

/// Ids a delete names, validated against the collection's id type.
///
/// # Errors
/// [`BatchError`] for a wrong type, nulls or over-long strings (duplicates are allowed).
pub fn delete_keys(ids: &dyn Array, id_type: IdType) -> Result<Vec<Key>, BatchError> {
    let keys = keys_of(ids, id_type)?;
    let mut seen = HashSet::with_capacity(keys.len());
    Ok(keys.into_iter().filter(|k| seen.insert(k.clone())).collect())
}

/// WAL record kinds.
pub mod kind {
    /// An insert: collection id, then an Arrow IPC stream of the stored batch.
    pub const INSERT: u8 = 1;
    /// A delete: collection id, then an Arrow IPC stream of a one-column (`id`) batch.
    pub const DELETE: u8 = 2;
}

/// Encodes a WAL payload: the collection id (u64 LE), then `batch` as an Arrow IPC stream.
///
/// # Errors
/// If Arrow cannot encode the batch.
pub fn encode_payload(collection: u64, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    encode_payload_into(&mut out, collection, batch)?;
    Ok(out)
}

/// The bytes `batch`'s values occupy: not its buffers' capacities, which overcount a batch
/// decoded from one message (every column shares that message's buffer).
pub fn value_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum()
}

/// The heap bytes `batch` keeps alive: every distinct allocation under its arrays (their
/// buffers, validity bitmaps and children), once each, whole. A batch decoded from one IPC
/// message holds that message's body whole, and its columns all slice it:
/// `RecordBatch::get_array_memory_size` counts the body once per column (a 10,000-row
/// float batch of 5.2 MB counted 15.6), and [`value_bytes`] counts only the slices.
pub fn held_bytes(batch: &RecordBatch) -> usize {
    fn walk(data: &arrow_data::ArrayData, seen: &mut std::collections::HashMap<usize, usize>) {
        let nulls = data.nulls().map(|n| n.buffer());
        for b in data.buffers().iter().chain(nulls) {
            seen.insert(b.data_ptr().as_ptr() as usize, b.capacity());
        }
        for child in data.child_data() {
            walk(child, seen);
        }
    }
    let mut seen = std::collections::HashMap::new();
    for column in batch.columns() {
        walk(&column.to_data(), &mut seen);
    }
    seen.values().sum()
}

/// [`encode_payload`] into `out` (cleared first), reusing its memory.
///
/// # Errors
/// If Arrow cannot encode the batch.
pub fn encode_payload_into(
    out: &mut Vec<u8>,
    collection: u64,
    batch: &RecordBatch,
) -> Result<(), ArrowError> {
    out.clear();
    // The batch's values, plus room for IPC framing.
    out.reserve(8 + value_bytes(batch) + 4096);
    out.extend_from_slice(&collection.to_le_bytes());
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut *out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(())
}

/// The WAL payload of the record batch message (`header`, `body`) of `schema`, in the form
/// [`encode_payload`] writes — the collection id, then an IPC stream of the schema, the message
/// and its end — as parts: everything before the body, the body itself (shared, not copied),
/// and the stream's end. Decodes with [`decode_payload`] to the batch the message decodes to.
///
/// # Errors
/// If Arrow cannot encode the schema.
pub fn message_payload(
    collection: u64,
    schema: &Schema,
    header: &[u8],
    body: bytes::Bytes,
) -> Result<Vec<bytes::Bytes>, ArrowError> {
    let options = arrow_ipc::writer::IpcWriteOptions::default();
    let mut tracker = arrow_ipc::writer::DictionaryTracker::new(false);
    let encoded = arrow_ipc::writer::IpcDataGenerator::default()
        .schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &options);
    let mut head = Vec::with_capacity(64 + encoded.ipc_message.len() + header.len());
    head.extend_from_slice(&collection.to_le_bytes());
    frame_message(&mut head, &encoded.ipc_message);
    frame_message(&mut head, header);
    Ok(vec![bytes::Bytes::from(head), body, bytes::Bytes::from_static(&IPC_END_OF_STREAM)])
}

/// An IPC stream's end: the continuation marker and a zero length.
const IPC_END_OF_STREAM: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// Appends an encapsulated IPC message's framing and `flatbuffer`: the continuation marker,
/// the padded length, the flatbuffer, zeros to a multiple of 8 (the body, if any, follows).
fn frame_message(out: &mut Vec<u8>, flatbuffer: &[u8]) {
    let padded = flatbuffer.len().next_multiple_of(8);
    let length = i32::try_from(padded).expect("IPC message headers are far below 2 GiB");
    out.extend_from_slice(&[0xff; 4]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(flatbuffer);
    out.resize(out.len() + padded - flatbuffer.len(), 0);
}

/// Why a WAL payload was refused ([`decode_payload`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Fewer than the 8 bytes of its collection id.
    #[error("payload shorter than its collection id")]
    Short,
    /// The Arrow IPC stream does not open.
    #[error("IPC stream: {0}")]
    Stream(ArrowError),
    /// The stream's batch does not decode.
    #[error("IPC batch: {0}")]
    Batch(ArrowError),
    /// Not exactly one batch.
    #[error("IPC stream holds {0} batches, not one")]
    Batches(&'static str),
}

/// Decodes a WAL payload written by [`encode_payload`].
///
/// # Errors
/// [`PayloadError`]: what is malformed.
pub fn decode_payload(payload: &[u8]) -> Result<(u64, RecordBatch), PayloadError> {
    if payload.len() < 8 {
        return Err(PayloadError::Short);
    }
    let collection = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let mut r = arrow_ipc::reader::StreamReader::try_new(&payload[8..], None)
        .map_err(PayloadError::Stream)?;
    let batch = r.next().ok_or(PayloadError::Batches("no"))?.map_err(PayloadError::Batch)?;
    if r.next().is_some() {
        return Err(PayloadError::Batches("more than one"));
    }
    Ok((collection, batch))
}

/// Whether `data_type` is, or holds, a dictionary-encoded type.
pub fn has_dictionary(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(ends, values) => {
            has_dictionary(ends.data_type()) || has_dictionary(values.data_type())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments hold the vectors of flushed batches until they are indexed. Vectors sharing a
    /// buffer much larger than themselves (a whole message's ids and attributes) must be copied
    /// out, or a segment would pin all of that memory; vectors with a buffer of their own must
    /// not be copied again.
    #[test]
    fn compact_copies_vectors_out_of_a_much_larger_buffer_and_shares_their_own() {
        let own: ScalarBuffer<f32> = (0..64).map(|i| i as f32).collect::<Vec<_>>().into();
        let shared = Vectors::F32(own.clone()).compact();
        let Vectors::F32(s) = &shared else { panic!("f32 in, f32 out") };
        assert_eq!(s.as_ptr(), own.as_ptr(), "a buffer of their own is shared");

        let big: ScalarBuffer<f32> = (0..6400).map(|i| i as f32).collect::<Vec<_>>().into();
        let slice = big.slice(100, 64);
        let compacted = Vectors::F32(slice.clone()).compact();
        let Vectors::F32(c) = &compacted else { panic!("f32 in, f32 out") };
        assert_ne!(c.as_ptr(), slice.as_ptr(), "a slice of a 100x larger buffer is copied");
        assert_eq!(&c[..], &slice[..]);
        assert!(c.inner().capacity() <= 2 * c.inner().len());
    }

    /// The blockwise search must find the same first NaN or infinity as a value-by-value scan,
    /// wherever it falls relative to the blocks (first, last, at an edge, in a short tail), and
    /// none in finite values up to the largest.
    #[test]
    fn first_non_finite_finds_the_first_bad_value_at_any_position() {
        let first_non_finite = |v: &[f32]| first_beyond(v, f32::MAX);
        let oracle = |v: &[f32]| v.iter().position(|x| !x.is_finite());
        for len in [0usize, 1, 5, 1023, 1024, 1025, 3000] {
            let base: Vec<f32> =
                (0..len).map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MIN_POSITIVE }).collect();
            assert_eq!(first_non_finite(&base), None, "finite values, len {len}");
            for at in [0, 1, 1022, 1023, 1024, 1025, 2047, 2048, len.saturating_sub(1)] {
                if at >= len {
                    continue;
                }
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                    let mut v = base.clone();
                    v[at] = bad;
                    if at + 700 < len {
                        v[at + 700] = f32::NAN; // a later one must not win
                    }
                    assert_eq!(first_non_finite(&v), oracle(&v), "len {len}, {bad} at {at}");
                    assert_eq!(first_non_finite(&v), Some(at));
                }
            }
        }
    }

    /// Finite values past the magnitude bound are found like NaN, at any position, and values
    /// at the bound pass; at the bound, the largest squared L2 distance is still finite.
    #[test]
    fn values_beyond_the_magnitude_bound_are_found_and_the_bound_keeps_distances_finite() {
        for dim in [1usize, 128, 16_384] {
            let m = max_magnitude(dim);
            let worst: f64 = f64::from(2.0 * m).powi(2) * dim as f64;
            assert!(worst <= f64::from(f32::MAX), "dim {dim}");
            let mut sum = 0f32;
            for _ in 0..dim {
                sum += (m - (-m)) * (m - (-m));
            }
            assert!(sum.is_finite(), "dim {dim}: f32 accumulation at the bound");
            for len in [1usize, 1024, 1500] {
                let mut v = vec![m; len];
                v[len / 2] = -m;
                assert_eq!(first_beyond(&v, m), None);
                let next = f32::from_bits(m.to_bits() + 1);
                for at in [0, len / 2, len - 1] {
                    let mut w = v.clone();
                    w[at] = if at % 2 == 0 { next } else { -next };
                    assert_eq!(first_beyond(&w, m), Some(at), "dim {dim} len {len} at {at}");
                }
            }
        }
    }
}

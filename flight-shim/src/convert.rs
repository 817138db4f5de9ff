//! From the batches Flight clients send to the engine's collections: a collection schema inferred
//! from the first batch, and each later batch conformed to it (column aliases, `float64` vectors
//! stored as `float32`, narrower integer ids widened). Anything that cannot be conformed is left
//! for the engine to refuse with its own precise error.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{DataType, Field, Metadata, Schema};
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, IdType, VectorType};

pub use quiver_engine::{ID_COLUMN, VECTOR_COLUMN};
/// Other names clients give the vector column; renamed to [`VECTOR_COLUMN`] on ingest.
pub const VECTOR_ALIASES: [&str; 1] = ["embedding"];
/// Schema metadata keys naming the metric, in order of precedence.
pub const METRIC_KEYS: [&str; 2] = ["quiver.metric", "longbow.metric"];

/// Why a batch's schema or values cannot make or fill a collection (the Flight layer answers
/// `InvalidArgument` with the message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A metric name Quiver does not know.
    #[error("unknown metric {0:?}; expected euclidean (or l2), cosine, or dot_product (or ip)")]
    UnknownMetric(String),
    /// Schema metadata naming an unknown metric.
    #[error("schema metadata {key}: {source}")]
    Metadata {
        /// The metadata key.
        key: &'static str,
        /// What is wrong with its value.
        source: Box<ConvertError>,
    },
    /// No vector column.
    #[error(
        "the batch has no vector column: expected a column named {VECTOR_COLUMN:?} (or \"embedding\") of type FixedSizeList<float32|float16|float64|uint8|int8|int16..uint64>"
    )]
    NoVectorColumn,
    /// A vector column of a type Quiver cannot store.
    #[error(
        "vector column {name:?} has type {data_type}; expected FixedSizeList of float32, float16, float64, uint8, int8 or a wider integer with at least one element"
    )]
    VectorType {
        /// The column.
        name: String,
        /// Its type.
        data_type: DataType,
    },
    /// No `id` column.
    #[error("the batch has no \"id\" column (uint64, int64 or utf8)")]
    NoIdColumn,
    /// An `id` column of a type Quiver cannot key by.
    #[error("id column has type {0}; expected uint64, int64 or utf8")]
    IdType(DataType),
    /// The schema the batch implies is not a valid collection schema.
    #[error(transparent)]
    Schema(#[from] quiver_engine::SchemaError),
    /// A value that does not fit the collection's type.
    #[error("{what}: cannot convert to {to}: {source}")]
    Cast {
        /// The column.
        what: String,
        /// The type it was cast to.
        to: DataType,
        /// Arrow's reason.
        source: arrow_schema::ArrowError,
    },
    /// An integer vector element `f32` cannot hold exactly.
    #[error(
        "{}: integer vectors are stored as float32, which holds integers exactly only within ±{MAX_EXACT_F32_INTEGER} (2^24); scale the values down or send float32",
        match at { Some((row, value)) => format!("vector at row {row} has the integer {value}"), None => "the vector column has an integer beyond 2^63".to_string() }
    )]
    IntegerTooWide {
        /// The row and the value, when it fits in `i64`.
        at: Option<(usize, i64)>,
    },
    /// The batch's metadata asks for another metric than the collection's.
    #[error(
        "collection {collection:?} uses the {} metric, but the batch's schema metadata asks for {}",
        metric_name(*has), metric_name(*asked)
    )]
    MetricConflict {
        /// The collection.
        collection: String,
        /// Its metric.
        has: Metric,
        /// The metric the batch asks for.
        asked: Metric,
    },
    /// Arrow could not assemble the conformed batch.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Parses a metric name: `euclidean`/`l2`, `cosine`, `dot_product`/`dot`/`ip`/`inner_product`
/// (any case).
///
/// # Errors
/// [`ConvertError::UnknownMetric`], naming the accepted spellings.
pub fn parse_metric(name: &str) -> Result<Metric, ConvertError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "euclidean" | "l2" => Ok(Metric::L2),
        "cosine" => Ok(Metric::Cosine),
        "dot_product" | "dot" | "ip" | "inner_product" => Ok(Metric::InnerProduct),
        other => Err(ConvertError::UnknownMetric(other.to_string())),
    }
}

/// The element type's name in replies (`float32`, `float16`, `uint8`, `int8`).
pub fn element_type_name(t: VectorType) -> &'static str {
    match t {
        VectorType::F32 => "float32",
        VectorType::F16 => "float16",
        VectorType::U8 => "uint8",
        VectorType::I8 => "int8",
        _ => "other",
    }
}

/// The metric's name in tickets and replies.
pub fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::L2 => "euclidean",
        Metric::Cosine => "cosine",
        Metric::InnerProduct => "dot_product",
    }
}

/// The metric named by schema metadata (`quiver.metric`, else `longbow.metric`), if any.
///
/// # Errors
/// [`ConvertError::Metadata`]: the value is not a metric name.
pub fn metric_from_metadata(md: &Metadata) -> Result<Option<Metric>, ConvertError> {
    for key in METRIC_KEYS {
        if let Some(v) = md.get(key) {
            return parse_metric(v)
                .map(Some)
                .map_err(|e| ConvertError::Metadata { key, source: Box::new(e) });
        }
    }
    Ok(None)
}

/// The index of the vector column: `vector`, or an alias when there is no `vector`.
fn vector_index(schema: &Schema) -> Result<usize, ConvertError> {
    if let Ok(i) = schema.index_of(VECTOR_COLUMN) {
        return Ok(i);
    }
    VECTOR_ALIASES.iter().find_map(|a| schema.index_of(a).ok()).ok_or(ConvertError::NoVectorColumn)
}

/// The largest integer magnitude `f32` holds exactly (2^24): integer vector elements are stored
/// as `f32` only up to it.
pub const MAX_EXACT_F32_INTEGER: i64 = 1 << 24;

fn element_type(dt: &DataType) -> Option<VectorType> {
    match dt {
        DataType::Float32 | DataType::Float64 => Some(VectorType::F32),
        // Longbow stores wider integers; Quiver indexes them as f32, exactly or not at all.
        DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Some(VectorType::F32),
        DataType::Float16 => Some(VectorType::F16),
        DataType::UInt8 => Some(VectorType::U8),
        DataType::Int8 => Some(VectorType::I8),
        _ => None,
    }
}

fn id_type(dt: &DataType) -> Option<IdType> {
    match dt {
        DataType::UInt64 | DataType::UInt32 | DataType::UInt16 | DataType::UInt8 => {
            Some(IdType::U64)
        }
        DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => Some(IdType::I64),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(IdType::Utf8),
        _ => None,
    }
}

/// The collection schema a first batch implies: its vector column's element type and length,
/// its id column's type, the metric from its schema metadata (default euclidean), and every
/// other column as an attribute.
///
/// # Errors
/// [`ConvertError`] saying which column is missing or of which unsupported type.
pub fn infer_schema(schema: &Schema) -> Result<CollectionSchema, ConvertError> {
    let vi = vector_index(schema)?;
    let vf = schema.field(vi);
    let (elem, dim) = match vf.data_type() {
        DataType::FixedSizeList(item, n) if *n > 0 => match element_type(item.data_type()) {
            Some(e) => (e, *n as u32),
            None => {
                let (name, data_type) = (vf.name().clone(), vf.data_type().clone());
                return Err(ConvertError::VectorType { name, data_type });
            }
        },
        other => {
            let (name, data_type) = (vf.name().clone(), other.clone());
            return Err(ConvertError::VectorType { name, data_type });
        }
    };
    let ii = schema.index_of(ID_COLUMN).map_err(|_| ConvertError::NoIdColumn)?;
    let idt = id_type(schema.field(ii).data_type())
        .ok_or_else(|| ConvertError::IdType(schema.field(ii).data_type().clone()))?;
    let metric = metric_from_metadata(schema.metadata())?.unwrap_or(Metric::L2);
    let mut cs = CollectionSchema::new(dim, elem, metric).with_id_type(idt);
    for (i, f) in schema.fields().iter().enumerate() {
        if i == vi || i == ii {
            continue;
        }
        cs = cs.with_attribute(Field::new(f.name(), f.data_type().clone(), f.is_nullable()));
    }
    cs.validate()?;
    Ok(cs)
}

fn cast_exact(a: &ArrayRef, to: &DataType, what: &str) -> Result<ArrayRef, ConvertError> {
    let opts = CastOptions { safe: false, ..CastOptions::default() };
    cast_with_options(a, to, &opts).map_err(|source| ConvertError::Cast {
        what: what.to_string(),
        to: to.clone(),
        source,
    })
}

/// Whether `a` and `b` are the same type up to the width of their offsets (or views): `utf8`,
/// `large_utf8` and `utf8_view`; `binary`, `large_binary` and `binary_view`; `list` and
/// `large_list` of such types. pyarrow writes `utf8` and pandas 3 `large_string` for the same
/// column, so a collection created by one client takes the other's batches.
fn offset_widths_differ(a: &DataType, b: &DataType) -> bool {
    use DataType::{Binary, BinaryView, LargeBinary, LargeList, LargeUtf8, List, Utf8, Utf8View};
    let same_or_widths = |x: &DataType, y: &DataType| x == y || offset_widths_differ(x, y);
    match (a, b) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (List(x) | LargeList(x), List(y) | LargeList(y)) => {
            same_or_widths(x.data_type(), y.data_type())
        }
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && x != y && offset_widths_differ(x.data_type(), y.data_type())
        }
        _ => false,
    }
}

/// `batch` shaped for the collection: the vector alias renamed, `float64` vectors cast to the
/// collection's float type, integer vectors cast exactly to the collection's element type (or
/// refused), narrower ids widened, string, binary and list columns cast between
/// offset widths (`utf8` and `large_utf8`, say), schema metadata dropped. Columns that do not
/// fit are passed through for the engine to refuse by name.
///
/// # Errors
/// [`ConvertError`]: a cast that would lose information (an id out of range, an integer vector
/// element beyond what the element type holds).
pub fn conform(batch: &RecordBatch, cs: &CollectionSchema) -> Result<RecordBatch, ConvertError> {
    let schema = batch.schema();
    let vi = vector_index(&schema).ok();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let mut col = batch.column(i).clone();
        let mut name = f.name().clone();
        if Some(i) == vi {
            name = VECTOR_COLUMN.to_string();
            let want = cs.vector_data_type();
            if let (DataType::FixedSizeList(item, n), DataType::FixedSizeList(witem, wn)) =
                (col.data_type(), &want)
                && n == wn
            {
                let (from, to) = (item.data_type(), witem.data_type());
                if from == &DataType::Float64 && matches!(to, DataType::Float32 | DataType::Float16)
                {
                    col = cast_exact(&col, &want, "vector column")?;
                } else if from.is_integer() && from != to {
                    col = integer_vectors(&col, &want, to)?;
                }
            }
        } else if name == ID_COLUMN {
            let want = cs.id_type().arrow_type();
            if col.data_type() != &want && id_type(col.data_type()) == Some(cs.id_type()) {
                col = cast_exact(&col, &want, "id column")?;
            }
        } else if let Some(a) = cs.attributes().iter().find(|a| a.name() == &name)
            && col.data_type() != a.data_type()
            && offset_widths_differ(col.data_type(), a.data_type())
        {
            col = cast_exact(&col, a.data_type(), &format!("column {name:?}"))?;
        }
        fields.push(Field::new(name, col.data_type().clone(), f.is_nullable()));
        columns.push(col);
    }
    let out = Schema::new(fields);
    Ok(RecordBatch::try_new(Arc::new(out), columns)?)
}

/// An integer vector column as the collection's element type, without changing a value: to
/// `f32` when every element is within ±2^24 ([`MAX_EXACT_F32_INTEGER`]), to `u8` or `i8` when
/// every element fits. Anything else is refused, naming the row and the value.
fn integer_vectors(
    col: &ArrayRef,
    want: &DataType,
    to: &DataType,
) -> Result<ArrayRef, ConvertError> {
    use arrow_array::types::Int64Type;
    let list = col.as_any().downcast_ref::<arrow_array::FixedSizeListArray>().expect("a list");
    let dim = list.value_length() as usize;
    match to {
        DataType::Float32 => {
            let values = list.values().slice(list.offset() * dim, list.len() * dim);
            let wide = cast_exact(&values, &DataType::Int64, "vector column")
                .map_err(|_| ConvertError::IntegerTooWide { at: None })?;
            let wide = wide.as_any().downcast_ref::<arrow_array::PrimitiveArray<Int64Type>>();
            let wide = wide.expect("cast to Int64");
            if let Some(i) = wide.values().iter().position(|v| v.abs() > MAX_EXACT_F32_INTEGER) {
                return Err(ConvertError::IntegerTooWide { at: Some((i / dim, wide.value(i))) });
            }
            cast_exact(col, want, "vector column")
        }
        DataType::UInt8 | DataType::Int8 => cast_exact(col, want, "vector column"),
        _ => Ok(col.clone()), // left for the engine to refuse by name
    }
}

/// The columns of a conformed batch that collection `cs` lacks: attributes a put adds
/// (nullable, so the earlier rows read null in them).
pub fn added_columns(batch_schema: &Schema, cs: &CollectionSchema) -> Vec<Field> {
    batch_schema
        .fields()
        .iter()
        .filter(|f| f.name() != ID_COLUMN && f.name() != VECTOR_COLUMN)
        .filter(|f| !cs.attributes().iter().any(|a| a.name() == f.name()))
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect()
}

/// Checks that a batch's metadata does not ask for a different metric than the collection's.
///
/// # Errors
/// [`ConvertError::MetricConflict`] naming both metrics, or a metadata metric Quiver does not
/// know.
pub fn check_metric(
    name: &str,
    batch_schema: &Schema,
    cs: &CollectionSchema,
) -> Result<(), ConvertError> {
    if let Some(asked) = metric_from_metadata(batch_schema.metadata())?
        && asked != cs.metric()
    {
        let collection = name.to_string();
        return Err(ConvertError::MetricConflict { collection, has: cs.metric(), asked });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::Float64Type;
    use arrow_array::{FixedSizeListArray, Int32Array, StringArray};
    use std::collections::HashMap;

    fn f64_batch(metric: Option<&str>) -> RecordBatch {
        let v = FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
            vec![Some(vec![Some(1.0), Some(2.0)]), Some(vec![Some(3.0), Some(4.0)])],
            2,
        );
        let mut md = HashMap::new();
        if let Some(m) = metric {
            md.insert("longbow.metric".to_string(), m.to_string());
        }
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("embedding", v.data_type().clone(), true),
            Field::new("tag", DataType::Utf8, true),
        ])
        .with_metadata(md);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(v),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn float64_embedding_and_int32_ids_become_f32_vector_and_i64_ids() {
        let b = f64_batch(Some("Cosine"));
        let cs = infer_schema(&b.schema()).unwrap();
        assert_eq!(cs.vector_type(), VectorType::F32);
        assert_eq!(cs.id_type(), IdType::I64);
        assert_eq!(cs.metric(), Metric::Cosine);
        assert_eq!(cs.dim(), 2);
        assert_eq!(cs.attributes().len(), 1);
        let c = conform(&b, &cs).unwrap();
        assert_eq!(c.schema().field(1).name(), "vector");
        assert_eq!(c.column(1).data_type(), &cs.vector_data_type());
        assert_eq!(c.column(0).data_type(), &DataType::Int64);
        assert!(c.schema().metadata().is_empty());
    }

    #[test]
    fn string_binary_and_list_columns_are_taken_in_either_offset_width() {
        use arrow_array::{BinaryArray, LargeBinaryArray, LargeListArray, LargeStringArray};
        use arrow_array::{ListArray, types::Int32Type};
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]);
        let large_list = LargeListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]);
        let make = |tag: ArrayRef, blob: ArrayRef, nums: ArrayRef| {
            let v = FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
                vec![Some(vec![Some(1.0), Some(2.0)]), Some(vec![Some(3.0), Some(4.0)])],
                2,
            );
            let schema = Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("vector", v.data_type().clone(), true),
                Field::new("tag", tag.data_type().clone(), true),
                Field::new("blob", blob.data_type().clone(), true),
                Field::new("nums", nums.data_type().clone(), true),
            ]);
            let id: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
            RecordBatch::try_new(Arc::new(schema), vec![id, Arc::new(v), tag, blob, nums]).unwrap()
        };
        let narrow = make(
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(BinaryArray::from(vec![Some(&b"x"[..]), None])),
            Arc::new(list),
        );
        let wide = make(
            Arc::new(LargeStringArray::from(vec![Some("a"), None])),
            Arc::new(LargeBinaryArray::from(vec![Some(&b"x"[..]), None])),
            Arc::new(large_list),
        );
        for (created_by, sent) in [(&narrow, &wide), (&wide, &narrow)] {
            let cs = infer_schema(&created_by.schema()).unwrap();
            let c = conform(sent, &cs).unwrap();
            for (i, a) in cs.attributes().iter().enumerate() {
                assert_eq!(c.column(2 + i).data_type(), a.data_type());
                assert_eq!(c.column(2 + i).to_data(), created_by.column(2 + i).to_data());
            }
        }
        // A different element type is not a width: left for the engine to refuse by name.
        let cs = infer_schema(&narrow.schema()).unwrap();
        let ints = make(
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(BinaryArray::from(vec![Some(&b"x"[..]), None])),
            narrow.column(4).clone(),
        );
        assert_eq!(conform(&ints, &cs).unwrap().column(2).data_type(), &DataType::Int32);
    }

    #[test]
    fn integer_vectors_are_stored_exactly_or_refused_by_row_and_value() {
        use arrow_array::types::{Int32Type, UInt16Type, UInt64Type};
        fn batch_of<T: arrow_array::ArrowPrimitiveType>(rows: Vec<Vec<T::Native>>) -> RecordBatch {
            let v = FixedSizeListArray::from_iter_primitive::<T, _, _>(
                rows.into_iter().map(|r| Some(r.into_iter().map(Some).collect::<Vec<_>>())),
                2,
            );
            let n = v.len() as i64;
            let schema = Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("vector", v.data_type().clone(), false),
            ]);
            let ids = arrow_array::Int64Array::from_iter_values(0..n);
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(v)]).unwrap()
        }
        let first = batch_of::<Int32Type>(vec![vec![-5, 16_777_216], vec![7, 0]]);
        let cs = infer_schema(&first.schema()).unwrap();
        assert_eq!(cs.vector_type(), VectorType::F32);
        let c = conform(&first, &cs).unwrap();
        let values = c.column(1).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let values = values.values().as_any().downcast_ref::<arrow_array::Float32Array>();
        assert_eq!(values.unwrap().values().to_vec(), vec![-5.0, 16_777_216.0, 7.0, 0.0]);
        let e = conform(&batch_of::<Int32Type>(vec![vec![1, 2], vec![3, -16_777_217]]), &cs);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("-16777217") && e.contains("2^24"), "{e}");
        let e =
            conform(&batch_of::<UInt64Type>(vec![vec![u64::MAX, 1]]), &cs).unwrap_err().to_string();
        assert!(e.contains("2^24"), "{e}");
        // Into a uint8 collection: exact or refused.
        let u8_cs = CollectionSchema::new(2, VectorType::U8, Metric::L2).with_id_type(IdType::I64);
        let c = conform(&batch_of::<UInt16Type>(vec![vec![0, 255]]), &u8_cs).unwrap();
        assert_eq!(c.column(1).data_type(), &u8_cs.vector_data_type());
        let e =
            conform(&batch_of::<UInt16Type>(vec![vec![0, 256]]), &u8_cs).unwrap_err().to_string();
        assert!(e.contains("vector column"), "{e}");
    }

    #[test]
    fn unknown_metric_and_missing_columns_are_named() {
        let e = infer_schema(&f64_batch(Some("manhattan")).schema()).unwrap_err().to_string();
        assert!(e.contains("manhattan") && e.contains("euclidean"), "{e}");
        let no_vec = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        assert!(infer_schema(&no_vec).unwrap_err().to_string().contains("no vector column"));
        let bad_vec = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("vector", DataType::Utf8, false),
        ]);
        assert!(infer_schema(&bad_vec).unwrap_err().to_string().contains("FixedSizeList"));
    }

    #[test]
    fn metric_conflict_is_refused() {
        let b = f64_batch(Some("l2"));
        let cs = infer_schema(&f64_batch(Some("cosine")).schema()).unwrap();
        let e = check_metric("c", &b.schema(), &cs).unwrap_err().to_string();
        assert!(e.contains("cosine") && e.contains("euclidean"), "{e}");
        check_metric("c", &f64_batch(None).schema(), &cs).unwrap();
    }
}

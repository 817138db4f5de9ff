//! Collection schemas: the vector's dimension, element type and metric, the id's type, and the
//! attribute columns; and the Arrow schema every stored batch and segment has.
//!
//! Every batch a collection stores has the columns, in this order: `id`, `vector`
//! (`FixedSizeList<element>[dim]`, non-null), then the attributes as declared.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use quiver_diskgraph::data::{ElemType, Metric};

/// The id column's name.
pub const ID_COLUMN: &str = "id";
/// The vector column's name.
pub const VECTOR_COLUMN: &str = "vector";
/// The distance column's name in the engine's search results (in the metric's own units:
/// squared L2, negated dot product, or cosine distance).
pub const DISTANCE_COLUMN: &str = "_distance";
/// The score column's name in Flight (Longbow-form) search results.
pub const SCORE_COLUMN: &str = "score";
/// The distance column's name in Flight (Longbow-form) search results (L2 as a true distance).
pub const RESULT_DISTANCE_COLUMN: &str = "distance";
/// Names no attribute may take: the stored columns, and the columns Quiver adds to search
/// results beside a row's attributes. One rule: user columns come back under their own names,
/// and no user column can be shadowed by one of Quiver's.
pub const RESERVED_COLUMNS: [&str; 5] =
    [ID_COLUMN, VECTOR_COLUMN, DISTANCE_COLUMN, SCORE_COLUMN, RESULT_DISTANCE_COLUMN];
/// The largest vector dimension a collection may declare.
pub const MAX_DIM: u32 = 16_384;
/// The most attribute columns a collection may declare.
pub const MAX_ATTRIBUTES: usize = 1024;

/// The element type of stored vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VectorType {
    /// 32-bit float.
    F32,
    /// 16-bit float (stored as such in segments; searched as f32).
    F16,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
}

impl VectorType {
    /// The Arrow type of one element.
    pub fn arrow_type(self) -> DataType {
        match self {
            VectorType::F32 => DataType::Float32,
            VectorType::F16 => DataType::Float16,
            VectorType::U8 => DataType::UInt8,
            VectorType::I8 => DataType::Int8,
        }
    }

    /// The element type vectors are searched and indexed in.
    pub fn search_elem(self) -> ElemType {
        match self {
            VectorType::F32 | VectorType::F16 => ElemType::F32,
            VectorType::U8 => ElemType::U8,
            VectorType::I8 => ElemType::I8,
        }
    }
}

/// The id column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IdType {
    /// `UInt64`.
    U64,
    /// `Int64`.
    I64,
    /// `Utf8` (at most [`MAX_STRING_ID`] bytes).
    Utf8,
}

/// The longest string id accepted, in bytes.
pub const MAX_STRING_ID: usize = 1024;

impl IdType {
    /// The Arrow type of the id column.
    pub fn arrow_type(self) -> DataType {
        match self {
            IdType::U64 => DataType::UInt64,
            IdType::I64 => DataType::Int64,
            IdType::Utf8 => DataType::Utf8,
        }
    }
}

/// The metric, as stored in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum MetricName {
    L2,
    InnerProduct,
    Cosine,
}

/// A collection's schema. Build with [`CollectionSchema::new`] and the setters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SchemaRepr", into = "SchemaRepr")]
pub struct CollectionSchema {
    dim: u32,
    vector_type: VectorType,
    metric: Metric,
    id_type: IdType,
    attributes: Vec<Field>,
    label_graphs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SchemaRepr {
    dim: u32,
    vector_type: VectorType,
    metric: MetricName,
    id_type: IdType,
    attributes: Vec<Field>,
    /// Absent in manifests written before label graphs existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    label_graphs: Vec<String>,
}

impl From<CollectionSchema> for SchemaRepr {
    fn from(s: CollectionSchema) -> Self {
        SchemaRepr {
            dim: s.dim,
            vector_type: s.vector_type,
            metric: match s.metric {
                Metric::L2 => MetricName::L2,
                Metric::InnerProduct => MetricName::InnerProduct,
                Metric::Cosine => MetricName::Cosine,
            },
            id_type: s.id_type,
            attributes: s.attributes,
            label_graphs: s.label_graphs,
        }
    }
}

impl TryFrom<SchemaRepr> for CollectionSchema {
    type Error = SchemaError;
    fn try_from(r: SchemaRepr) -> Result<Self, SchemaError> {
        let s = CollectionSchema {
            dim: r.dim,
            vector_type: r.vector_type,
            metric: match r.metric {
                MetricName::L2 => Metric::L2,
                MetricName::InnerProduct => Metric::InnerProduct,
                MetricName::Cosine => Metric::Cosine,
            },
            id_type: r.id_type,
            attributes: r.attributes,
            label_graphs: r.label_graphs,
        };
        s.validate()?;
        Ok(s)
    }
}

/// Why a schema is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The dimension is 0 or above [`MAX_DIM`].
    #[error("vector dimension {0} is out of range 1..={MAX_DIM}")]
    Dimension(u32),
    /// Cosine distance on integer vectors.
    #[error("the cosine metric needs float vectors (f32 or f16), not {0:?}")]
    CosineOnIntegers(VectorType),
    /// An attribute takes a name in [`RESERVED_COLUMNS`], or two share a name, or a name is
    /// empty.
    #[error(
        "attribute name {0:?} is reserved (id, vector, _distance, score and distance are Quiver's), empty or used twice"
    )]
    AttributeName(String),
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("{0} attributes exceed the limit of {MAX_ATTRIBUTES}")]
    TooManyAttributes(usize),
    /// An attribute asked to be added exists with another type (or nullability).
    #[error("attribute {name:?} exists as {existing}; it cannot become {asked}")]
    AttributeExists {
        /// The attribute.
        name: String,
        /// Its type now.
        existing: DataType,
        /// The type asked for.
        asked: DataType,
    },
    /// A label-graph column that is not an attribute, is declared twice, or has a type without
    /// a label index (only integers, booleans and strings have one).
    #[error("label graph column {column:?}: {reason}")]
    LabelGraph {
        /// The column.
        column: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An attribute type Parquet cannot store.
    #[error("attribute {name:?} of type {data_type} cannot be stored in Parquet: {reason}")]
    AttributeType {
        /// The attribute.
        name: String,
        /// Its type.
        data_type: DataType,
        /// Parquet's reason.
        reason: String,
    },
}

impl CollectionSchema {
    /// A schema for `dim`-dimensional vectors of `vector_type` under `metric`, with `u64` ids and
    /// no attributes.
    pub fn new(dim: u32, vector_type: VectorType, metric: Metric) -> Self {
        CollectionSchema {
            dim,
            vector_type,
            metric,
            id_type: IdType::U64,
            attributes: Vec::new(),
            label_graphs: Vec::new(),
        }
    }

    /// Sets the id type (default [`IdType::U64`]).
    #[must_use]
    pub fn with_id_type(mut self, id_type: IdType) -> Self {
        self.id_type = id_type;
        self
    }

    /// Adds an attribute column. A non-nullable attribute must be present in every insert.
    #[must_use]
    pub fn with_attribute(mut self, field: Field) -> Self {
        self.attributes.push(field);
        self
    }

    /// Declares attribute `column` a *label column* (a tenant, a category: an integer, boolean
    /// or string column with few distinct values): each indexed segment gets a graph of its own
    /// for every value of the column that holds at least
    /// [`Options::label_graph_min_rows`](crate::Options::label_graph_min_rows) of its rows, so
    /// a search filtered to that value walks among its rows alone, from their own entry point.
    /// [`CollectionSchema::validate`] checks the column exists and has such a type.
    #[must_use]
    pub fn with_label_graph(mut self, column: &str) -> Self {
        self.label_graphs.push(column.to_string());
        self
    }

    /// The columns declared with [`CollectionSchema::with_label_graph`].
    pub fn label_graphs(&self) -> &[String] {
        &self.label_graphs
    }

    /// The vector dimension.
    pub fn dim(&self) -> usize {
        self.dim as usize
    }

    /// The element type.
    pub fn vector_type(&self) -> VectorType {
        self.vector_type
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The id type.
    pub fn id_type(&self) -> IdType {
        self.id_type
    }

    /// The attribute columns.
    pub fn attributes(&self) -> &[Field] {
        &self.attributes
    }

    /// About how many bytes a row takes in memory: its vector at its stored width, 8 for the
    /// id, and 16 for each attribute (a guess for variable-width ones). For sizing row groups
    /// and read batches by bytes.
    #[must_use]
    pub fn row_bytes_estimate(&self) -> usize {
        let value = match self.vector_type {
            VectorType::F32 => 4,
            VectorType::F16 => 2,
            VectorType::U8 | VectorType::I8 => 1,
        };
        self.dim() * value + 8 + 16 * self.attributes().len()
    }

    /// The Arrow schema of stored batches: `id`, `vector`, then the attributes.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(ID_COLUMN, self.id_type.arrow_type(), false),
            Field::new(VECTOR_COLUMN, self.vector_data_type(), false),
        ];
        fields.extend(self.attributes.iter().cloned());
        Arc::new(Schema::new(fields))
    }

    /// The vector column's type: `FixedSizeList<item: element>[dim]` (the item field nullable,
    /// as Arrow builders and pyarrow make it; null elements are still refused).
    pub fn vector_data_type(&self) -> DataType {
        DataType::FixedSizeList(
            Arc::new(Field::new("item", self.vector_type.arrow_type(), true)),
            self.dim as i32,
        )
    }

    /// Checks the schema can be stored and searched.
    ///
    /// # Errors
    /// [`SchemaError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(SchemaError::Dimension(self.dim));
        }
        if self.metric == Metric::Cosine
            && matches!(self.vector_type, VectorType::U8 | VectorType::I8)
        {
            return Err(SchemaError::CosineOnIntegers(self.vector_type));
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(SchemaError::TooManyAttributes(self.attributes.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.attributes {
            let name = f.name();
            if name.is_empty() || RESERVED_COLUMNS.contains(&name.as_str()) || !seen.insert(name) {
                return Err(SchemaError::AttributeName(name.clone()));
            }
            let one = Schema::new(vec![f.clone()]);
            if let Err(e) = parquet::arrow::ArrowSchemaConverter::new().convert(&one) {
                return Err(SchemaError::AttributeType {
                    name: name.clone(),
                    data_type: f.data_type().clone(),
                    reason: e.to_string(),
                });
            }
        }
        let mut declared = std::collections::HashSet::new();
        for column in &self.label_graphs {
            let refuse = |reason| SchemaError::LabelGraph { column: column.clone(), reason };
            let field = self.attributes.iter().find(|f| f.name() == column);
            let Some(field) = field else { return Err(refuse("no attribute has that name")) };
            if !crate::segment::LabelIndex::supports(field.data_type()) {
                return Err(refuse("only integer, boolean and string columns have labels"));
            }
            if !declared.insert(column) {
                return Err(refuse("declared twice"));
            }
        }
        Ok(())
    }
}

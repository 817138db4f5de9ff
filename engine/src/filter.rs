//! Predicates on attribute columns, for filtered search.
//!
//! A [`Predicate`] is what an embedder writes (comparisons, `IN`, null tests, `AND` / `OR` /
//! `NOT`); [`Filter`] is its compiled form for one collection: every literal converted once to
//! the type it is compared in, every column resolved. Evaluation follows SQL: a comparison with a
//! null is unknown, `NOT` unknown is unknown, and a row passes only if the whole predicate is
//! true. The Flight layer translates its tickets' filters into predicates.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Schema};

use crate::schema::VECTOR_COLUMN;

/// The most nodes (comparisons, tests and connectives) one predicate may have.
pub const MAX_PREDICATE_NODES: usize = 256;
/// The most values one `IN` list may have.
pub const MAX_IN_VALUES: usize = 1024;
/// The deepest nesting of connectives a predicate may have.
pub const MAX_PREDICATE_DEPTH: usize = 32;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal a column is compared with. Numbers compare with numeric columns (in the column's
/// own type for floating-point columns, so a stored `f32` literal matches itself), strings with
/// string and temporal columns (parsed as the column's type), booleans with boolean columns.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A string (or a date, time or timestamp in text).
    Str(String),
}

/// A condition on a row's attribute columns.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Predicate {
    /// `column op value`.
    Compare {
        /// The column.
        column: String,
        /// The operator.
        op: CompareOp,
        /// The value.
        value: Literal,
    },
    /// `column IN (values)`.
    In {
        /// The column.
        column: String,
        /// The values (1..=[`MAX_IN_VALUES`]).
        values: Vec<Literal>,
    },
    /// `column IS NULL`.
    IsNull(String),
    /// `column IS NOT NULL`.
    IsNotNull(String),
    /// Every part holds (true if there are none).
    And(Vec<Predicate>),
    /// Some part holds (false if there are none).
    Or(Vec<Predicate>),
    /// The part does not hold.
    Not(Box<Predicate>),
}

impl Predicate {
    /// `column op value`.
    pub fn compare(column: impl Into<String>, op: CompareOp, value: Literal) -> Predicate {
        Predicate::Compare { column: column.into(), op, value }
    }

    /// `column IN (values)`.
    pub fn is_in(column: impl Into<String>, values: Vec<Literal>) -> Predicate {
        Predicate::In { column: column.into(), values }
    }

    /// `self AND other`.
    #[must_use]
    pub fn and(self, other: Predicate) -> Predicate {
        match self {
            Predicate::And(mut parts) => {
                parts.push(other);
                Predicate::And(parts)
            }
            first => Predicate::And(vec![first, other]),
        }
    }

    /// `self OR other`.
    #[must_use]
    pub fn or(self, other: Predicate) -> Predicate {
        Predicate::Or(vec![self, other])
    }

    /// `NOT self`.
    #[must_use]
    pub fn negate(self) -> Predicate {
        Predicate::Not(Box::new(self))
    }
}

/// Why a predicate cannot be used on a collection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The column does not exist.
    #[error("filter on unknown column {column:?}; the columns are {columns:?}")]
    UnknownColumn {
        /// The column named.
        column: String,
        /// The collection's columns.
        columns: Vec<String>,
    },
    /// The vector column cannot be filtered on.
    #[error("the {VECTOR_COLUMN:?} column cannot be filtered on")]
    VectorColumn,
    /// The literal cannot be compared with the column.
    #[error(
        "filter on {column:?} (type {data_type}): cannot compare with {value}; numeric columns take numbers, string columns strings, boolean columns booleans, temporal columns strings"
    )]
    Mismatch {
        /// The column.
        column: String,
        /// Its type.
        data_type: DataType,
        /// The literal, as written.
        value: String,
    },
    /// The predicate is beyond a limit.
    #[error("the filter is too large: {0}")]
    TooLarge(String),
}

/// A predicate compiled for one collection's schema.
#[derive(Debug)]
pub struct Filter {
    /// The collection's columns the predicate reads, ascending, without repeats.
    columns: Vec<usize>,
    root: Node,
    /// The predicate as written, to remember its result on a segment by.
    key: String,
    /// When the predicate is an AND of parts that each read one column: those parts, each
    /// compiled alone. A row passes the whole exactly when it passes every part (an AND is
    /// true only when each part is true), so the rows of each part can be found apart (by
    /// a column's label index, say) and intersected.
    conjuncts: Vec<Filter>,
}

#[derive(Debug)]
enum Node {
    /// Column `input` (of the projected batch), cast to `as_type`, compared with `value`.
    Compare {
        input: usize,
        op: CompareOp,
        as_type: DataType,
        value: ArrayRef,
    },
    In {
        input: usize,
        as_type: DataType,
        values: Vec<ArrayRef>,
    },
    IsNull(usize),
    IsNotNull(usize),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

impl Filter {
    /// Compiles `predicate` for the collection whose Arrow schema is `schema`.
    ///
    /// # Errors
    /// [`FilterError`]: an unknown column, the vector column, a literal that cannot be compared
    /// with its column, or a predicate beyond the limits.
    pub fn compile(predicate: &Predicate, schema: &Schema) -> Result<Filter, FilterError> {
        let mut columns = Vec::new();
        collect_columns(predicate, schema, &mut columns, &mut 0, 0)?;
        columns.sort_unstable();
        columns.dedup();
        let root = compile_node(predicate, schema, &columns)?;
        let conjuncts = match predicate {
            Predicate::And(parts) if parts.len() > 1 => {
                let parts = parts.iter().map(|p| Filter::compile(p, schema));
                let parts: Vec<Filter> = parts.collect::<Result<_, _>>()?;
                if parts.iter().all(|p| p.columns.len() == 1) { parts } else { Vec::new() }
            }
            _ => Vec::new(),
        };
        Ok(Filter { columns, root, key: format!("{predicate:?}"), conjuncts })
    }

    /// When the predicate is an AND of two or more parts that each read one column, those
    /// parts compiled alone (a row passes the whole exactly when it passes each); else empty.
    pub fn conjuncts(&self) -> &[Filter] {
        &self.conjuncts
    }

    /// A key that two filters compiled from equal predicates share.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The collection's columns the filter reads (indices in its schema), ascending.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// Per zone of a file (a Parquet row group), whether a row of it may pass: `false` only
    /// where the zone's statistics prove that none does. `stats(column)` gives what the file's
    /// statistics say of collection column `column`, or `None` where they say nothing usable.
    /// Comparisons (and `IN`) are judged on integer, date, time, timestamp, string and boolean
    /// columns; not on floating-point ones, whose statistics leave NaN out while comparisons
    /// order it above every number.
    pub(crate) fn zones_may_pass(
        &self,
        zones: usize,
        stats: impl Fn(usize) -> Option<ZoneStats>,
    ) -> Vec<bool> {
        let of_input = |input: usize| stats(self.columns[input]).filter(|s| s.zones() == zones);
        zone_maybe(&self.root, zones, &of_input).may_be_true
    }

    /// Which rows of `batch` pass. `batch` holds exactly [`Filter::columns`], in that order.
    ///
    /// # Errors
    /// An Arrow kernel failed (a value could not be cast, say).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        assert_eq!(batch.num_columns(), self.columns.len(), "a batch of the filter's columns");
        let mask = eval(&self.root, batch)?;
        // Unknown (null) is not true: the row does not pass.
        Ok(match mask.nulls() {
            Some(_) => mask.iter().map(|v| Some(v == Some(true))).collect(),
            None => mask,
        })
    }
}

fn column_of(name: &str, schema: &Schema) -> Result<usize, FilterError> {
    if name == VECTOR_COLUMN {
        return Err(FilterError::VectorColumn);
    }
    schema.index_of(name).map_err(|_| FilterError::UnknownColumn {
        column: name.to_string(),
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
    })
}

fn collect_columns(
    p: &Predicate,
    schema: &Schema,
    out: &mut Vec<usize>,
    nodes: &mut usize,
    depth: usize,
) -> Result<(), FilterError> {
    *nodes += 1;
    if *nodes > MAX_PREDICATE_NODES {
        return Err(FilterError::TooLarge(format!("more than {MAX_PREDICATE_NODES} nodes")));
    }
    if depth > MAX_PREDICATE_DEPTH {
        return Err(FilterError::TooLarge(format!("nested deeper than {MAX_PREDICATE_DEPTH}")));
    }
    match p {
        Predicate::Compare { column, .. }
        | Predicate::IsNull(column)
        | Predicate::IsNotNull(column) => out.push(column_of(column, schema)?),
        Predicate::In { column, values } => {
            if values.is_empty() || values.len() > MAX_IN_VALUES {
                return Err(FilterError::TooLarge(format!(
                    "an IN list of {} values (1..={MAX_IN_VALUES})",
                    values.len()
                )));
            }
            out.push(column_of(column, schema)?);
        }
        Predicate::And(parts) | Predicate::Or(parts) => {
            for part in parts {
                collect_columns(part, schema, out, nodes, depth + 1)?;
            }
        }
        Predicate::Not(part) => collect_columns(part, schema, out, nodes, depth + 1)?,
    }
    Ok(())
}

fn compile_node(p: &Predicate, schema: &Schema, columns: &[usize]) -> Result<Node, FilterError> {
    let input = |name: &str| -> Result<usize, FilterError> {
        let at = column_of(name, schema)?;
        Ok(columns.binary_search(&at).expect("collected"))
    };
    Ok(match p {
        Predicate::Compare { column, op, value } => {
            let (as_type, value) = literal_for(column, value, schema)?;
            Node::Compare { input: input(column)?, op: *op, as_type, value }
        }
        Predicate::In { column, values } => {
            let mut as_type = None;
            let mut arrays = Vec::with_capacity(values.len());
            for v in values {
                let (t, a) = literal_for(column, v, schema)?;
                if as_type.as_ref().is_some_and(|prev| prev != &t) {
                    // Mixed literal kinds (integers and fractions): compare all as f64 when the
                    // column is numeric; anything else is refused by literal_for already.
                    return compile_node(&widen_in(column, values), schema, columns);
                }
                as_type = Some(t);
                arrays.push(a);
            }
            Node::In { input: input(column)?, as_type: as_type.expect("non-empty"), values: arrays }
        }
        Predicate::IsNull(column) => Node::IsNull(input(column)?),
        Predicate::IsNotNull(column) => Node::IsNotNull(input(column)?),
        Predicate::And(parts) => Node::And(
            parts.iter().map(|q| compile_node(q, schema, columns)).collect::<Result<_, _>>()?,
        ),
        Predicate::Or(parts) => Node::Or(
            parts.iter().map(|q| compile_node(q, schema, columns)).collect::<Result<_, _>>()?,
        ),
        Predicate::Not(part) => Node::Not(Box::new(compile_node(part, schema, columns)?)),
    })
}

/// An `IN` list whose numbers are all written as floats (so they compare in one type).
fn widen_in(column: &str, values: &[Literal]) -> Predicate {
    let values = values
        .iter()
        .map(|v| match v {
            Literal::Int(i) => Literal::Float(*i as f64),
            Literal::UInt(u) => Literal::Float(*u as f64),
            other => other.clone(),
        })
        .collect();
    Predicate::In { column: column.to_string(), values }
}

/// The type `column` is compared in, and `value` as a one-element array of it.
fn literal_for(
    column: &str,
    value: &Literal,
    schema: &Schema,
) -> Result<(DataType, ArrayRef), FilterError> {
    let field = &schema.fields()[column_of(column, schema)?];
    let dt = field.data_type();
    let mismatch = || FilterError::Mismatch {
        column: column.to_string(),
        data_type: dt.clone(),
        value: format!("{value:?}"),
    };
    let cast = |one: ArrayRef, to: &DataType| {
        let opts = arrow_cast::CastOptions { safe: false, ..Default::default() };
        arrow_cast::cast_with_options(&one, to, &opts).map_err(|_| mismatch())
    };
    let is_string = matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    Ok(match value {
        Literal::UInt(n) if dt.is_unsigned_integer() => {
            (DataType::UInt64, Arc::new(UInt64Array::from(vec![*n])))
        }
        Literal::Int(n) if dt.is_signed_integer() => {
            (DataType::Int64, Arc::new(Int64Array::from(vec![*n])))
        }
        // A non-negative integer in an unsigned column, and the reverse.
        Literal::Int(n) if dt.is_unsigned_integer() && *n >= 0 => {
            (DataType::UInt64, Arc::new(UInt64Array::from(vec![*n as u64])))
        }
        Literal::UInt(n) if dt.is_signed_integer() && i64::try_from(*n).is_ok() => {
            (DataType::Int64, Arc::new(Int64Array::from(vec![*n as i64])))
        }
        Literal::Int(_) | Literal::UInt(_) | Literal::Float(_)
            if matches!(dt, DataType::Float16 | DataType::Float32) =>
        {
            let one: ArrayRef = Arc::new(Float64Array::from(vec![as_f64(value)]));
            (dt.clone(), cast(one, dt)?)
        }
        Literal::Int(_) | Literal::UInt(_) | Literal::Float(_) if dt.is_numeric() => {
            (DataType::Float64, Arc::new(Float64Array::from(vec![as_f64(value)])))
        }
        Literal::Str(s) if is_string || dt.is_temporal() => {
            let one: ArrayRef = Arc::new(StringArray::from(vec![s.as_str()]));
            (dt.clone(), cast(one, dt)?)
        }
        Literal::Bool(b) if dt == &DataType::Boolean => {
            (DataType::Boolean, Arc::new(BooleanArray::from(vec![*b])))
        }
        _ => return Err(mismatch()),
    })
}

fn as_f64(v: &Literal) -> f64 {
    match v {
        Literal::Int(i) => *i as f64,
        Literal::UInt(u) => *u as f64,
        Literal::Float(f) => *f,
        Literal::Bool(_) | Literal::Str(_) => unreachable!("numbers only"),
    }
}

/// Evaluates `node` on `batch` with three-valued logic (null = unknown).
fn eval(node: &Node, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
    use arrow_arith::boolean::{and_kleene, is_not_null, is_null, not, or_kleene};
    let column = |input: usize, as_type: &DataType| -> Result<ArrayRef, ArrowError> {
        let col = batch.column(input);
        if col.data_type() == as_type { Ok(col.clone()) } else { arrow_cast::cast(col, as_type) }
    };
    Ok(match node {
        Node::Compare { input, op, as_type, value } => {
            compare(&column(*input, as_type)?, *op, &Scalar::new(value.clone()))?
        }
        Node::In { input, as_type, values } => {
            let col = column(*input, as_type)?;
            let mut acc: Option<BooleanArray> = None;
            for v in values {
                let m = compare(&col, CompareOp::Eq, &Scalar::new(v.clone()))?;
                acc = Some(match acc {
                    None => m,
                    Some(prev) => or_kleene(&prev, &m)?,
                });
            }
            acc.expect("IN lists are not empty")
        }
        Node::IsNull(input) => is_null(batch.column(*input).as_ref())?,
        Node::IsNotNull(input) => is_not_null(batch.column(*input).as_ref())?,
        Node::And(parts) => {
            let mut acc = BooleanArray::from(vec![true; batch.num_rows()]);
            for p in parts {
                acc = and_kleene(&acc, &eval(p, batch)?)?;
            }
            acc
        }
        Node::Or(parts) => {
            let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
            for p in parts {
                acc = or_kleene(&acc, &eval(p, batch)?)?;
            }
            acc
        }
        Node::Not(part) => not(&eval(part, batch)?)?,
    })
}

/// What a file's statistics say of one column, zone by zone (a zone is a row group, or a data
/// page): the least and the greatest non-null value (null where unknown), the nulls (null where
/// unknown), the rows.
#[derive(Clone)]
pub(crate) struct ZoneStats {
    /// The least non-null value of each zone, in the column's type.
    pub(crate) mins: ArrayRef,
    /// The greatest non-null value of each zone, in the column's type.
    pub(crate) maxes: ArrayRef,
    /// The null values of each zone.
    pub(crate) nulls: UInt64Array,
    /// The rows of each zone.
    pub(crate) rows: UInt64Array,
}

impl ZoneStats {
    fn zones(&self) -> usize {
        self.rows.len()
    }
}

/// Per zone, whether some row of it may make a node true, and whether some row may make it
/// false (null, unknown, is neither). Each over-approximates: `true` unless ruled out.
struct ZoneMaybe {
    may_be_true: Vec<bool>,
    may_be_false: Vec<bool>,
}

impl ZoneMaybe {
    fn unknown(zones: usize) -> ZoneMaybe {
        ZoneMaybe { may_be_true: vec![true; zones], may_be_false: vec![true; zones] }
    }
}

fn zone_maybe(node: &Node, zones: usize, stats: &dyn Fn(usize) -> Option<ZoneStats>) -> ZoneMaybe {
    let each = |parts: &[Node], all: bool| -> (Vec<bool>, Vec<bool>) {
        // AND: true needs every part true, false needs one part false; OR the reverse.
        let (mut t, mut f) = (vec![all; zones], vec![!all; zones]);
        for p in parts {
            let m = zone_maybe(p, zones, stats);
            for z in 0..zones {
                if all {
                    t[z] &= m.may_be_true[z];
                    f[z] |= m.may_be_false[z];
                } else {
                    t[z] |= m.may_be_true[z];
                    f[z] &= m.may_be_false[z];
                }
            }
        }
        (t, f)
    };
    let judged = match node {
        Node::Compare { input, op, as_type, value } => {
            stats(*input).and_then(|s| compare_zones(&s, *op, as_type, std::slice::from_ref(value)))
        }
        Node::In { input, as_type, values } => {
            stats(*input).and_then(|s| compare_zones(&s, CompareOp::Eq, as_type, values))
        }
        Node::IsNull(input) | Node::IsNotNull(input) => stats(*input).map(|s| {
            let some_null = (0..zones).map(|z| s.nulls.is_null(z) || s.nulls.value(z) > 0);
            let some_value =
                (0..zones).map(|z| s.nulls.is_null(z) || s.nulls.value(z) < s.rows.value(z));
            let (nulls, values) = (some_null.collect(), some_value.collect());
            match node {
                Node::IsNull(_) => ZoneMaybe { may_be_true: nulls, may_be_false: values },
                _ => ZoneMaybe { may_be_true: values, may_be_false: nulls },
            }
        }),
        Node::And(parts) => {
            let (may_be_true, may_be_false) = each(parts, true);
            Some(ZoneMaybe { may_be_true, may_be_false })
        }
        Node::Or(parts) => {
            let (may_be_true, may_be_false) = each(parts, false);
            Some(ZoneMaybe { may_be_true, may_be_false })
        }
        Node::Not(part) => {
            let m = zone_maybe(part, zones, stats);
            Some(ZoneMaybe { may_be_true: m.may_be_false, may_be_false: m.may_be_true })
        }
    };
    judged.unwrap_or_else(|| ZoneMaybe::unknown(zones))
}

/// Whether a column of type `column` may be judged by its statistics when compared in
/// `as_type`: the statistics order values as the comparison does, and the cast to `as_type`
/// keeps that order.
fn zone_comparable(column: &DataType, as_type: &DataType) -> bool {
    let ordered = column.is_integer()
        || matches!(
            column,
            DataType::Date32
                | DataType::Date64
                | DataType::Time32(_)
                | DataType::Time64(_)
                | DataType::Timestamp(..)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Boolean
        );
    let monotone_cast = column == as_type
        || (column.is_integer()
            && matches!(as_type, DataType::Int64 | DataType::UInt64 | DataType::Float64));
    ordered && monotone_cast
}

/// [`ZoneMaybe`] of `column op value` for each of `values` (more than one: an `IN`, true where
/// one is equal; its falsity is not judged), or `None` where the statistics cannot judge it:
/// a column type or cast they do not order as the comparison does, or a kernel that fails.
fn compare_zones(
    s: &ZoneStats,
    op: CompareOp,
    as_type: &DataType,
    values: &[ArrayRef],
) -> Option<ZoneMaybe> {
    use arrow_arith::boolean::{and, or};
    use arrow_ord::cmp;
    if !zone_comparable(s.mins.data_type(), as_type) {
        return None;
    }
    let cast = |a: &ArrayRef| {
        if a.data_type() == as_type { Ok(a.clone()) } else { arrow_cast::cast(a, as_type) }
    };
    let (lo, hi) = (cast(&s.mins).ok()?, cast(&s.maxes).ok()?);
    // Null (a bound unknown) is "may".
    let may = |m: BooleanArray| -> Vec<bool> {
        (0..m.len()).map(|z| m.is_null(z) || m.value(z)).collect()
    };
    let bounds = |value: &ArrayRef| -> Result<(BooleanArray, BooleanArray), ArrowError> {
        let v = Scalar::new(value.clone());
        let between = || and(&cmp::lt_eq(&lo, &v)?, &cmp::gt_eq(&hi, &v)?);
        let not_only_v = || or(&cmp::neq(&lo, &v)?, &cmp::neq(&hi, &v)?);
        Ok(match op {
            CompareOp::Lt => (cmp::lt(&lo, &v)?, cmp::gt_eq(&hi, &v)?),
            CompareOp::Le => (cmp::lt_eq(&lo, &v)?, cmp::gt(&hi, &v)?),
            CompareOp::Gt => (cmp::gt(&hi, &v)?, cmp::lt_eq(&lo, &v)?),
            CompareOp::Ge => (cmp::gt_eq(&hi, &v)?, cmp::lt(&lo, &v)?),
            CompareOp::Eq => (between()?, not_only_v()?),
            CompareOp::Ne => (not_only_v()?, between()?),
        })
    };
    let mut judged: Option<ZoneMaybe> = None;
    for value in values {
        let (t, f) = bounds(value).ok()?;
        let (t, f) = (may(t), may(f));
        judged = Some(match judged {
            None => ZoneMaybe { may_be_true: t, may_be_false: f },
            Some(prev) => ZoneMaybe {
                may_be_true: prev.may_be_true.iter().zip(&t).map(|(a, b)| *a || *b).collect(),
                may_be_false: vec![true; t.len()],
            },
        });
    }
    judged
}

fn compare(
    col: &ArrayRef,
    op: CompareOp,
    value: &Scalar<ArrayRef>,
) -> Result<BooleanArray, ArrowError> {
    use arrow_ord::cmp;
    match op {
        CompareOp::Eq => cmp::eq(col, value),
        CompareOp::Ne => cmp::neq(col, value),
        CompareOp::Lt => cmp::lt(col, value),
        CompareOp::Le => cmp::lt_eq(col, value),
        CompareOp::Gt => cmp::gt(col, value),
        CompareOp::Ge => cmp::gt_eq(col, value),
    }
}

//! Parsing of DoGet tickets and DoAction bodies (JSON, in Longbow's forms and Quiver's).
//!
//! Unknown keys are ignored (Longbow clients send options Quiver does not have); missing or
//! mistyped keys Quiver needs are errors that say what was expected.

use serde::Deserialize;
use serde_json::Value;

use crate::filter::FilterSpec;

/// Longest ticket or action body accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// Most query vectors one `VectorSearch` action may carry.
pub const MAX_QUERIES: usize = quiver_engine::MAX_BATCH_QUERIES;

/// A search (`{"search": {...}}` ticket, or one query of a `VectorSearch` action).
#[derive(Clone, Debug, Deserialize)]
pub struct SearchRequest {
    /// The collection.
    #[serde(alias = "name", alias = "collection")]
    pub dataset: String,
    /// The query vector (for a `VectorSearch` action, `vectors` may be given instead).
    #[serde(default)]
    pub vector: Option<Vec<Value>>,
    /// Several query vectors (`VectorSearch` action only).
    #[serde(default)]
    pub vectors: Option<Vec<Vec<Value>>>,
    /// How many neighbours (default 10).
    #[serde(default = "default_k")]
    pub k: i64,
    /// Attribute filters, ANDed.
    #[serde(default)]
    pub filters: Option<Vec<FilterSpec>>,
    /// Whether to return each hit's vector.
    #[serde(default)]
    pub include_vectors: bool,
    /// Attribute columns to return (`columns`, or Longbow's `projection`).
    #[serde(default, alias = "projection")]
    pub columns: Option<Vec<String>>,
    /// The disk index's candidate list size L.
    #[serde(default)]
    pub list_size: Option<usize>,
    /// The disk index's beam width W.
    #[serde(default)]
    pub beam_width: Option<usize>,
    /// Search every row exactly instead of through the indexes.
    #[serde(default)]
    pub exact: bool,
    /// Longbow's hybrid search: keywords to match (see [`SearchRequest::unsupported_key`]).
    #[serde(default)]
    pub text_query: Option<Value>,
    /// Longbow's hybrid weight: 1 is pure vector search, less blends in keyword scores.
    #[serde(default)]
    pub alpha: Option<Value>,
    /// Longbow's GraphRAG weight: above 0 blends in scores from graph edges.
    #[serde(default)]
    pub graph_alpha: Option<Value>,
}

impl SearchRequest {
    /// A key that asks for something other than a vector search, which Quiver does not offer
    /// yet: a non-empty `text_query`, an `alpha` other than 1, a `graph_alpha` other than 0.
    /// Answering such a request with pure vector results would be a silent change of meaning.
    /// Other unknown keys (`local_only`, say) do not change the answer and are ignored.
    pub fn unsupported_key(&self) -> Option<&'static str> {
        if given(self.text_query.as_ref())
            .is_some_and(|v| v.as_str().is_none_or(|t| !t.trim().is_empty()))
        {
            return Some("text_query");
        }
        if given(self.alpha.as_ref()).is_some_and(|v| v.as_f64() != Some(1.0)) {
            return Some("alpha");
        }
        if given(self.graph_alpha.as_ref()).is_some_and(|v| v.as_f64() != Some(0.0)) {
            return Some("graph_alpha");
        }
        None
    }
}

/// A value that is present and not JSON `null`.
fn given(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn default_k() -> i64 {
    10
}

/// A search with a stored row's vector (Longbow's `VectorSearchByID`): `{"dataset": NAME,
/// "id": ID, "k": 10}`, plus any other key of a [`SearchRequest`] (filters, list size, ...).
#[derive(Clone, Debug, Deserialize)]
pub struct SearchByIdRequest {
    /// The row whose vector is the query: a number, or a string (Longbow's SDK sends strings).
    pub id: Value,
    /// The search; its `vector` and `vectors` must be absent.
    #[serde(flatten)]
    pub search: SearchRequest,
}

/// A scan: `{"name": NAME, "filters": [...], "limit": N, "columns": [...]}` or a plain name.
#[derive(Clone, Debug, Deserialize)]
pub struct ScanRequest {
    /// The collection.
    #[serde(alias = "dataset", alias = "collection")]
    pub name: String,
    /// Attribute filters, ANDed.
    #[serde(default)]
    pub filters: Option<Vec<FilterSpec>>,
    /// At most this many rows.
    #[serde(default)]
    pub limit: Option<u64>,
    /// The columns to return (all if absent).
    #[serde(default, alias = "projection")]
    pub columns: Option<Vec<String>>,
}

/// A get by ids: `{"get": {"dataset": NAME, "ids": [...], "columns": [...]}}`.
#[derive(Clone, Debug, Deserialize)]
pub struct GetRequest {
    /// The collection.
    #[serde(alias = "name", alias = "collection")]
    pub dataset: String,
    /// The ids: numbers or strings, as the collection's id type.
    pub ids: Vec<Value>,
    /// The columns to return (all if absent).
    #[serde(default, alias = "projection")]
    pub columns: Option<Vec<String>>,
}

/// What a DoGet ticket asks for.
#[derive(Clone, Debug)]
pub enum Ticket {
    /// A nearest-neighbour search.
    Search(SearchRequest),
    /// A scan of live rows.
    Scan(ScanRequest),
    /// Rows by id.
    Get(GetRequest),
}

/// Why a ticket or action body was refused (the Flight layer answers `InvalidArgument` with
/// the message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("{what} of {len} bytes exceeds {MAX_REQUEST_BYTES}")]
    TooLarge {
        /// What was too long (`ticket`, `delete body`, ...).
        what: String,
        /// Its length.
        len: usize,
    },
    /// An empty ticket.
    #[error(
        "empty ticket; expected JSON ({{\"search\": ...}}, {{\"name\": ...}}, {{\"get\": ...}}) or a collection name"
    )]
    EmptyTicket,
    /// Neither JSON nor UTF-8 text.
    #[error("{0} is neither JSON nor a UTF-8 collection name")]
    NotUtf8(&'static str),
    /// JSON that does not parse, or lacks or mistypes a key.
    #[error("malformed {what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// serde's reason.
        source: serde_json::Error,
    },
    /// A ticket object that is none of the known kinds.
    #[error("ticket JSON has none of \"search\", \"get\", \"name\" or \"dataset\"")]
    UnknownTicket,
    /// A ticket that is JSON but neither an object nor a string.
    #[error("ticket JSON must be an object or a string")]
    TicketShape,
    /// A query vector element that is a number outside `f32`.
    #[error("query vector element {index} ({value}) is not a finite f32")]
    NotFinite {
        /// Its position.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// A query vector element that is not a number.
    #[error("query vector element {index} is {value}, not a number")]
    NotANumber {
        /// Its position.
        index: usize,
        /// The JSON given.
        value: String,
    },
    /// An action body that names no collection.
    #[error("the action body names no collection; expected {{\"name\": NAME}}")]
    NoCollection,
    /// An action body that is JSON but neither an object nor a string.
    #[error("the action body must be a JSON object or string")]
    BodyShape,
    /// An action body object without a name key.
    #[error("the action body has no \"name\" or \"dataset\" string")]
    NoNameKey,
}

fn bad_json(what: &str, source: serde_json::Error) -> RequestError {
    RequestError::Json { what: what.to_string(), source }
}

/// Parses a ticket: a JSON object with `search`, `get`, or `name`/`dataset` (a scan); a JSON
/// string; or a bare collection name.
///
/// # Errors
/// [`RequestError`] saying what is malformed and what was expected.
pub fn parse_ticket(bytes: &[u8]) -> Result<Ticket, RequestError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge { what: "ticket".into(), len: bytes.len() });
    }
    if bytes.is_empty() {
        return Err(RequestError::EmptyTicket);
    }
    let trimmed = bytes.trim_ascii_start();
    if !matches!(trimmed.first(), Some(b'{' | b'"' | b'[')) {
        let name = std::str::from_utf8(bytes).map_err(|_| RequestError::NotUtf8("ticket"))?;
        return Ok(Ticket::Scan(ScanRequest {
            name: name.to_string(),
            filters: None,
            limit: None,
            columns: None,
        }));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad_json("ticket JSON", e))?;
    match v {
        Value::String(name) => {
            Ok(Ticket::Scan(ScanRequest { name, filters: None, limit: None, columns: None }))
        }
        Value::Object(mut o) => {
            if let Some(s) = o.remove("search") {
                return serde_json::from_value(s)
                    .map(Ticket::Search)
                    .map_err(|e| bad_json("search ticket", e));
            }
            if let Some(g) = o.remove("get") {
                return serde_json::from_value(g)
                    .map(Ticket::Get)
                    .map_err(|e| bad_json("get ticket", e));
            }
            if o.contains_key("name") || o.contains_key("dataset") {
                return serde_json::from_value(Value::Object(o))
                    .map(Ticket::Scan)
                    .map_err(|e| bad_json("scan ticket", e));
            }
            Err(RequestError::UnknownTicket)
        }
        _ => Err(RequestError::TicketShape),
    }
}

/// Converts JSON numbers to a query vector.
///
/// # Errors
/// A non-number (or a number outside f32) at some position.
pub fn query_vector(v: &[Value]) -> Result<Vec<f32>, RequestError> {
    v.iter()
        .enumerate()
        .map(|(index, x)| match x.as_f64() {
            Some(f) if (f as f32).is_finite() => Ok(f as f32),
            Some(value) => Err(RequestError::NotFinite { index, value }),
            None => Err(RequestError::NotANumber { index, value: x.to_string() }),
        })
        .collect()
}

/// A collection named in an action body: `{"name": N}`, `{"dataset": N}`, `{"collection": N}`, a
/// JSON string, or the bare name.
///
/// # Errors
/// The body names no collection.
pub fn collection_in_body(body: &[u8]) -> Result<String, RequestError> {
    let t = body.trim_ascii();
    if t.is_empty() {
        return Err(RequestError::NoCollection);
    }
    if !t.starts_with(b"{") && !t.starts_with(b"\"") {
        return std::str::from_utf8(t)
            .map(str::to_string)
            .map_err(|_| RequestError::NotUtf8("the action body"));
    }
    match serde_json::from_slice::<Value>(t).map_err(|e| bad_json("action body", e))? {
        Value::String(s) => Ok(s),
        Value::Object(o) => ["name", "dataset", "collection"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string))
            .ok_or(RequestError::NoNameKey),
        _ => Err(RequestError::BodyShape),
    }
}

/// The body of `create_collection`.
#[derive(Clone, Debug, Deserialize)]
pub struct CreateRequest {
    /// The collection's name.
    #[serde(alias = "dataset")]
    pub name: String,
    /// The vector dimension (`dim`, `dims` or `dimension`). Required: Longbow's
    /// `CreateNamespace` without one is refused, saying that a DoPut creates the collection.
    #[serde(default, alias = "dims", alias = "dimension")]
    pub dim: Option<u32>,
    /// `float32` (default), `float16`, `uint8` or `int8` (`element_type` or `data_type`).
    #[serde(default, alias = "data_type")]
    pub element_type: Option<String>,
    /// The metric (default euclidean).
    #[serde(default)]
    pub metric: Option<String>,
    /// `uint64` (default), `int64` or `utf8`.
    #[serde(default)]
    pub id_type: Option<String>,
    /// Attribute columns: `[{"name": N, "type": T, "nullable": true}]`, where T is one of
    /// `bool`, `int8`…`int64`, `uint8`…`uint64`, `float32`, `float64`, `utf8`/`string`,
    /// `binary`, `date32`, `timestamp_us`, `timestamp_ns`.
    #[serde(default)]
    pub attributes: Vec<AttributeSpec>,
    /// Label columns (integer, boolean or string attributes with few distinct values: a
    /// tenant, a category): each indexed segment gets a graph of its own for each of their
    /// frequent values, which searches filtered to that value walk (`label_graphs`).
    #[serde(default)]
    pub label_graphs: Vec<String>,
}

/// An attribute column in a `create_collection` body.
#[derive(Clone, Debug, Deserialize)]
pub struct AttributeSpec {
    /// The column's name.
    pub name: String,
    /// The column's type name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether it may hold nulls (default true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The body of `delete`: `{"dataset": N, "ids": [...]}` or Longbow's `{"dataset": N, "id": X}`.
#[derive(Clone, Debug, Deserialize)]
pub struct DeleteRequest {
    /// The collection.
    #[serde(alias = "name", alias = "collection")]
    pub dataset: String,
    /// The ids.
    #[serde(default)]
    pub ids: Vec<Value>,
    /// One id (Longbow's form; may be a string holding a number).
    #[serde(default)]
    pub id: Option<Value>,
}

/// Parses an action body as `T`.
///
/// # Errors
/// [`RequestError`]: too long, malformed JSON, or missing or mistyped keys.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, RequestError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge { what: format!("{what} body"), len: body.len() });
    }
    serde_json::from_slice(body).map_err(|e| bad_json(&format!("{what} body"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longbow_search_ticket_parses_and_ignores_unknown_keys() {
        let t = br#"{"search": {"dataset": "d", "vector": [1, 2.5], "k": 3, "local_only": true,
                    "filters": [{"field": "x", "op": ">", "value": 1}], "vector_format": "f32"}}"#;
        let Ticket::Search(s) = parse_ticket(t).unwrap() else { panic!("not a search") };
        assert_eq!(s.dataset, "d");
        assert_eq!(s.k, 3);
        assert_eq!(query_vector(s.vector.as_deref().unwrap()).unwrap(), vec![1.0, 2.5]);
        assert_eq!(s.filters.unwrap().len(), 1);
    }

    #[test]
    fn hybrid_keys_that_change_the_answer_are_named_and_neutral_ones_are_not() {
        let search = |extra: &str| {
            let t = format!(r#"{{"search": {{"dataset": "d", "vector": [1], {extra}}}}}"#);
            let Ticket::Search(s) = parse_ticket(t.as_bytes()).unwrap() else { panic!() };
            s.unsupported_key()
        };
        assert_eq!(search(r#""text_query": "red shoes""#), Some("text_query"));
        assert_eq!(search(r#""text_query": "red", "alpha": 1.0"#), Some("text_query"));
        assert_eq!(search(r#""alpha": 0.5"#), Some("alpha"));
        assert_eq!(search(r#""alpha": 0"#), Some("alpha"));
        assert_eq!(search(r#""graph_alpha": 0.3"#), Some("graph_alpha"));
        assert_eq!(search(r#""text_query": "", "alpha": 1, "graph_alpha": 0"#), None);
        assert_eq!(search(r#""text_query": null, "local_only": true"#), None);
    }

    #[test]
    fn scan_tickets_in_every_form() {
        for t in [&b"docs"[..], br#""docs""#, br#"{"name": "docs"}"#, br#"{"dataset": "docs"}"#] {
            let Ticket::Scan(s) = parse_ticket(t).unwrap() else { panic!("not a scan") };
            assert_eq!(s.name, "docs");
        }
        let Ticket::Scan(s) = parse_ticket(br#"{"name": "d", "limit": 5}"#).unwrap() else {
            panic!()
        };
        assert_eq!(s.limit, Some(5));
    }

    #[test]
    fn malformed_tickets_say_what_is_wrong() {
        assert!(
            parse_ticket(b"{\"search\": ")
                .unwrap_err()
                .to_string()
                .contains("malformed ticket JSON")
        );
        assert!(parse_ticket(b"").unwrap_err().to_string().contains("empty ticket"));
        assert!(parse_ticket(br#"{"foo": 1}"#).unwrap_err().to_string().contains("none of"));
        assert!(
            parse_ticket(br#"{"search": {"vector": [1]}}"#)
                .unwrap_err()
                .to_string()
                .contains("dataset")
        );
        assert!(parse_ticket(b"[1]").unwrap_err().to_string().contains("object or a string"));
        let e = query_vector(&[Value::from(1), Value::from("x")]).unwrap_err().to_string();
        assert!(e.contains("element 1"), "{e}");
        let e = query_vector(&[Value::from(1e300)]).unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
    }

    #[test]
    fn collection_names_in_action_bodies() {
        assert_eq!(collection_in_body(br#"{"name": "a"}"#).unwrap(), "a");
        assert_eq!(collection_in_body(br#"{"dataset": "b"}"#).unwrap(), "b");
        assert_eq!(collection_in_body(br#""c""#).unwrap(), "c");
        assert_eq!(collection_in_body(b"d").unwrap(), "d");
        assert!(collection_in_body(b"").is_err());
        assert!(collection_in_body(br#"{"x": 1}"#).is_err());
    }
}

//! A filter's columns used to be read whole in every segment, so a filter on a column that
//! follows the rows' order ("newer than this timestamp") read a million values to find the
//! last few thousand. Now a read skips the row groups whose statistics in the Parquet footer
//! (min, max, nulls) rule every row out. A wrong bound there drops matching rows silently: no
//! error, just a shorter answer. These tests pin down that the skipping happens where the
//! column follows the rows, and that no predicate — every operator, `IN`, null tests,
//! AND / OR / NOT nested, on integer, string and nullable columns — ever loses a row that
//! brute force over the same rows keeps.

mod common;

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::{
    CollectionSchema, CompareOp, Database, Literal, Metric, Options, Predicate, SearchParams,
    VectorType,
};

const DIM: usize = 8;
/// Rows in the indexed segments, the unindexed one and the memtable.
const ROWS: u64 = 3_400;

/// `ts` rises with the id; `n` = id % 5, null when id % 11 == 0; `name` sorts with the id.
fn ts(id: u64) -> i64 {
    id as i64 * 3 - 1_000
}
fn n(id: u64) -> Option<i64> {
    (!id.is_multiple_of(11)).then_some((id % 5) as i64)
}
fn name(id: u64) -> String {
    format!("r{id:05}")
}

fn collection() -> CollectionSchema {
    CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2)
        .with_attribute(Field::new("ts", DataType::Int64, false))
        .with_attribute(Field::new("n", DataType::Int64, true))
        .with_attribute(Field::new("name", DataType::Utf8, false))
}

fn rows(ids: &[u64]) -> RecordBatch {
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(7, i, DIM)).collect();
    let v = vector_column(DIM, &vectors);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", v.data_type().clone(), false),
            Field::new("ts", DataType::Int64, false),
            Field::new("n", DataType::Int64, true),
            Field::new("name", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            v,
            Arc::new(Int64Array::from(ids.iter().map(|&i| ts(i)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(ids.iter().map(|&i| n(i)).collect::<Vec<_>>())),
            Arc::new(StringArray::from(ids.iter().map(|&i| name(i)).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// Three indexed segments of 1,000 rows in row groups of 125, one unindexed segment of 300,
/// and 100 rows in memory.
fn open(dir: &std::path::Path) -> Database {
    let opts = Options::default()
        .background(false)
        .min_index_rows(500)
        .merge_min_segments(16)
        .row_group_rows(125)
        .idle_flush(None);
    let db = Database::open(dir, opts).unwrap();
    db.create_collection("c", collection()).unwrap();
    let put = |from: u64, to: u64| db.insert("c", &rows(&(from..to).collect::<Vec<_>>())).unwrap();
    for part in 0..3 {
        put(part * 1_000, (part + 1) * 1_000);
        db.flush().unwrap();
    }
    db.run_background().unwrap();
    put(3_000, 3_300);
    db.flush().unwrap();
    put(3_300, ROWS);
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (4, 3), "the sources this test needs");
    db
}

/// Every row that passes `p`, by exact search (k covers all rows).
fn passing(db: &Database, p: &Predicate) -> Vec<u64> {
    let params = SearchParams {
        k: ROWS as usize,
        exact: true,
        filter: Some(p.clone()),
        ..SearchParams::default()
    };
    let mut got = ids(&db.search("c", &vector(8, 0, DIM), &params).unwrap());
    got.sort_unstable();
    got
}

/// SQL's three-valued evaluation of leaf `p` (a comparison, `IN` or null test) on row `id`:
/// `None` is unknown.
fn leaf(p: &Predicate, id: u64) -> Option<bool> {
    let value = |column: &str| -> Option<Literal> {
        match column {
            "ts" => Some(Literal::Int(ts(id))),
            "n" => n(id).map(Literal::Int),
            _ => Some(Literal::Str(name(id))),
        }
    };
    let order = |a: &Literal, b: &Literal| match (a, b) {
        (Literal::Int(x), Literal::Int(y)) => x.cmp(y),
        (Literal::Str(x), Literal::Str(y)) => x.cmp(y),
        other => panic!("compared {other:?}"),
    };
    let holds = |op: CompareOp, o: std::cmp::Ordering| match op {
        CompareOp::Eq => o.is_eq(),
        CompareOp::Ne => o.is_ne(),
        CompareOp::Lt => o.is_lt(),
        CompareOp::Le => o.is_le(),
        CompareOp::Gt => o.is_gt(),
        CompareOp::Ge => o.is_ge(),
    };
    match p {
        Predicate::Compare { column, op, value: v } => {
            value(column).map(|x| holds(*op, order(&x, v)))
        }
        Predicate::In { column, values } => {
            value(column).map(|x| values.iter().any(|v| order(&x, v).is_eq()))
        }
        Predicate::IsNull(column) => Some(value(column).is_none()),
        Predicate::IsNotNull(column) => Some(value(column).is_some()),
        other => panic!("no model of {other:?}"),
    }
}

/// SQL's three-valued evaluation of `p` on row `id`: `None` is unknown; an AND with a false
/// part is false and an OR with a true part true, whatever else is unknown.
fn model(p: &Predicate, id: u64) -> Option<bool> {
    match p {
        Predicate::And(parts) | Predicate::Or(parts) => {
            // One false part decides an AND, one true part an OR.
            let decides = matches!(p, Predicate::Or(_));
            let all: Vec<Option<bool>> = parts.iter().map(|q| model(q, id)).collect();
            if all.contains(&Some(decides)) {
                Some(decides)
            } else if all.contains(&None) {
                None
            } else {
                Some(!decides)
            }
        }
        Predicate::Not(part) => model(part, id).map(|b| !b),
        other => leaf(other, id),
    }
}

fn expected(p: &Predicate) -> Vec<u64> {
    (0..ROWS).filter(|&id| model(p, id) == Some(true)).collect()
}

#[test]
fn a_filter_on_an_ordered_column_reads_only_the_groups_that_may_match() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let skipped = |db: &Database| db.stats("c").unwrap().filter_zones_skipped;
    let before = skipped(&db);
    let recent = Predicate::compare("ts", CompareOp::Ge, Literal::Int(ts(2_900)));
    assert_eq!(passing(&db, &recent), expected(&recent));
    // Of the 8 groups of each indexed segment, only the last group of the last one may match:
    // 23 skipped there, and the unindexed segment's 3 groups all may.
    let skipped_now = skipped(&db) - before;
    assert!(skipped_now >= 23, "{skipped_now} row groups skipped; 23 hold no match");

    // An indexed walk that cannot use a label index (an OR of two columns) reads the columns
    // too, skipping the same way, and returns only matching rows.
    let either = Predicate::Or(vec![
        recent.clone(),
        Predicate::compare("name", CompareOp::Lt, Literal::Str(name(40))),
    ]);
    let walked = SearchParams {
        k: 10,
        list_size: 60,
        filter: Some(either.clone()),
        ..SearchParams::default()
    };
    let before = skipped(&db);
    let got = ids(&db.search("c", &vector(8, 1, DIM), &walked).unwrap());
    let want = expected(&either);
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|id| want.contains(id)), "a row outside the filter: {got:?}");
    assert!(skipped(&db) > before, "the walk's filter read every group");
}

/// A small deterministic generator of predicates over the three columns.
struct Gen(u64);

impl Gen {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn literal(&mut self, column: &str) -> Literal {
        // Values inside, at the edges of and outside the columns' ranges.
        let id = self.next(ROWS + 200).saturating_sub(100);
        match column {
            "ts" => Literal::Int(ts(id) + self.next(3) as i64 - 1),
            "n" => Literal::Int(self.next(7) as i64 - 1),
            _ => Literal::Str(name(id)),
        }
    }

    fn predicate(&mut self, depth: u32) -> Predicate {
        let column = ["ts", "n", "name"][self.next(3) as usize];
        let op = [
            CompareOp::Eq,
            CompareOp::Ne,
            CompareOp::Lt,
            CompareOp::Le,
            CompareOp::Gt,
            CompareOp::Ge,
        ][self.next(6) as usize];
        match (depth, self.next(8)) {
            (0, _) | (_, 0..=2) => Predicate::compare(column, op, self.literal(column)),
            (_, 3) => {
                let values = (0..1 + self.next(3)).map(|_| self.literal(column)).collect();
                Predicate::is_in(column, values)
            }
            (_, 4) if self.next(2) == 0 => Predicate::IsNull(column.into()),
            (_, 4) => Predicate::IsNotNull(column.into()),
            (_, 5) => Predicate::Not(Box::new(self.predicate(depth - 1))),
            (_, 6) => Predicate::And((0..2).map(|_| self.predicate(depth - 1)).collect()),
            _ => Predicate::Or((0..2).map(|_| self.predicate(depth - 1)).collect()),
        }
    }
}

#[test]
fn no_predicate_loses_a_row_to_the_skipped_groups() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut generator = Gen(0x9e37_79b9_7f4a_7c15);
    let before = db.stats("c").unwrap().filter_zones_skipped;
    for case in 0..300 {
        let p = generator.predicate(3);
        assert_eq!(passing(&db, &p), expected(&p), "case {case}: {p:?}");
    }
    let skipped = db.stats("c").unwrap().filter_zones_skipped - before;
    assert!(skipped > 100, "only {skipped} row groups skipped: the cases barely test it");
}

/// Row groups are large (tens of thousands of rows), so a zone map of row groups alone still
/// reads most of a column for a filter that matches a sliver. The pages of a row group (at
/// most 4,096 rows each) carry their own min/max in the file's page index; a merge that copies
/// row groups must carry those along (moved to where the pages land), or the merged segment
/// falls back to whole row groups without a word. This pins down both, and that the rows of
/// the kept pages are still all found.
#[test]
fn a_filter_on_an_ordered_column_skips_pages_inside_row_groups_even_after_a_copying_merge() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .background(false)
        .min_index_rows(500)
        .merge_min_segments(2)
        .row_group_rows(20_000)
        .idle_flush(None);
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", collection()).unwrap();
    for part in 0..2u64 {
        let ids: Vec<u64> = (part * 10_000..(part + 1) * 10_000).collect();
        db.insert("c", &rows(&ids)).unwrap();
        db.flush().unwrap();
    }
    db.run_background().unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (1, 1), "the two segments were not merged");
    // Two row groups of 10,000 rows (one a flushed segment, copied whole), each in pages of
    // 4,096, 4,096 and 1,808 rows: only the last page of the second may hold ts >= ts(19,000).
    let recent = Predicate::compare("ts", CompareOp::Ge, Literal::Int(ts(19_000)));
    let params = SearchParams {
        k: 2_000,
        exact: true,
        filter: Some(recent.clone()),
        ..SearchParams::default()
    };
    let before = db.stats("c").unwrap().filter_zones_skipped;
    let mut got = ids(&db.search("c", &vector(8, 0, DIM), &params).unwrap());
    got.sort_unstable();
    assert_eq!(got, (19_000..20_000).collect::<Vec<u64>>());
    let skipped = db.stats("c").unwrap().filter_zones_skipped - before;
    assert_eq!(skipped, 5, "zones skipped: of 6 pages, 5 hold no match (row groups: at most 1)");
}

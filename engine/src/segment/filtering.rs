//! Which rows of a segment pass a filter, without reading its columns where that can be
//! avoided: the results of the last few filters remembered, the label indexes of
//! low-cardinality columns (`labels.rs`), and the zone map of the pages' and row groups'
//! statistics.

use std::io;
use std::sync::Arc;

use quiver_wal::vfs::Vfs;

use super::labels::{LabelIndex, labels_path};
use super::{MASK_MEMO, SegmentError, SegmentFile};
use crate::filter::Filter;
use crate::rowset::RowSet;

impl SegmentFile {
    /// The rows that passed the filter keyed `key` when it was last evaluated over the file,
    /// if it is remembered.
    pub(crate) fn remembered_mask(&self, key: &str) -> Option<Arc<RowSet>> {
        let mut masks = self.masks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = masks.iter().position(|(k, _)| k == key)?;
        let hit = masks.remove(at);
        let rows = Arc::clone(&hit.1);
        masks.insert(0, hit);
        Some(rows)
    }

    /// Bytes of the filter results the file remembers.
    pub(crate) fn remembered_bytes(&self) -> usize {
        let masks = self.masks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let remembered: usize = masks.iter().map(|(k, rows)| k.len() + rows.bytes()).sum();
        let labels = self.labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        remembered + labels.iter().filter_map(|(_, l)| l.as_ref()).map(|l| l.bytes()).sum::<usize>()
    }

    /// Remembers `rows` as what passes the filter keyed `key`, forgetting the least recent
    /// beyond [`MASK_MEMO`].
    pub(crate) fn remember_mask(&self, key: &str, rows: Arc<RowSet>) {
        let mut masks = self.masks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        masks.retain(|(k, _)| k != key);
        masks.insert(0, (key.to_string(), rows));
        masks.truncate(MASK_MEMO);
    }

    /// The rows that pass `filter`, found through the label index of its one column
    /// ([`labels`](super::labels): opened from `segments/{id}.{column}.labels`, or built from the column the
    /// first time and written there), or for an AND of one-column parts, the intersection of
    /// the parts' that have one, the other parts evaluated on those rows alone; `None` when the
    /// filter is neither, or no part of it has a label index (a type without one, more than [`MAX_LABEL_VALUES`](super::MAX_LABEL_VALUES)
    /// distinct values, or a column added after the file was written). No lock is held
    /// across I/O: two searches that race to build the same index both build it, and the
    /// second file replaces the first.
    ///
    /// # Errors
    /// [`SegmentError::Io`] or [`SegmentError::Corrupt`] from reading the column, or
    /// [`SegmentError::Io`] from reading a posting. An index file that fails its checks when
    /// opened is built again; a posting that fails its checksum when read is not used: the
    /// index is removed and `None` returned, so the caller reads the column instead.
    pub(crate) fn label_rows(
        &self,
        vfs: &dyn Vfs,
        filter: &Filter,
    ) -> Result<Option<RowSet>, SegmentError> {
        if filter.columns().len() == 1 {
            return self.column_label_rows(vfs, filter);
        }
        // An AND of one-column parts: the intersection of those that have a label index; the
        // others evaluated on the rows that remain, their columns read for those rows only.
        let mut all: Option<RowSet> = None;
        let mut rest = Vec::new();
        for part in filter.conjuncts() {
            match self.column_label_rows(vfs, part)? {
                Some(rows) => {
                    all = Some(match all {
                        Some(before) => before.intersection(&rows),
                        None => rows,
                    });
                }
                None => rest.push(part),
            }
        }
        let Some(mut all) = all else { return Ok(None) };
        for part in rest {
            let candidates: Vec<u32> = all.rows().collect();
            if candidates.is_empty() {
                break;
            }
            let mut at = 0;
            for batch in self.read(part.columns(), Some(&candidates), 65_536)? {
                // A part that cannot be evaluated is left to the whole filter's evaluation,
                // which reports it.
                let Ok(passed) = part.evaluate(&batch) else { return Ok(None) };
                for i in 0..passed.len() {
                    if !passed.value(i) {
                        all.remove(candidates[at + i] as usize);
                    }
                }
                at += passed.len();
            }
            if at != candidates.len() {
                let reason = format!("{at} values read for {} rows", candidates.len());
                return Err(SegmentError::Corrupt { path: self.path.clone(), reason });
            }
        }
        Ok(Some(all))
    }

    /// The zones of the file in which a row may pass `filter`, as `(first row, rows)` runs,
    /// and how many zones were ruled out; `None` when none is. A zone is a data page (at most
    /// [`ZONE_PAGE_ROWS`](super::ZONE_PAGE_ROWS) rows) for a filter on one column whose pages
    /// all have their min/max in the file's page index, else a row group, judged by the column
    /// statistics in the Parquet footer. No I/O: the footer and the page index were read and
    /// checked at open. A zone map: a filter on a column that follows the rows' order (a
    /// timestamp, a sequence number) rules out all but a few.
    pub(crate) fn zones_may_pass(&self, filter: &Filter) -> Option<(Vec<(u64, u64)>, usize)> {
        let (may, rows) = match self.page_zones(filter) {
            Some(pages) => pages,
            None => self.row_group_zones(filter)?,
        };
        if may.iter().all(|&m| m) {
            return None;
        }
        let mut first = 0u64;
        let mut kept: Vec<(u64, u64)> = Vec::new();
        for (&m, &n) in may.iter().zip(&rows) {
            if m {
                match kept.last_mut() {
                    Some((at, len)) if *at + *len == first => *len += n,
                    _ => kept.push((first, n)),
                }
            }
            first += n;
        }
        Some((kept, may.iter().filter(|&&m| !m).count()))
    }

    /// The statistics converter of file column `column`, if the file has it.
    fn converter(
        &self,
        column: usize,
    ) -> Option<parquet::arrow::arrow_reader::statistics::StatisticsConverter<'_>> {
        use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
        if column >= self.width {
            return None; // added after the file was written: no statistics
        }
        let name = self.meta.schema().field(column).name();
        StatisticsConverter::try_new(name, self.meta.schema(), self.meta.parquet_schema())
            .ok()
            .map(|c| c.with_missing_null_counts_as_zero(false))
    }

    /// Per row group, whether a row may pass `filter`, and its rows.
    fn row_group_zones(&self, filter: &Filter) -> Option<(Vec<bool>, Vec<u64>)> {
        let md = self.meta.metadata();
        let groups = md.row_groups();
        let stats = |column: usize| -> Option<crate::filter::ZoneStats> {
            let converter = self.converter(column)?;
            Some(crate::filter::ZoneStats {
                mins: converter.row_group_mins(groups).ok()?,
                maxes: converter.row_group_maxes(groups).ok()?,
                nulls: converter.row_group_null_counts(groups).ok()?,
                rows: converter.row_group_row_counts(groups).ok()??,
            })
        };
        let may = filter.zones_may_pass(groups.len(), stats);
        Some((may, groups.iter().map(|g| g.num_rows().max(0) as u64).collect()))
    }

    /// Per data page, whether a row may pass `filter`, and its rows: for a filter on one
    /// column whose every row group has its pages' min/max and places in the page index.
    fn page_zones(&self, filter: &Filter) -> Option<(Vec<bool>, Vec<u64>)> {
        let &[column] = filter.columns() else { return None };
        let md = self.meta.metadata();
        let index = md.page_index()?.as_ref();
        let converter = self.converter(column)?;
        let leaf = converter.parquet_column_index()?;
        let groups: Vec<usize> = (0..md.num_row_groups()).collect();
        let complete = groups.iter().all(|&g| {
            index.column_index(g, leaf).is_some() && index.offset_index(g, leaf).is_some()
        });
        if !complete {
            return None;
        }
        let rows = converter.data_page_row_counts(index, md.row_groups(), &groups).ok()??;
        let stats = crate::filter::ZoneStats {
            mins: converter.data_page_mins(index, &groups).ok()?,
            maxes: converter.data_page_maxes(index, &groups).ok()?,
            nulls: converter.data_page_null_counts(index, &groups).ok()?,
            rows: rows.clone(),
        };
        let pages = rows.len();
        if stats.mins.len() != pages || stats.maxes.len() != pages || stats.nulls.len() != pages {
            return None;
        }
        let total: u64 = rows.values().iter().sum();
        if total != self.rows || arrow_array::Array::null_count(&rows) > 0 {
            return None; // not every row's page accounted for: judge the row groups instead
        }
        let may = filter.zones_may_pass(pages, |c| (c == column).then(|| stats.clone()));
        Some((may, rows.values().to_vec()))
    }

    /// Column `column`'s label index: the one opened before, else opened from
    /// `segments/{id}.{column}.labels`, else built from the column and written there. `None`
    /// for a column of a type without one, with more than [`MAX_LABEL_VALUES`](super::MAX_LABEL_VALUES) distinct values, or
    /// added after the file was written. No lock is held across I/O: two callers that race to
    /// build it both build it, and the second file replaces the first.
    ///
    /// # Errors
    /// [`SegmentError::Io`] or [`SegmentError::Corrupt`] from reading the column.
    pub(crate) fn label_index(
        &self,
        vfs: &dyn Vfs,
        column: usize,
    ) -> Result<Option<Arc<LabelIndex>>, SegmentError> {
        let Some(field) = self.schema.fields().get(column).map(Arc::clone) else {
            return Ok(None);
        };
        if column >= self.width || !LabelIndex::supports(field.data_type()) {
            return Ok(None);
        }
        let known = {
            let labels = self.labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            labels.iter().find(|(c, _)| *c == column).map(|(_, l)| l.clone())
        };
        if let Some(index) = known {
            return Ok(index);
        }
        let path = labels_path(&self.path, column);
        let shape = (self.rows, self.sum.crc);
        let index = match LabelIndex::open(vfs, &path, &field, column, shape) {
            Ok(index) => Some(index),
            Err(e) => {
                if !matches!(&e, SegmentError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
                {
                    tracing::warn!("{e}; building the label index again");
                }
                let batches = || self.batches(&[column], None, 65_536);
                LabelIndex::build(vfs, &path, &field, column, shape, batches)?
            }
        };
        let index = index.map(Arc::new);
        let mut labels = self.labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !labels.iter().any(|(c, _)| *c == column) {
            labels.push((column, index.clone()));
        }
        Ok(index)
    }

    /// Forgets column `column`'s label index and removes its file: it failed a check when
    /// read (derived data: the next use builds it again from the column).
    pub(crate) fn forget_label_index(&self, vfs: &dyn Vfs, column: usize) {
        let mut labels = self.labels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        labels.retain(|(c, _)| *c != column);
        drop(labels);
        if let Err(e) = vfs.remove_file(&labels_path(&self.path, column)) {
            tracing::warn!("could not remove a damaged label index: {e}");
        }
    }

    /// The values of a label column that `filter` requires one of: `(column, entries)` for the
    /// first of its AND parts that reads one of `columns` alone and that at most `most` values
    /// of the column pass (`tenant = 7`, `tenant IN (7, 9)`), their entries in the column's
    /// label index ([`LabelIndex::entries`]; the nulls' entry, last, when nulls pass too);
    /// `None` when no part does. The part is evaluated over the column's distinct values in
    /// RAM, no rows read.
    ///
    /// # Errors
    /// As [`SegmentFile::label_index`].
    pub(crate) fn label_values(
        &self,
        vfs: &dyn Vfs,
        filter: &Filter,
        columns: &[usize],
        most: usize,
    ) -> Result<Option<(usize, Vec<usize>)>, SegmentError> {
        let parts = match filter.conjuncts() {
            [] => std::slice::from_ref(filter),
            parts => parts,
        };
        for part in parts {
            let &[column] = part.columns() else { continue };
            if !columns.contains(&column) {
                continue;
            }
            let Some(index) = self.label_index(vfs, column)? else { continue };
            if let Some(entries) = index.entries_where(|b| part.evaluate(b))
                && (1..=most).contains(&entries.len())
            {
                return Ok(Some((column, entries)));
            }
        }
        Ok(None)
    }

    /// [`SegmentFile::label_rows`] of a filter that reads one column.
    fn column_label_rows(
        &self,
        vfs: &dyn Vfs,
        filter: &Filter,
    ) -> Result<Option<RowSet>, SegmentError> {
        let &[column] = filter.columns() else { return Ok(None) };
        let index = self.label_index(vfs, column)?;
        let Some(index) = index else { return Ok(None) };
        match index.rows_where(|batch| filter.evaluate(batch)) {
            Ok(rows) => Ok(rows),
            Err(e @ SegmentError::Corrupt { .. }) => {
                // Derived data: forget it and answer from the segment file, which is intact;
                // the next filter on the column builds the index again.
                tracing::warn!("{e}; removing the label index");
                self.forget_label_index(vfs, column);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

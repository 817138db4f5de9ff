//! The on-disk layout of an index: one file of 4096-byte sectors (`docs/format.md` has it byte by
//! byte).
//!
//! Sector 0 is the header. Nodes follow from sector 1: a node is its full-precision vector, its degree
//! (`u32`), `R` neighbour-id slots (`u32`) and, from format version 2, its label (`u32`: the
//! caller's id for the vector, its row in the build's input). Nodes small enough share a sector
//! (`nodes_per_sector` of them, never straddling a sector boundary, so a node costs exactly one
//! read); a larger node occupies `sectors_per_node` consecutive sectors.
//!
//! A node's *position* (its place in the file) is its id inside the index: neighbour lists, the
//! entry point, the PQ codes and the node cache all use positions. The builder places graph
//! neighbours in the same sector, so positions differ from labels; a search reports labels.
//! Version 1 files have no label field, and a node's label is its position.
//!
//! The last 4 bytes of **every** sector are the CRC32C of its first 4092, so each sector a search
//! reads is verified on arrival: corruption is an error naming the sector, never a wrong vector or
//! a wild neighbour id.
//!
//! The writer streams: it holds one sector in memory, whatever the size of the index.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::data::{ElemType, Metric};

/// Bytes per sector.
pub const SECTOR: usize = 4096;
/// Bytes of a sector available to data: the last 4 hold its CRC32C.
pub const PAYLOAD: usize = SECTOR - 4;
/// Sectors [`IndexReader::for_each_node`] reads at a time (256 KiB: large enough for sequential
/// throughput, small beside a growth's memory allowance).
pub const SCAN_SECTORS: usize = 64;
/// Bytes [`IndexWriter`] buffers before it writes.
pub const WRITE_BUFFER: usize = 256 << 10;
/// First 8 bytes of an index file.
pub const MAGIC: [u8; 8] = *b"QVRGRAPH";
/// Format version this code writes. It also reads version 1 (no labels).
pub const VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const MIN_VERSION: u32 = 1;

/// Why an index file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// An I/O call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not an index this version can read, or is damaged.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        reason: String,
    },
    /// The caller broke the writer's contract (wrong node count or sizes).
    #[error("index writer: {0}")]
    Usage(String),
}

/// The header: everything needed to locate and interpret nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Header {
    /// Format version: [`VERSION`] for new files; [`MIN_VERSION`]..=[`VERSION`] when read.
    pub version: u32,
    /// Element type of the stored vectors.
    pub elem: ElemType,
    /// Metric the graph was built and is searched with (L2 for inner-product collections).
    pub metric: Metric,
    /// Metric the user asked for (inner product is stored as L2 on `dim + 1` dimensions).
    pub user_metric: Metric,
    /// Dimension of the stored vectors.
    pub dim: u32,
    /// Number of nodes.
    pub n: u64,
    /// Maximum degree `R` (neighbour slots per node).
    pub max_degree: u32,
    /// Entry point of every search (a position).
    pub entry: u32,
    /// `M²` of the MIPS → L2 reduction (0 unless `user_metric` is inner product).
    pub mips_max_norm_sq: f32,
}

/// Where a node lives: its first sector, its byte offset in that sector, and how many sectors to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLocation {
    /// First sector (absolute, so at least 1).
    pub sector: u64,
    /// Offset of the node inside the first sector's payload (0 for multi-sector nodes).
    pub offset: usize,
    /// Sectors to read.
    pub sectors: usize,
}

impl Header {
    /// Bytes of one node: vector, degree, neighbour slots, label (version 2 on).
    pub fn node_size(&self) -> usize {
        self.label_offset() + if self.version >= 2 { 4 } else { 0 }
    }

    /// Offset of the label inside a node (version 2 on).
    fn label_offset(&self) -> usize {
        self.dim as usize * self.elem.size() + 4 + 4 * self.max_degree as usize
    }

    /// The positions stored in the same sector as position `i` (just `i` for spanning nodes).
    pub fn sector_mates(&self, i: u32) -> std::ops::Range<u32> {
        match self.nodes_per_sector() as u64 {
            0 => i..i + 1,
            k => {
                let first = u64::from(i) / k * k;
                first as u32..(first + k).min(self.n) as u32
            }
        }
    }

    /// Nodes per sector, or 0 when a node needs more than one sector.
    pub fn nodes_per_sector(&self) -> usize {
        PAYLOAD / self.node_size()
    }

    /// Sectors per node (1 when nodes are packed).
    pub fn sectors_per_node(&self) -> usize {
        self.node_size().div_ceil(PAYLOAD)
    }

    /// Number of node sectors after the header.
    pub fn node_sectors(&self) -> u64 {
        match self.nodes_per_sector() {
            0 => self.n * self.sectors_per_node() as u64,
            k => self.n.div_ceil(k as u64),
        }
    }

    /// Expected file length in bytes.
    pub fn file_len(&self) -> u64 {
        (1 + self.node_sectors()) * SECTOR as u64
    }

    /// Where the node at position `i` is stored.
    pub fn locate(&self, i: u32) -> NodeLocation {
        match self.nodes_per_sector() {
            0 => {
                let spn = self.sectors_per_node();
                NodeLocation { sector: 1 + u64::from(i) * spn as u64, offset: 0, sectors: spn }
            }
            k => NodeLocation {
                sector: 1 + u64::from(i) / k as u64,
                offset: (i as usize % k) * self.node_size(),
                sectors: 1,
            },
        }
    }

    /// Checks internal consistency (used on both write and read).
    fn check(&self) -> Result<(), String> {
        if !(MIN_VERSION..=VERSION).contains(&self.version) {
            return Err(format!(
                "format version {}, this build reads versions {MIN_VERSION} to {VERSION}",
                self.version
            ));
        }
        if self.dim == 0 || self.dim as usize > quiver_simd::MAX_DIM {
            return Err(format!("dimension {}", self.dim));
        }
        if self.max_degree == 0 || self.max_degree as usize > crate::vamana::MAX_DEGREE_LIMIT {
            return Err(format!("max degree {}", self.max_degree));
        }
        if self.n > u64::from(u32::MAX - 1) {
            return Err(format!("{} nodes", self.n));
        }
        if self.n > 0 && u64::from(self.entry) >= self.n {
            return Err(format!("entry point {} of {} nodes", self.entry, self.n));
        }
        if !self.mips_max_norm_sq.is_finite() || self.mips_max_norm_sq < 0.0 {
            return Err(format!("MIPS norm {}", self.mips_max_norm_sq));
        }
        Ok(())
    }

    /// The header sector.
    pub fn encode(&self) -> [u8; SECTOR] {
        let mut s = [0u8; SECTOR];
        s[0..8].copy_from_slice(&MAGIC);
        let mut put = |at: usize, v: &[u8]| s[at..at + v.len()].copy_from_slice(v);
        put(8, &self.version.to_le_bytes());
        put(12, &self.elem.code().to_le_bytes());
        put(16, &self.metric.code().to_le_bytes());
        put(20, &self.user_metric.code().to_le_bytes());
        put(24, &self.dim.to_le_bytes());
        put(28, &self.max_degree.to_le_bytes());
        put(32, &self.n.to_le_bytes());
        put(40, &self.entry.to_le_bytes());
        put(44, &self.mips_max_norm_sq.to_le_bytes());
        // Derived values, stored so that other readers need not re-derive them.
        put(48, &(self.node_size() as u32).to_le_bytes());
        put(52, &(self.nodes_per_sector() as u32).to_le_bytes());
        put(56, &(self.sectors_per_node() as u32).to_le_bytes());
        put(64, &self.node_sectors().to_le_bytes());
        seal(&mut s);
        s
    }

    /// Parses and validates a header sector.
    ///
    /// # Errors
    /// A description of the first problem: bad magic, version, checksum, code or inconsistency.
    pub fn decode(s: &[u8; SECTOR]) -> Result<Self, String> {
        if s[0..8] != MAGIC {
            return Err("not a Quiver index (bad magic)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(format!(
                "format version {version}, this build reads versions {MIN_VERSION} to {VERSION}"
            ));
        }
        unseal(s).map_err(|e| format!("header sector: {e}"))?;
        let metric = |at: usize| {
            Metric::from_code(u32_at(at))
                .ok_or_else(|| format!("unknown metric code {}", u32_at(at)))
        };
        let h = Header {
            version,
            elem: ElemType::from_code(u32_at(12))
                .ok_or_else(|| format!("unknown element type code {}", u32_at(12)))?,
            metric: metric(16)?,
            user_metric: metric(20)?,
            dim: u32_at(24),
            max_degree: u32_at(28),
            n: u64_at(32),
            entry: u32_at(40),
            mips_max_norm_sq: f32::from_le_bytes(s[44..48].try_into().expect("4 bytes")),
        };
        h.check()?;
        let derived = [
            (48, h.node_size() as u64, u64::from(u32_at(48))),
            (52, h.nodes_per_sector() as u64, u64::from(u32_at(52))),
            (56, h.sectors_per_node() as u64, u64::from(u32_at(56))),
            (64, h.node_sectors(), u64_at(64)),
        ];
        for (at, want, got) in derived {
            if want != got {
                return Err(format!("header field at byte {at} is {got}, its inputs give {want}"));
            }
        }
        Ok(h)
    }
}

/// Writes the CRC32C of `s[..PAYLOAD]` into `s[PAYLOAD..]`.
fn seal(s: &mut [u8; SECTOR]) {
    let crc = crc32c::crc32c(&s[..PAYLOAD]);
    s[PAYLOAD..].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies a sector's checksum.
///
/// # Errors
/// If the stored and computed checksums differ.
pub fn unseal(s: &[u8]) -> Result<(), String> {
    debug_assert_eq!(s.len(), SECTOR);
    let stored = u32::from_le_bytes(s[PAYLOAD..SECTOR].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&s[..PAYLOAD]);
    if stored == actual {
        Ok(())
    } else {
        Err(format!("checksum {actual:#010x}, stored {stored:#010x}"))
    }
}

/// A node as read from disk.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRef<'a> {
    /// The whole node as stored (`node_size` bytes: vector, degree, id slots), already verified.
    pub raw: &'a [u8],
    /// The full-precision vector, raw little-endian bytes.
    pub vector: &'a [u8],
    /// Neighbour positions.
    pub neighbours: Vec<u32>,
    /// The caller's id for this vector (its position in a version 1 file).
    pub label: u32,
}

/// The label of the node at position `i` whose bytes are `bytes`, validated (`< n`).
///
/// # Errors
/// If the label is out of range (only possible in a damaged or forged file).
pub fn node_label(h: &Header, i: u32, bytes: &[u8]) -> Result<u32, String> {
    if h.version < 2 {
        return Ok(i);
    }
    let at = h.label_offset();
    let label = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u64::from(label) >= h.n {
        return Err(format!("label {label} out of range ({} nodes)", h.n));
    }
    Ok(label)
}

/// Parses the bytes (`node_size` of them) of the node at position `i`, validating the degree,
/// every neighbour position and the label.
///
/// # Errors
/// If the degree exceeds `R` or an id is out of range (only possible in a damaged or forged file,
/// since sector checksums already passed).
pub fn parse_node<'a>(h: &Header, i: u32, bytes: &'a [u8]) -> Result<NodeRef<'a>, String> {
    let vbytes = h.dim as usize * h.elem.size();
    let degree = u32::from_le_bytes(bytes[vbytes..vbytes + 4].try_into().expect("4 bytes"));
    if degree > h.max_degree {
        return Err(format!("degree {degree} exceeds the maximum {}", h.max_degree));
    }
    let ids = &bytes[vbytes + 4..vbytes + 4 + 4 * degree as usize];
    let neighbours: Vec<u32> =
        ids.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if let Some(bad) = neighbours.iter().find(|&&id| u64::from(id) >= h.n) {
        return Err(format!("neighbour id {bad} out of range ({} nodes)", h.n));
    }
    let label = node_label(h, i, bytes)?;
    Ok(NodeRef { raw: bytes, vector: &bytes[..vbytes], neighbours, label })
}

/// Writes an index file node by node, in position order, one sector buffered at a time.
#[derive(Debug)]
pub struct IndexWriter {
    path: PathBuf,
    out: BufWriter<File>,
    header: Header,
    sector: Box<[u8; SECTOR]>,
    /// Bytes of the current sector's payload already filled.
    fill: usize,
    written: u64,
    node: Vec<u8>,
}

impl IndexWriter {
    /// Creates (truncating) `path` and writes the header.
    ///
    /// # Errors
    /// If the header is inconsistent or the file cannot be written.
    pub fn create(path: &Path, header: Header) -> Result<Self, LayoutError> {
        header.check().map_err(LayoutError::Usage)?;
        let io = |e| LayoutError::Io { path: path.to_owned(), source: e };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        out.write_all(&header.encode()).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            out,
            header,
            sector: Box::new([0; SECTOR]),
            fill: 0,
            written: 0,
            node: Vec::with_capacity(header.node_size()),
        })
    }

    fn io(&self, e: io::Error) -> LayoutError {
        LayoutError::Io { path: self.path.clone(), source: e }
    }

    fn flush_sector(&mut self) -> Result<(), LayoutError> {
        seal(&mut self.sector);
        self.out.write_all(&self.sector[..]).map_err(|e| self.io(e))?;
        self.sector.fill(0);
        self.fill = 0;
        Ok(())
    }

    /// Appends the next node (positions are implicit: the `k`-th call writes position `k`) with
    /// its neighbours' positions and its label.
    ///
    /// # Errors
    /// If the vector has the wrong size, there are too many neighbours or nodes, a position or the
    /// label is out of range (or, in a version 1 file, the label is not the position), or writing
    /// fails.
    pub fn push(
        &mut self,
        vector: &[u8],
        neighbours: &[u32],
        label: u32,
    ) -> Result<(), LayoutError> {
        let h = self.header;
        if self.written >= h.n {
            return Err(LayoutError::Usage(format!("more than the declared {} nodes", h.n)));
        }
        if vector.len() != h.dim as usize * h.elem.size() {
            return Err(LayoutError::Usage(format!("vector of {} bytes", vector.len())));
        }
        if neighbours.len() > h.max_degree as usize
            || neighbours.iter().any(|&id| u64::from(id) >= h.n)
        {
            return Err(LayoutError::Usage(format!("node {}: bad neighbour list", self.written)));
        }
        let label_ok =
            if h.version >= 2 { u64::from(label) < h.n } else { u64::from(label) == self.written };
        if !label_ok {
            return Err(LayoutError::Usage(format!("node {}: label {label}", self.written)));
        }
        self.node.clear();
        self.node.extend_from_slice(vector);
        self.node.extend_from_slice(&(neighbours.len() as u32).to_le_bytes());
        for id in neighbours {
            self.node.extend_from_slice(&id.to_le_bytes());
        }
        self.node.resize(h.label_offset(), 0);
        if h.version >= 2 {
            self.node.extend_from_slice(&label.to_le_bytes());
        }
        debug_assert_eq!(self.node.len(), h.node_size());
        if h.nodes_per_sector() > 0 {
            let at = self.fill;
            self.sector[at..at + h.node_size()].copy_from_slice(&self.node);
            self.fill += h.node_size();
            if self.fill + h.node_size() > PAYLOAD {
                self.flush_sector()?;
            }
        } else {
            let node = std::mem::take(&mut self.node);
            for chunk in node.chunks(PAYLOAD) {
                self.sector[..chunk.len()].copy_from_slice(chunk);
                self.flush_sector()?;
            }
            self.node = node;
        }
        self.written += 1;
        Ok(())
    }

    /// Writes the last partial sector and makes the file durable (`fsync`).
    ///
    /// # Errors
    /// If fewer nodes than declared were pushed, or writing or syncing fails.
    pub fn finish(mut self) -> Result<(), LayoutError> {
        if self.written != self.header.n {
            return Err(LayoutError::Usage(format!(
                "{} nodes written, {} declared",
                self.written, self.header.n
            )));
        }
        if self.fill > 0 {
            self.flush_sector()?;
        }
        self.out.flush().map_err(|e| self.io(e))?;
        let file = self.out.get_ref();
        file.sync_all().map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })?;
        Ok(())
    }
}

/// Reads an index file with plain positioned reads: the reference reader, used by tests, by the
/// `pread` search backend and by [`IndexReader::verify`].
#[derive(Debug)]
pub struct IndexReader {
    path: PathBuf,
    file: File,
    header: Header,
}

impl IndexReader {
    /// Opens `path`, validating the header and the file length.
    ///
    /// # Errors
    /// [`LayoutError::Corrupt`] for a bad header or a file of the wrong length (e.g. truncated).
    pub fn open(path: &Path) -> Result<Self, LayoutError> {
        let io = |e| LayoutError::Io { path: path.to_owned(), source: e };
        let corrupt = |reason: String| LayoutError::Corrupt { path: path.to_owned(), reason };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < SECTOR as u64 {
            return Err(corrupt(format!("{len} bytes: shorter than the header sector")));
        }
        let mut head = [0u8; SECTOR];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let header = Header::decode(&head).map_err(corrupt)?;
        if len != header.file_len() {
            return Err(corrupt(format!(
                "{len} bytes, the header implies {} (truncated or extended)",
                header.file_len()
            )));
        }
        Ok(Self { path: path.to_owned(), file, header })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The open file (for the search backends).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the node at position `i`: its sectors into `buf` (resized as needed), verifies
    /// them, and parses the node.
    ///
    /// # Errors
    /// I/O failure, a checksum mismatch, or an invalid node.
    pub fn read_node<'b>(&self, i: u32, buf: &'b mut Vec<u8>) -> Result<NodeRef<'b>, LayoutError> {
        let h = &self.header;
        if u64::from(i) >= h.n {
            return Err(LayoutError::Usage(format!("node {i} of {}", h.n)));
        }
        let loc = h.locate(i);
        self.read_sectors(loc, buf)?;
        node_from_sectors(h, &self.path, i, loc, buf)
    }

    /// Reads the sectors at `loc` into `buf` (resized to fit) as stored: not yet verified.
    ///
    /// # Errors
    /// I/O failure (including a file shorter than `loc` implies).
    pub fn read_sectors(&self, loc: NodeLocation, buf: &mut Vec<u8>) -> Result<(), LayoutError> {
        buf.resize(loc.sectors * SECTOR, 0);
        self.file
            .read_exact_at(buf, loc.sector * SECTOR as u64)
            .map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })
    }

    /// Calls `each(position, node)` for every node in position order: a sequential pass that
    /// reads [`SCAN_SECTORS`] sectors at a time and verifies each sector before parsing its
    /// nodes (nodes spanning sectors are read one by one). Stops at the first error.
    ///
    /// # Errors
    /// I/O failure, a checksum mismatch or an invalid node; or what `each` returns.
    pub fn for_each_node<E: From<LayoutError>>(
        &self,
        mut each: impl FnMut(u32, NodeRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let h = self.header;
        let per_sector = h.nodes_per_sector() as u64;
        let corrupt = |reason: String| LayoutError::Corrupt { path: self.path.clone(), reason };
        if per_sector == 0 {
            let mut buf = Vec::new();
            for p in 0..h.n as u32 {
                each(p, self.read_node(p, &mut buf)?)?;
            }
            return Ok(());
        }
        let sectors = h.node_sectors();
        let mut buf = vec![0u8; SECTOR * SCAN_SECTORS];
        let mut first = 0u64;
        while first < sectors {
            let count = (sectors - first).min(SCAN_SECTORS as u64) as usize;
            let chunk = &mut buf[..count * SECTOR];
            self.file
                .read_exact_at(chunk, (1 + first) * SECTOR as u64)
                .map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })?;
            for s in 0..count {
                let sector_no = 1 + first + s as u64;
                let sector = &chunk[s * SECTOR..(s + 1) * SECTOR];
                unseal(sector).map_err(|e| corrupt(format!("sector {sector_no}: {e}")))?;
                let start = (first + s as u64) * per_sector;
                for p in start..(start + per_sector).min(h.n) {
                    let at = (p - start) as usize * h.node_size();
                    let node = parse_node(&h, p as u32, &sector[at..at + h.node_size()])
                        .map_err(|e| corrupt(format!("node {p} (sector {sector_no}): {e}")))?;
                    each(p as u32, node)?;
                }
            }
            first += count as u64;
        }
        Ok(())
    }

    /// Reads and verifies every sector and every node (a full scan; `open` checks only the header).
    ///
    /// # Errors
    /// The first problem found.
    pub fn verify(&self) -> Result<(), LayoutError> {
        let mut buf = Vec::new();
        for i in 0..self.header.n {
            self.read_node(i as u32, &mut buf)?;
        }
        Ok(())
    }
}

/// Verifies the sectors of node `i` (as read into `buf`) and parses it. Multi-sector nodes are
/// reassembled in place: the payloads are moved together over the checksum gaps.
///
/// # Errors
/// [`LayoutError::Corrupt`] naming the sector.
pub fn node_from_sectors<'b>(
    h: &Header,
    path: &Path,
    i: u32,
    loc: NodeLocation,
    buf: &'b mut [u8],
) -> Result<NodeRef<'b>, LayoutError> {
    verify_sectors(path, loc, buf)?;
    node_from_verified(h, path, i, loc, buf)
}

/// Verifies the sectors at `loc` (as read into `buf`) and reassembles a multi-sector node in
/// place, its payloads moved together over the checksum gaps. What is left is what
/// [`node_from_verified`] parses; it cannot be verified again (the gaps are overwritten).
///
/// # Errors
/// [`LayoutError::Corrupt`] naming the sector.
pub fn verify_sectors(path: &Path, loc: NodeLocation, buf: &mut [u8]) -> Result<(), LayoutError> {
    let corrupt = |reason: String| LayoutError::Corrupt { path: path.to_owned(), reason };
    for s in 0..loc.sectors {
        unseal(&buf[s * SECTOR..(s + 1) * SECTOR])
            .map_err(|e| corrupt(format!("sector {}: {e}", loc.sector + s as u64)))?;
    }
    for s in 1..loc.sectors {
        buf.copy_within(s * SECTOR..s * SECTOR + PAYLOAD, s * PAYLOAD);
    }
    Ok(())
}

/// Parses node `i` from sectors [`verify_sectors`] passed.
///
/// # Errors
/// [`LayoutError::Corrupt`] if the node's structure is invalid (a neighbour out of range, a
/// degree past the maximum).
pub fn node_from_verified<'b>(
    h: &Header,
    path: &Path,
    i: u32,
    loc: NodeLocation,
    buf: &'b [u8],
) -> Result<NodeRef<'b>, LayoutError> {
    let corrupt = |reason: String| LayoutError::Corrupt { path: path.to_owned(), reason };
    let bytes = &buf[loc.offset..loc.offset + h.node_size()];
    parse_node(h, i, bytes).map_err(|e| corrupt(format!("node {i} (sector {}): {e}", loc.sector)))
}

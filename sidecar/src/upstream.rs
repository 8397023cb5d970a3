//! The product's real output port, read as a stream of records.
//!
//! Two modes:
//!
//! - **Directory** (`upstream.kind = "dir"`): `<path>/<port>/` holds the
//!   port's files, `*.ndjson` / `*.jsonl` (one JSON object per line) or
//!   `*.csv` (RFC 4180: a header row, then one record per row; a quoted
//!   cell may hold commas, quotes and line breaks). Files are **time-partitioned by name**:
//!   - `YYYY-MM-DD*` holds records of that UTC day,
//!   - `YYYY-MM*` (no day) holds records of that UTC month,
//!   - any other name is undated and always read.
//!
//!   A read with `from`/`to` opens only the files whose period overlaps
//!   the window, in name order. Records are still checked one by one
//!   against the window, so a misfiled record never escapes it.
//!
//!   A port directory may instead hold **Parquet** files (`*.parquet`),
//!   optionally in Hive-style partition directories (`date=2026-03-01/`);
//!   such a port is read through the columnar plane (`crate::scan`), with
//!   files pruned by the dates in their names and directories.
//! - **HTTP** (`upstream.kind = "http"`): `GET {url}/{port}?from=&to=`
//!   answering NDJSON, read as it arrives.
//!
//! Either way records are read in bounded chunks; nothing holds the data set.
//! Records are handed on as one JSON object per line, as bytes: the reader
//! does not parse NDJSON (the record program does, once, while shaping), and it
//! turns each CSV row into such a line once, keeping only the port's
//! declared fields and typing their cells by the descriptor's `logicalType`.
//! A line longer than `limits.max_line_bytes`, or a CSV row with the wrong
//! number of cells, is *malformed*: it is skipped and counted, never passed
//! through. (A line that is not a JSON object is caught by the record program.)

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgov_columnar::source::Bucket;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

pub use meshgov_core::window::Window;

mod csv;
pub use csv::{CsvRows, CsvSchema, CsvStep};

/// The upstream failed; the detail is logged, not shown to consumers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileFormat {
    Ndjson,
    Csv,
}

/// A configured upstream.
pub enum Upstream {
    Dir(PathBuf),
    /// Parquet in S3-compatible object storage: `<prefix>/<port>/…`.
    S3 {
        bucket: Bucket,
        prefix: String,
    },
    Http {
        base: String,
        client: Box<Client<HttpConnector, Empty<Bytes>>>,
        /// A body that sends nothing for this long has failed.
        stall: Duration,
    },
}

/// The first chunk read from a file: a small read (`limit=10`)
/// copies little more than it needs.
const FIRST_CHUNK: usize = 16 * 1024;
/// Chunks from a file double up to this size, so a whole-port read makes
/// few trips to the blocking pool.
const CHUNK: usize = 256 * 1024;
const HTTP_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    /// `stall`: how long an HTTP upstream may send nothing mid-body
    /// before the read fails (`limits.upstream_stall_timeout_ms`).
    pub fn from_config(
        c: &crate::config::UpstreamConfig,
        stall: Duration,
    ) -> Result<Upstream, UpstreamError> {
        Ok(match c {
            crate::config::UpstreamConfig::Dir(p) => Upstream::Dir(p.clone()),
            crate::config::UpstreamConfig::S3 { bucket, prefix } => Upstream::S3 {
                bucket: Bucket::new(bucket).map_err(|e| UpstreamError(e.to_string()))?,
                prefix: prefix.clone(),
            },
            crate::config::UpstreamConfig::Http(base) => Upstream::Http {
                base: base.clone(),
                client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
                stall,
            },
        })
    }

    /// Opens the port in `window`: its records, or, for a port kept as
    /// Parquet, its files in the window for the columnar plane. Fails
    /// (→ 502) only if the upstream cannot be reached at all.
    pub async fn open(
        &self,
        port: &str,
        window: Window,
        max_line: usize,
        csv: CsvSchema,
    ) -> Result<Opened, UpstreamError> {
        // INVARIANT: `port` passed `request::valid_port_name`, so joining it
        // cannot leave the upstream directory.
        let source = match self {
            Upstream::S3 { bucket, prefix } => {
                let dir = if prefix.is_empty() {
                    port.to_string()
                } else {
                    format!("{prefix}/{port}")
                };
                let objects = bucket
                    .list(&dir)
                    .await
                    .map_err(|e| UpstreamError(format!("cannot list `{dir}`: {e}")))?;
                // A bucket port is always Parquet, even before its first file.
                let files = select_parquet(&objects, window, &dir)?.unwrap_or_default();
                return Ok(Opened::Parquet(ParquetFiles {
                    files,
                    bucket: Some(bucket.clone()),
                }));
            }
            Upstream::Dir(root) => {
                let dir = root.join(port);
                // One trip to the blocking pool tells Parquet from records,
                // lists the partitions, opens the first file and reads its
                // first chunk: a small read costs one hop, not one per
                // file-system call.
                let opened = tokio::task::spawn_blocking(move || {
                    let shown = dir.display().to_string();
                    let objects = walk_port_dir(&dir)?;
                    if let Some(files) = select_parquet(&objects, window, &shown)? {
                        let files = files.iter().map(|p| p.to_string_lossy().into_owned());
                        return Ok(Err(files.collect()));
                    }
                    let mut cursor = FileCursor {
                        files: record_files(objects, window).into(),
                        current: None,
                        chunk: FIRST_CHUNK,
                    };
                    // A first file that cannot be read is a 502, not a
                    // truncated 200.
                    let first = cursor.step()?;
                    Ok::<_, UpstreamError>(Ok((cursor, first)))
                })
                .await
                .map_err(|e| UpstreamError(format!("listing failed: {e}")))??;
                let (cursor, first) = match opened {
                    Ok(records) => records,
                    Err(files) => {
                        return Ok(Opened::Parquet(ParquetFiles {
                            files,
                            bucket: None,
                        }));
                    }
                };
                Source::Files {
                    cursor: Some(cursor),
                    prefetched: Some(Ok(first)),
                }
            }
            Upstream::Http {
                base,
                client,
                stall,
            } => {
                let mut uri = format!("{base}/{port}");
                let mut sep = '?';
                for (k, t) in [("from", window.from), ("to", window.to)] {
                    if let Some(t) = t {
                        let utc = t.to_offset(time::UtcOffset::UTC);
                        let s = utc
                            .format(&Rfc3339)
                            .map_err(|e| UpstreamError(e.to_string()))?;
                        uri.push_str(&format!("{sep}{k}={s}"));
                        sep = '&';
                    }
                }
                let uri: http::Uri = uri
                    .parse()
                    .map_err(|e| UpstreamError(format!("bad upstream URI: {e}")))?;
                let resp = tokio::time::timeout(HTTP_HEADERS_TIMEOUT, client.get(uri))
                    .await
                    .map_err(|_| UpstreamError("upstream did not answer in time".into()))?
                    .map_err(|e| UpstreamError(format!("upstream request failed: {e}")))?;
                if !resp.status().is_success() {
                    return Err(UpstreamError(format!(
                        "upstream answered {}",
                        resp.status()
                    )));
                }
                Source::Http {
                    body: resp.into_body(),
                    stall: *stall,
                }
            }
        };
        Ok(Opened::Records(RecordReader::new(source, max_line, csv)))
    }
}

/// The period a file name covers, if it is dated.
fn period_of(name: &str) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<i32>().ok());
    let b = name.as_bytes();
    let dash = |i: usize| b.get(i) == Some(&b'-');
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if !(digits(0..4) && dash(4) && digits(5..7)) {
        return None;
    }
    let year = num(name.get(0..4))?;
    let month = Month::try_from(u8::try_from(num(name.get(5..7))?).ok()?).ok()?;
    if dash(7) && digits(8..10) {
        let day = u8::try_from(num(name.get(8..10))?).ok()?;
        let d = Date::from_calendar_date(year, month, day).ok()?;
        let start = d.midnight().assume_utc();
        return Some((start, start + time::Duration::days(1)));
    }
    let start = Date::from_calendar_date(year, month, 1)
        .ok()?
        .midnight()
        .assume_utc();
    let next = if month == Month::December {
        Date::from_calendar_date(year + 1, Month::January, 1)
    } else {
        Date::from_calendar_date(year, month.next(), 1)
    }
    .ok()?;
    Some((start, next.midnight().assume_utc()))
}

fn format_of(name: &str) -> Option<FileFormat> {
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        Some(FileFormat::Ndjson)
    } else if name.ends_with(".csv") {
        Some(FileFormat::Csv)
    } else {
        None
    }
}

/// How deep Hive-style partition directories (`date=2026-03-01/`) may nest.
const MAX_PARTITION_DEPTH: usize = 4;

/// A port opened for a read.
pub enum Opened {
    /// Records, one JSON object line at a time.
    Records(RecordReader),
    /// A port kept as Parquet: its files in the window.
    Parquet(ParquetFiles),
}

/// A port's Parquet files that overlap a read's window.
#[derive(Debug, Clone)]
pub struct ParquetFiles {
    /// Absolute paths, or `s3://` URLs in `bucket`.
    pub files: Vec<String>,
    pub bucket: Option<Bucket>,
}

/// Whether a partition's or file's name puts it outside `window`.
fn outside(name: &str, window: Window) -> bool {
    period_of(name).is_some_and(|(s, e)| !window.overlaps(s, e))
}

/// From every object of a port (its path relative to the port's
/// directory, and where to read it), the Parquet files that overlap
/// `window`, sorted by path; `None` when the port keeps no Parquet.
///
/// Files are pruned by a date in their name, as record files are, and by
/// Hive-style partition directories named `<key>=<date or month>`, at any
/// depth up to [`MAX_PARTITION_DEPTH`]; other directories and hidden
/// entries are ignored. A port that mixes Parquet and record files is
/// refused: which of them it serves would be a guess.
fn select_parquet<L: Clone + Ord>(
    objects: &[(String, L)],
    window: Window,
    port_dir: &str,
) -> Result<Option<Vec<L>>, UpstreamError> {
    let (mut parquet, mut records) = (false, false);
    let mut files = Vec::new();
    for (rel, location) in objects {
        let parts: Vec<&str> = rel.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        if name.starts_with('.')
            || dirs.len() > MAX_PARTITION_DEPTH
            || dirs.iter().any(|d| d.starts_with('.') || !d.contains('='))
        {
            continue;
        }
        if name.ends_with(".parquet") {
            parquet = true;
            let pruned = outside(name, window)
                || dirs
                    .iter()
                    .any(|d| d.split_once('=').is_some_and(|(_, v)| outside(v, window)));
            if !pruned {
                files.push((rel, location));
            }
        } else if dirs.is_empty() && format_of(name).is_some() {
            records = true;
        }
    }
    if !parquet {
        return Ok(None);
    }
    if records {
        return Err(UpstreamError(format!(
            "`{port_dir}` holds both Parquet and NDJSON/CSV files; keep one kind per port"
        )));
    }
    files.sort();
    Ok(Some(
        files
            .into_iter()
            .map(|(_, location)| location.clone())
            .collect(),
    ))
}

/// Every file under `dir` (descending into partition directories only),
/// as its path relative to `dir` (as text, for matching names) and its
/// path (as the file system has it). Blocking.
fn walk_port_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, UpstreamError> {
    fn walk(
        dir: &Path,
        rel: &str,
        depth: usize,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), UpstreamError> {
        let cannot =
            |e: std::io::Error| UpstreamError(format!("cannot list `{}`: {e}", dir.display()));
        for entry in std::fs::read_dir(dir).map_err(cannot)? {
            let entry = entry.map_err(cannot)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}{name}");
            if entry.file_type().map_err(cannot)?.is_dir() {
                if depth < MAX_PARTITION_DEPTH && name.contains('=') && !name.starts_with('.') {
                    walk(&entry.path(), &format!("{path}/"), depth + 1, out)?;
                }
            } else {
                out.push((path, entry.path()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", 0, &mut out)?;
    Ok(out)
}

/// The record files among a port directory's `objects` (from
/// [`walk_port_dir`]) that overlap `window`, sorted by name.
fn record_files(objects: Vec<(String, PathBuf)>, window: Window) -> Vec<(PathBuf, FileFormat)> {
    let mut out: Vec<(PathBuf, FileFormat)> = objects
        .into_iter()
        .filter(|(rel, _)| !rel.contains('/'))
        .filter_map(|(name, location)| {
            let fmt = format_of(&name)?;
            let outside = period_of(&name).is_some_and(|(start, end)| !window.overlaps(start, end));
            (!outside).then_some((location, fmt))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The files still to read, and the open one. Its methods block; they run
/// on tokio's blocking pool, one call per chunk.
struct FileCursor {
    files: VecDeque<(PathBuf, FileFormat)>,
    current: Option<std::fs::File>,
    /// The next chunk's size: [`FIRST_CHUNK`], doubling to [`CHUNK`].
    chunk: usize,
}

/// What one [`FileCursor::step`] produced.
struct Step {
    /// A new file was opened, in this format.
    opened: Option<FileFormat>,
    /// `None` when every file has been read.
    chunk: Option<Chunk>,
}

impl FileCursor {
    /// Opens the next file if none is open, then reads one chunk from it;
    /// `FileEnd` after each file.
    fn step(&mut self) -> Result<Step, UpstreamError> {
        use std::io::Read as _;
        let mut opened = None;
        let file = match &mut self.current {
            Some(f) => f,
            None => {
                let Some((path, fmt)) = self.files.pop_front() else {
                    return Ok(Step {
                        opened: None,
                        chunk: None,
                    });
                };
                let f = std::fs::File::open(&path)
                    .map_err(|e| UpstreamError(format!("cannot open `{}`: {e}", path.display())))?;
                opened = Some(fmt);
                self.current.insert(f)
            }
        };
        // Read into spare capacity: nothing is zeroed first.
        let mut buf = Vec::with_capacity(self.chunk);
        let n = file
            .by_ref()
            .take(self.chunk as u64)
            .read_to_end(&mut buf)
            .map_err(|e| UpstreamError(format!("read failed: {e}")))?;
        self.chunk = (self.chunk * 2).min(CHUNK);
        let chunk = if n > 0 {
            Chunk::Data(Bytes::from(buf))
        } else {
            self.current = None;
            Chunk::FileEnd
        };
        Ok(Step {
            opened,
            chunk: Some(chunk),
        })
    }
}

enum Source {
    Files {
        /// `None` only while a step runs on the blocking pool.
        cursor: Option<FileCursor>,
        /// The step `open` already took.
        prefetched: Option<Result<Step, UpstreamError>>,
    },
    Http {
        body: hyper::body::Incoming,
        /// The longest wait for the next frame.
        stall: Duration,
    },
}

/// One item read from upstream.
#[derive(Debug)]
pub enum Item<'a> {
    /// One record as a JSON object line, without its newline. It is not
    /// parsed yet: the record program refuses it if it is not a JSON object.
    Record(&'a [u8]),
    /// A line that is not a record: skipped and counted.
    Malformed,
}

/// Splits chunks into lines, holding at most `max` bytes of one line.
struct Lines {
    chunk: Bytes,
    pos: usize,
    max: usize,
}

enum Chunk {
    Data(Bytes),
    FileEnd,
}

enum Line {
    /// A whole line inside the current chunk, `chunk[start..end]`: the
    /// common case, read without copying.
    InChunk {
        start: usize,
        end: usize,
    },
    /// A line that spans chunks, assembled in `RecordReader::line`.
    Assembled,
    TooLong,
    /// A CSV file begins: its rows are read by `RecordReader::next_csv`.
    CsvFile,
}

/// Reads records one at a time; memory is one chunk plus one line.
pub struct RecordReader {
    source: Source,
    /// The format of the file being read (HTTP upstreams are NDJSON).
    format: FileFormat,
    lines: Lines,
    line: Vec<u8>,
    /// The port's declared fields, until the first CSV file opens.
    csv_schema: CsvSchema,
    /// CSV files' rows as JSON lines, made when the first CSV file opens:
    /// most ports are not CSV (boxed: the reader's tables are large).
    csv: Option<Box<CsvRows>>,
    /// The current CSV file's bytes are all read: its reader is being fed
    /// the empty input that ends it.
    csv_eof: bool,
}

impl RecordReader {
    fn new(source: Source, max_line: usize, csv: CsvSchema) -> RecordReader {
        RecordReader {
            source,
            format: FileFormat::Ndjson,
            lines: Lines {
                chunk: Bytes::new(),
                pos: 0,
                max: max_line,
            },
            line: Vec::new(),
            csv_schema: csv,
            csv: None,
            csv_eof: false,
        }
    }

    /// The next chunk; `FileEnd` after each file, so a last line without a
    /// newline ends with its own file (and is read in that file's format).
    async fn next_chunk(&mut self) -> Result<Option<Chunk>, UpstreamError> {
        match &mut self.source {
            Source::Http { body, stall } => loop {
                // An upstream that stops sending mid-body would otherwise
                // hold the read (and its client) open for ever.
                let frame = tokio::time::timeout(*stall, body.frame())
                    .await
                    .map_err(|_| {
                        UpstreamError(format!(
                            "upstream sent nothing for {} ms mid-body",
                            stall.as_millis()
                        ))
                    })?;
                match frame {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        return Err(UpstreamError(format!("upstream body failed: {e}")));
                    }
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data()
                            && !data.is_empty()
                        {
                            return Ok(Some(Chunk::Data(data)));
                        }
                    }
                }
            },
            Source::Files { cursor, prefetched } => {
                let step = match prefetched.take() {
                    Some(step) => step,
                    None => {
                        let mut c = cursor
                            .take()
                            .ok_or_else(|| UpstreamError("the reader failed before".into()))?;
                        let (c, step) = tokio::task::spawn_blocking(move || {
                            let step = c.step();
                            (c, step)
                        })
                        .await
                        .map_err(|e| UpstreamError(format!("read failed: {e}")))?;
                        *cursor = Some(c);
                        step
                    }
                }?;
                if let Some(fmt) = step.opened {
                    // A new file: its own format, and (for CSV) its own header.
                    self.format = fmt;
                    if let Some(csv) = &mut self.csv {
                        csv.end_file();
                    }
                }
                Ok(step.chunk)
            }
        }
    }

    /// The next line, in the chunk or assembled in `self.line`; `None` at
    /// the end of everything.
    async fn next_line(&mut self) -> Result<Option<Line>, UpstreamError> {
        self.line.clear();
        let mut over = false;
        let mut any = false;
        let done = |over: bool| if over { Line::TooLong } else { Line::Assembled };
        loop {
            let rest = self.lines.chunk.get(self.lines.pos..).unwrap_or_default();
            if rest.is_empty() {
                match self.next_chunk().await? {
                    None => return Ok(any.then(|| done(over))),
                    Some(Chunk::FileEnd) if any => return Ok(Some(done(over))),
                    Some(Chunk::FileEnd) => continue,
                    Some(Chunk::Data(c)) => {
                        self.lines.chunk = c;
                        self.lines.pos = 0;
                        // Files open only after the last one's `FileEnd`,
                        // so no line is under way here.
                        if self.format == FileFormat::Csv {
                            return Ok(Some(Line::CsvFile));
                        }
                        continue;
                    }
                }
            }
            let newline = memchr::memchr(b'\n', rest);
            if let Some(i) = newline
                && !any
            {
                // The whole line is in this chunk: hand out its position.
                let start = self.lines.pos;
                self.lines.pos += i + 1;
                return Ok(Some(if i > self.lines.max {
                    Line::TooLong
                } else {
                    Line::InChunk {
                        start,
                        end: start + i,
                    }
                }));
            }
            any = true;
            let (part, consumed, complete) = match newline {
                Some(i) => (rest.get(..i).unwrap_or_default(), i + 1, true),
                None => (rest, rest.len(), false),
            };
            if !over {
                if self.line.len() + part.len() > self.lines.max {
                    over = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            self.lines.pos += consumed;
            if complete {
                return Ok(Some(done(over)));
            }
        }
    }

    /// The next record or malformed line; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Item<'_>>, UpstreamError> {
        loop {
            if self.format == FileFormat::Csv {
                match self.next_csv().await? {
                    CsvNext::Step(CsvStep::Record) => {
                        let record = self.csv.as_ref().map_or(&[][..], |c| c.record());
                        return Ok(Some(Item::Record(record)));
                    }
                    CsvNext::Step(CsvStep::Malformed) => return Ok(Some(Item::Malformed)),
                    CsvNext::Step(_) | CsvNext::OtherFormat => continue,
                    CsvNext::Done => return Ok(None),
                }
            }
            let Some(l) = self.next_line().await? else {
                return Ok(None);
            };
            // Positions, not a borrow: the borrow is taken again where a
            // record is returned, so the loop may go on reading.
            let (assembled, start, mut end) = match l {
                Line::TooLong => return Ok(Some(Item::Malformed)),
                Line::CsvFile => continue,
                Line::InChunk { start, end } => (false, start, end),
                Line::Assembled => (true, 0, self.line.len()),
            };
            let line = line_at(&self.lines.chunk, &self.line, assembled, start, end);
            if line.last() == Some(&b'\r') {
                end -= 1;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Item::Record(line_at(
                &self.lines.chunk,
                &self.line,
                assembled,
                start,
                end,
            ))));
        }
    }

    /// Feeds the current CSV file to its reader until a row is found, the
    /// file ends, or the next file is not CSV.
    async fn next_csv(&mut self) -> Result<CsvNext, UpstreamError> {
        loop {
            if !self.csv_eof && self.lines.pos >= self.lines.chunk.len() {
                match self.next_chunk().await? {
                    Some(Chunk::Data(c)) => {
                        self.lines.chunk = c;
                        self.lines.pos = 0;
                        if self.format != FileFormat::Csv {
                            return Ok(CsvNext::OtherFormat);
                        }
                    }
                    Some(Chunk::FileEnd) => self.csv_eof = true,
                    None => return Ok(CsvNext::Done),
                }
                continue;
            }
            let input = if self.csv_eof {
                &[][..]
            } else {
                self.lines.chunk.get(self.lines.pos..).unwrap_or_default()
            };
            let csv = self.csv.get_or_insert_with(|| {
                Box::new(CsvRows::new(
                    std::mem::take(&mut self.csv_schema),
                    self.lines.max,
                ))
            });
            let (step, used) = csv.step(input);
            self.lines.pos += used;
            match step {
                CsvStep::NeedInput => continue,
                CsvStep::FileEnd => {
                    self.csv_eof = false;
                    return Ok(CsvNext::Step(step));
                }
                CsvStep::Record | CsvStep::Malformed => return Ok(CsvNext::Step(step)),
            }
        }
    }
}

/// What `RecordReader::next_csv` found.
enum CsvNext {
    Step(CsvStep),
    /// The next file is not CSV.
    OtherFormat,
    /// Every file is read.
    Done,
}

/// The current line's bytes, in the chunk or assembled.
fn line_at<'a>(
    chunk: &'a [u8],
    line: &'a [u8],
    assembled: bool,
    start: usize,
    end: usize,
) -> &'a [u8] {
    let from = if assembled { line } else { chunk };
    from.get(start..end).unwrap_or_default()
}

/// The time of a record: its `field` read as RFC 3339, or as a date.
/// `None` when the line is not a JSON object, the field is missing, appears
/// twice, is not a string, or does not parse. Only the one field is
/// decoded; the rest of the line is skipped.
pub fn record_time(line: &[u8], field: &str) -> Option<OffsetDateTime> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let raw = de::Deserializer::deserialize_map(&mut de, OneField { field }).ok()??;
    let text: Cow<'_, str> = match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Cow::Borrowed(s),
        // Escapes in the string: decode them.
        Err(_) => Cow::Owned(serde_json::from_str::<String>(raw.get()).ok()?),
    };
    meshgov_core::window::parse_time(&text)
}

/// Finds one top-level key's raw value; a repeated key is an error.
struct OneField<'f> {
    field: &'f str,
}

impl<'de> Visitor<'de> for OneField<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_it) = map.next_key_seed(KeyIs(self.field))? {
            if !is_it {
                map.next_value::<IgnoredAny>()?;
            } else if found.replace(map.next_value::<&'de RawValue>()?).is_some() {
                return Err(de::Error::custom("repeated time field"));
            }
        }
        Ok(found)
    }
}

/// Whether an object key equals the wanted one, without allocating.
struct KeyIs<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod parquet_listing {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn objects(rels: &[&str]) -> Vec<(String, String)> {
        rels.iter()
            .map(|r| (r.to_string(), format!("/port/{r}")))
            .collect()
    }

    #[test]
    fn partitions_and_dated_names_are_pruned_by_the_window() {
        let day = |d: &str| meshgov_core::window::parse_time(d);
        let w = Window {
            from: day("2026-03-02"),
            to: day("2026-03-03"),
        };
        let all = objects(&[
            "date=2026-03-01/part-0.parquet",
            "date=2026-03-02/part-0.parquet",
            "region=eu/date=2026-03-02/part-1.parquet",
            "2026-03-01.parquet",
            "2026-03-02.parquet",
            "month=2026-03/x.parquet",
            "month=2026-04/x.parquet",
            "undated.parquet",
            ".hidden.parquet",
            "tmp/part-0.parquet",
            "_SUCCESS",
        ]);
        let got = select_parquet(&all, w, "port").unwrap().unwrap();
        assert_eq!(
            got,
            [
                "/port/2026-03-02.parquet",
                "/port/date=2026-03-02/part-0.parquet",
                "/port/month=2026-03/x.parquet",
                "/port/region=eu/date=2026-03-02/part-1.parquet",
                "/port/undated.parquet",
            ]
        );
        // An open window keeps every Parquet file.
        let open = select_parquet(
            &objects(&["a.parquet", "date=2020-01-01/b.parquet"]),
            Window::default(),
            "port",
        );
        assert_eq!(open.unwrap().unwrap().len(), 2);
    }

    #[test]
    fn record_ports_are_not_parquet_and_mixing_is_refused() {
        let w = Window::default();
        assert!(
            select_parquet(&objects(&["a.ndjson", "b.csv"]), w, "port")
                .unwrap()
                .is_none()
        );
        assert!(select_parquet(&objects(&["a.ndjson", "b.parquet"]), w, "port").is_err());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use time::macros::datetime;

    #[test]
    fn file_periods() {
        let (s, e) = period_of("2026-03-01.ndjson").unwrap();
        assert_eq!(s, datetime!(2026-03-01 0:00 UTC));
        assert_eq!(e, datetime!(2026-03-02 0:00 UTC));
        let (s, e) = period_of("2026-12-part1.csv").unwrap();
        assert_eq!(
            (s, e),
            (
                datetime!(2026-12-01 0:00 UTC),
                datetime!(2027-01-01 0:00 UTC)
            )
        );
        assert!(period_of("all.ndjson").is_none());
        assert!(period_of("2026-13-01.ndjson").is_none());
    }

    #[test]
    fn only_overlapping_files_are_listed() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "2026-03-01.ndjson",
            "2026-03-02.ndjson",
            "2026-03-03.ndjson",
            "undated.ndjson",
            "notes.txt",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let w = Window {
            from: Some(datetime!(2026-03-02 12:00 UTC)),
            to: Some(datetime!(2026-03-03 0:00 UTC)),
        };
        let files = record_files(walk_port_dir(d.path()).unwrap(), w);
        let names: Vec<String> = files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["2026-03-02.ndjson", "undated.ndjson"]);
    }

    #[test]
    fn a_file_name_that_is_not_utf8_is_still_opened() {
        use std::os::unix::ffi::OsStrExt as _;
        let d = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"2026-03-01-\xff.ndjson");
        std::fs::write(d.path().join(name), "{}\n").unwrap();
        let files = record_files(walk_port_dir(d.path()).unwrap(), Window::default());
        assert_eq!(files.len(), 1);
        assert!(std::fs::File::open(&files[0].0).is_ok());
    }

    #[test]
    fn files_without_a_final_newline_keep_their_last_record_and_headers() {
        let d = tempfile::tempdir().unwrap();
        let port = d.path().join("p");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("a.csv"), "x,y\n1,2\n3,4").unwrap();
        std::fs::write(port.join("b.csv"), "y,x\n5,6").unwrap();
        std::fs::write(port.join("c.ndjson"), "{\"x\":7}\nnope\n{\"x\":8}").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let items = rt.block_on(async {
            let up = Upstream::Dir(d.path().to_path_buf());
            let Opened::Records(mut r) = up
                .open(
                    "p",
                    Window::default(),
                    1024,
                    csv::schema(&[("x", "integer"), ("y", "string")]),
                )
                .await
                .unwrap()
            else {
                panic!("not a record port")
            };
            let mut v = Vec::new();
            while let Some(i) = r.next().await.unwrap() {
                v.push(match i {
                    Item::Record(line) => serde_json::from_slice(line)
                        .unwrap_or_else(|_| serde_json::json!("not json")),
                    Item::Malformed => serde_json::json!("malformed"),
                });
            }
            v
        });
        // CSV cells are typed by the declared fields; NDJSON lines pass as
        // they are (the record program refuses the one that is not JSON).
        let expected = [
            serde_json::json!({"x": 1, "y": "2"}),
            serde_json::json!({"x": 3, "y": "4"}),
            serde_json::json!({"y": "5", "x": 6}),
            serde_json::json!({"x": 7}),
            serde_json::json!("not json"),
            serde_json::json!({"x": 8}),
        ];
        assert_eq!(items, expected);
    }

    #[test]
    fn csv_rows_with_line_breaks_across_chunk_edges_arrive_whole() {
        let d = tempfile::tempdir().unwrap();
        let port = d.path().join("p");
        std::fs::create_dir_all(&port).unwrap();
        // Quoted cells with line breaks, long enough that chunk edges fall
        // inside them, then an NDJSON file after the CSV one.
        let mut text = String::from("id,note\r\n");
        let mut expected = Vec::new();
        for i in 0..800usize {
            let note = format!(
                "{}\n\"{i}\",\r\n{}",
                "a".repeat(i * 3 % 701),
                "b".repeat(i % 13)
            );
            text.push_str(&format!("{i},\"{}\"\r\n", note.replace('"', "\"\"")));
            expected.push(serde_json::json!({"id": i, "note": note}));
        }
        // At least three chunk edges: 16 + 32 + 64 KiB.
        assert!(text.len() > 7 * FIRST_CHUNK);
        std::fs::write(port.join("a.csv"), text).unwrap();
        std::fs::write(port.join("b.ndjson"), "{\"id\":-1}\n").unwrap();
        expected.push(serde_json::json!({"id": -1}));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let up = Upstream::Dir(d.path().to_path_buf());
            let schema = csv::schema(&[("id", "integer"), ("note", "string")]);
            let Opened::Records(mut r) =
                up.open("p", Window::default(), 4096, schema).await.unwrap()
            else {
                panic!("not a record port")
            };
            let mut v = Vec::new();
            while let Some(i) = r.next().await.unwrap() {
                match i {
                    Item::Record(l) => {
                        v.push(serde_json::from_slice::<serde_json::Value>(l).unwrap())
                    }
                    Item::Malformed => panic!("no row here is malformed"),
                }
            }
            v
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn lines_across_chunk_boundaries_arrive_whole() {
        let d = tempfile::tempdir().unwrap();
        let port = d.path().join("p");
        std::fs::create_dir_all(&port).unwrap();
        // Lines of many lengths, so chunk edges fall everywhere, some CRLF.
        let mut text = String::new();
        let mut expected = Vec::new();
        for i in 0..3000usize {
            let line = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 257));
            text.push_str(&line);
            text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            expected.push(line);
        }
        // At least three chunk edges: 16 + 32 + 64 KiB.
        assert!(text.len() > 7 * FIRST_CHUNK);
        std::fs::write(port.join("a.ndjson"), text).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let up = Upstream::Dir(d.path().to_path_buf());
            let Opened::Records(mut r) = up
                .open("p", Window::default(), 1024, CsvSchema::default())
                .await
                .unwrap()
            else {
                panic!("not a record port")
            };
            let mut v = Vec::new();
            while let Some(i) = r.next().await.unwrap() {
                match i {
                    Item::Record(l) => v.push(String::from_utf8(l.to_vec()).unwrap()),
                    Item::Malformed => panic!("no line here is malformed"),
                }
            }
            v
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn overlong_lines_are_malformed_not_truncated() {
        let d = tempfile::tempdir().unwrap();
        let port = d.path().join("p");
        std::fs::create_dir_all(&port).unwrap();
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(200_000));
        std::fs::write(port.join("a.ndjson"), format!("{long}\n{{\"x\":1}}\n")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = Upstream::Dir(d.path().to_path_buf());
            let Opened::Records(mut r) = up
                .open("p", Window::default(), 1024, CsvSchema::default())
                .await
                .unwrap()
            else {
                panic!("not a record port")
            };
            assert!(matches!(r.next().await.unwrap(), Some(Item::Malformed)));
            assert!(matches!(r.next().await.unwrap(), Some(Item::Record(_))));
            assert!(r.next().await.unwrap().is_none());
        });
    }

    #[test]
    fn record_times_read_one_field() {
        let t = |l: &str| record_time(l.as_bytes(), "at");
        assert_eq!(
            t(r#"{"x":{"at":"no"},"at":"2026-03-01T10:00:00Z"}"#),
            Some(datetime!(2026-03-01 10:00 UTC))
        );
        assert_eq!(
            t(r#"{"at":"2026-03-01"}"#),
            Some(datetime!(2026-03-01 0:00 UTC))
        );
        assert_eq!(
            t(r#"{"at":"2026\u002d03-01"}"#),
            Some(datetime!(2026-03-01 0:00 UTC))
        );
        assert_eq!(t(r#"{"at":"2026-03-01","at":"2026-03-02"}"#), None);
        assert_eq!(t(r#"{"at":1}"#), None);
        assert_eq!(t(r#"{"other":"2026-03-01"}"#), None);
        assert_eq!(t("not json"), None);
    }
}

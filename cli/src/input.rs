//! Reading and checking the records of `send`'s input files.
//!
//! Every record is read and checked before anything is sent, so that a file with a mistake
//! sends nothing instead of half of itself. A problem names the file, the line, the field and
//! the rule it breaks.
//!
//! The inputs are read twice, as streams: a first pass checks every record and keeps only a
//! compact [`Entry`] per valid record (its identity), a second pass reads them again to send
//! them. Memory then grows with the number of records by a few dozen bytes each, never with
//! their size. Standard input cannot be read twice, so it is first copied to a temporary file
//! (disk, not memory, holds it).
//!
//! A record's identity across runs is its [`Key`]: a hash of its canonical content (the fields
//! it sends, whatever their order, spacing or file format) and its occurrence number among the
//! identical records before it. Inserting, removing or moving other lines leaves it unchanged;
//! two identical lines are still two records.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dub::tracker::Event;
use serde_json::{Map, Value};

/// The field of a failed record that carries its error in a `--failed` file. Reading ignores
/// it, so that a failed file can be sent again as it is once its records are fixed.
pub const ERROR_FIELD: &str = "_error";

/// The longest JSON Lines line read; a longer one is a problem, not a reason to hold the file.
const MAX_LINE: usize = 1 << 20;

/// An input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// From the file name: `.jsonl`, `.ndjson` and `-` are JSON Lines, `.csv` is CSV.
    Auto,
    /// One JSON object a line.
    Jsonl,
    /// A header row naming the fields, then one record a row.
    Csv,
}

/// A record's identity across runs (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The hash of the record's canonical content.
    pub digest: u128,
    /// How many identical records come before it in the inputs.
    pub occurrence: u32,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}-{}", self.digest, self.occurrence)
    }
}

/// What the first pass keeps of a valid record: 24 bytes (the digest as two halves, so that it
/// needs no 16-byte alignment).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    digest: [u64; 2],
    occurrence: u32,
    /// Whether Dub deduplicates it (a sale with invoiceId, a lead of a deduplicated mode).
    pub deduplicated: bool,
}

impl Entry {
    fn new(digest: u128, deduplicated: bool) -> Entry {
        Entry {
            // The two halves of the digest; the truncations are the point.
            digest: [(digest >> 64) as u64, digest as u64],
            occurrence: 0,
            deduplicated,
        }
    }

    fn digest(&self) -> u128 {
        (u128::from(self.digest[0]) << 64) | u128::from(self.digest[1])
    }

    /// Its identity.
    pub fn key(&self) -> Key {
        Key {
            digest: self.digest(),
            occurrence: self.occurrence,
        }
    }
}

/// One record, checked and ready to send.
#[derive(Debug, Clone)]
pub struct Record {
    /// The file as the user named it, for messages.
    pub file: String,
    /// The input's position among the inputs, for ordering the `--failed` file.
    pub file_index: usize,
    /// Its line in the file (1-based; for CSV, the line the row starts on).
    pub line: u64,
    /// The hash of its canonical content (the first part of its [`Key`]).
    pub digest: u128,
    /// Its identity across runs, as text (set by [`Reread`]; empty in the first pass).
    pub key: String,
    /// What is sent.
    pub event: Event,
    /// The record as read (CSV converted to JSON), for the `--failed` file.
    pub raw: Map<String, Value>,
}

/// A record that cannot be sent as it is.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The file as the user named it.
    pub file: String,
    /// The input's position among the inputs.
    pub file_index: usize,
    /// The line (0 when the file as a whole is the problem).
    pub line: u64,
    /// The field at fault (`-` for the record as a whole).
    pub field: String,
    /// The rule it breaks.
    pub rule: String,
    /// The record as read, if it could be read as an object.
    pub raw: Option<Map<String, Value>>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file, self.field, self.rule)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.field, self.rule
            )
        }
    }
}

/// An input that could not be read at all (a usage error).
#[derive(Debug)]
pub struct ReadError(pub String);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One item of a pass over the inputs.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "items are handed on one at a time, never stored side by side"
)]
pub enum Item {
    /// A record that can be sent.
    Record(Record),
    /// One that cannot.
    Problem(Problem),
}

/// Options of the check.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Accept records Dub does not deduplicate.
    pub allow_unsafe: bool,
}

/// An input, open for the two passes.
#[derive(Debug)]
pub struct Input {
    /// The file as the user named it (`-` for standard input).
    pub name: String,
    /// What it is across runs: its canonical path, or `-` for standard input.
    pub identity: String,
    format: Format,
    file: File,
}

/// The inputs of a run, each file once.
#[derive(Debug)]
pub struct Inputs {
    /// In the order named, without repeats.
    pub files: Vec<Input>,
    rules: Rules,
}

/// The JSON shape a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Count,
    Object,
}

/// `(name, shape, required)` for each field of a lead, under Dub's names.
const LEAD_FIELDS: &[(&str, Shape, bool)] = &[
    ("clickId", Shape::Text, true),
    ("eventName", Shape::Text, true),
    ("customerExternalId", Shape::Text, true),
    ("customerName", Shape::Text, false),
    ("customerEmail", Shape::Text, false),
    ("customerAvatar", Shape::Text, false),
    ("eventQuantity", Shape::Count, false),
    ("mode", Shape::Text, false),
    ("metadata", Shape::Object, false),
];

/// The same for a sale.
const SALE_FIELDS: &[(&str, Shape, bool)] = &[
    ("customerExternalId", Shape::Text, true),
    ("amount", Shape::Count, true),
    ("currency", Shape::Text, false),
    ("eventName", Shape::Text, false),
    ("paymentProcessor", Shape::Text, false),
    ("invoiceId", Shape::Text, false),
    ("leadEventName", Shape::Text, false),
    ("clickId", Shape::Text, false),
    ("customerName", Shape::Text, false),
    ("customerEmail", Shape::Text, false),
    ("customerAvatar", Shape::Text, false),
    ("metadata", Shape::Object, false),
];

fn shape_of(name: &str) -> Option<Shape> {
    LEAD_FIELDS
        .iter()
        .chain(SALE_FIELDS)
        .find(|(n, _, _)| *n == name)
        .map(|(_, s, _)| *s)
}

impl Inputs {
    /// Opens every input of `paths` (`-` is standard input), each file once: a file named
    /// again, under the same name or another (a symbolic or hard link, `./f` for `f`), is read
    /// once, since its records are the same records.
    pub fn open(paths: &[String], format: Format, rules: Rules) -> Result<Inputs, ReadError> {
        let mut files: Vec<Input> = Vec::new();
        let mut seen: Vec<(FileId, usize)> = Vec::new();
        let mut stdin_used = false;
        for path in paths {
            let format = match format {
                Format::Auto => detect(path)?,
                f => f,
            };
            let (identity, file, id) = if path == "-" {
                if stdin_used {
                    return Err(ReadError("standard input (-) is named twice".into()));
                }
                stdin_used = true;
                let (file, id) = spool_stdin()?;
                ("-".to_owned(), file, id)
            } else {
                let canonical =
                    std::fs::canonicalize(path).map_err(|e| ReadError(format!("{path}: {e}")))?;
                let file = File::open(&canonical).map_err(|e| ReadError(format!("{path}: {e}")))?;
                let id = FileId::of(&file).map_err(|e| ReadError(format!("{path}: {e}")))?;
                (canonical.to_string_lossy().into_owned(), file, Some(id))
            };
            if let Some(id) = id {
                if let Some(&(_, earlier)) = seen.iter().find(|(s, _)| *s == id) {
                    let earlier = &files[earlier].name;
                    eprintln!(
                        "dub-track: {path} is the same file as {earlier}: its records are read \
                         once"
                    );
                    continue;
                }
                seen.push((id, files.len()));
            }
            files.push(Input {
                name: path.clone(),
                identity,
                format,
                file,
            });
        }
        Ok(Inputs { files, rules })
    }

    /// A pass over every record of the inputs, from their start.
    pub fn read(&self) -> Reader<'_> {
        Reader {
            inputs: self,
            next_file: 0,
            current: None,
            pending: Vec::new(),
        }
    }

    /// The first pass: checks every record, hands each problem to `on_problem`, and returns the
    /// identity of each valid record, in order.
    pub fn scan(&self, mut on_problem: impl FnMut(Problem)) -> Result<Vec<Entry>, ReadError> {
        let mut entries = Vec::new();
        for item in self.read() {
            match item? {
                Item::Record(record) => {
                    entries.push(Entry::new(record.digest, record.event.is_deduplicated()));
                }
                Item::Problem(p) => on_problem(p),
            }
        }
        // Each record's rank among identical ones: the entries' positions sorted by digest (a
        // stable sort keeps identical ones in file order), which takes 4 bytes a record where a
        // map from digest to count would take ten times that.
        let Ok(count) = u32::try_from(entries.len()) else {
            return Err(ReadError(format!(
                "more than {} records: split the input",
                u32::MAX
            )));
        };
        let mut order: Vec<u32> = (0..count).collect();
        order.sort_by_key(|&i| entries[i as usize].digest);
        let mut previous: Option<([u64; 2], u32)> = None;
        for i in order {
            let entry = &mut entries[i as usize];
            let occurrence = match previous {
                Some((digest, n)) if digest == entry.digest => n + 1,
                _ => 0,
            };
            entry.occurrence = occurrence;
            previous = Some((entry.digest, occurrence));
        }
        Ok(entries)
    }

    /// The second pass: every valid record again, each with its index among `entries` (what
    /// [`scan`](Self::scan) returned) and its key. An input that changed since the first pass
    /// is an error: its records would not be the ones checked and planned.
    pub fn reread<'a>(&'a self, entries: &'a [Entry]) -> Reread<'a> {
        Reread {
            reader: self.read(),
            entries,
            next: 0,
        }
    }
}

/// What a file is, whatever the path it is reached by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    #[cfg(unix)]
    fn of(file: &File) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(FileId(m.dev(), m.ino()))
    }

    #[cfg(not(unix))]
    fn of(_file: &File) -> std::io::Result<FileId> {
        // Without inode numbers, canonical paths (compared by the caller's names) are all there
        // is; every file is taken as distinct.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(FileId(
            u64::MAX,
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// Copies standard input to a temporary file (which has no name once open: nothing is left
/// behind, whatever happens), so that it can be read twice; returns it with the identity of the
/// file standard input was redirected from, if it was one.
fn spool_stdin() -> Result<(File, Option<FileId>), ReadError> {
    let stdin = std::io::stdin();
    let fail = |e: std::io::Error| ReadError(format!("standard input: {e}"));
    if stdin.is_terminal() {
        eprintln!(
            "dub-track: reading records from standard input (JSON Lines, one a line; end with \
             Ctrl-D)"
        );
    }
    #[cfg(unix)]
    let redirected = {
        use std::os::fd::AsFd;
        let fd = stdin.as_fd().try_clone_to_owned().map_err(fail)?;
        let file = File::from(fd);
        match file.metadata() {
            Ok(m) if m.is_file() => FileId::of(&file).ok(),
            _ => None,
        }
    };
    #[cfg(not(unix))]
    let redirected = None;
    let dir = std::env::temp_dir();
    let mut spool = None;
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            "dub-track-stdin-{}-{attempt}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                spool = Some(f);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(ReadError(format!(
                    "standard input must be copied to a temporary file (it is read twice), and \
                     {} cannot hold it: {e} (set TMPDIR to another directory)",
                    dir.display()
                )));
            }
        }
    }
    let mut spool =
        spool.ok_or_else(|| ReadError("no temporary file for standard input".into()))?;
    std::io::copy(&mut stdin.lock(), &mut spool).map_err(fail)?;
    Ok((spool, redirected))
}

fn detect(path: &str) -> Result<Format, ReadError> {
    if path == "-" {
        return Ok(Format::Jsonl);
    }
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
        Some("csv") => Ok(Format::Csv),
        _ => Err(ReadError(format!(
            "{path}: cannot tell its format from its name: name it .jsonl, .ndjson or .csv, or \
             pass --format jsonl|csv"
        ))),
    }
}

/// The default state file of a run: beside the first input, named after it.
pub fn default_state_path(first: &str) -> Option<PathBuf> {
    if first == "-" {
        return None;
    }
    let mut name = Path::new(first).file_name()?.to_os_string();
    name.push(".dub-state");
    Some(Path::new(first).with_file_name(name))
}

/// A pass over the records of the inputs, as a stream.
pub struct Reader<'a> {
    inputs: &'a Inputs,
    next_file: usize,
    current: Option<(Source<'a>, Parser)>,
    /// Problems of a file's header row, last first.
    pending: Vec<Problem>,
}

enum Parser {
    Jsonl {
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
    },
    Csv {
        reader: csv::Reader<BufReader<File>>,
        headers: Vec<String>,
        row: csv::ByteRecord,
    },
    /// A file whose header row is unusable: its problem is reported, its rows are not read.
    Done,
}

impl Iterator for Reader<'_> {
    type Item = Result<Item, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(problem) = self.pending.pop() {
                return Some(Ok(Item::Problem(problem)));
            }
            if self.current.is_none() {
                let index = self.next_file;
                let input = self.inputs.files.get(index)?;
                self.next_file += 1;
                let source = Source {
                    name: &input.name,
                    file_index: index,
                    rules: self.inputs.rules,
                };
                let mut parser = match open_parser(input) {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                if let Parser::Csv { headers, .. } = &parser {
                    self.pending = source.header_problems(headers);
                    if !self.pending.is_empty() {
                        self.pending.reverse();
                        parser = Parser::Done;
                    }
                }
                self.current = Some((source, parser));
            }
            let (source, parser) = self.current.as_mut()?;
            match source.next_item(parser) {
                Some(item) => return Some(item),
                None => self.current = None,
            }
        }
    }
}

fn open_parser(input: &Input) -> Result<Parser, ReadError> {
    let fail = |e: std::io::Error| ReadError(format!("{}: {e}", input.name));
    // A clone shares the position of the handle opened once (the same file for both passes,
    // whatever happens to its name meanwhile): rewind it.
    let mut file = input.file.try_clone().map_err(fail)?;
    file.seek(SeekFrom::Start(0)).map_err(fail)?;
    let reader = BufReader::with_capacity(64 * 1024, file);
    Ok(match input.format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(reader);
            let headers = match reader.headers() {
                Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect::<Vec<_>>(),
                Err(e) => {
                    return Err(ReadError(format!(
                        "{}:1: the header row cannot be read ({e})",
                        input.name
                    )));
                }
            };
            for (i, h) in headers.iter().enumerate() {
                if headers[..i].contains(h) {
                    return Err(ReadError(format!(
                        "{}:1: {h}: the header row names this column twice; which one to send \
                         cannot be told, so nothing is sent",
                        input.name
                    )));
                }
            }
            Parser::Csv {
                reader,
                headers,
                row: csv::ByteRecord::new(),
            }
        }
        _ => Parser::Jsonl {
            reader,
            line: 0,
            buf: Vec::new(),
        },
    })
}

/// The records of a pass with their keys: what [`Inputs::reread`] returns.
pub struct Reread<'a> {
    reader: Reader<'a>,
    entries: &'a [Entry],
    next: usize,
}

impl Iterator for Reread<'_> {
    type Item = Result<(usize, Record), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.reader.next() {
                None => {
                    return (self.next < self.entries.len()).then(|| Err(changed(None)));
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(Item::Problem(_))) => continue,
                Some(Ok(Item::Record(r))) => r,
            };
            let index = self.next;
            let Some(entry) = self.entries.get(index) else {
                return Some(Err(changed(Some(&record))));
            };
            if entry.digest() != record.digest {
                return Some(Err(changed(Some(&record))));
            }
            self.next += 1;
            let mut record = record;
            record.key = entry.key().to_string();
            return Some(Ok((index, record)));
        }
    }
}

/// Reads one line (with its newline) into `buf`, keeping at most [`MAX_LINE`] bytes of it;
/// `None` at the end of the file, else whether the line was cut.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut read_any = false;
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read_any.then_some(too_long));
        }
        read_any = true;
        let (chunk, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let used = chunk.len();
        if buf.len() + chunk.len() <= MAX_LINE {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
        }
        reader.consume(used);
        if end {
            return Ok(Some(too_long));
        }
    }
}

fn changed(at: Option<&Record>) -> ReadError {
    let at = at.map_or_else(String::new, |r| format!(" ({}:{})", r.file, r.line));
    ReadError(format!(
        "an input changed while it was being read{at}: the records sent would not be those \
         checked; run the command again once the file is complete"
    ))
}

struct Source<'a> {
    name: &'a str,
    file_index: usize,
    rules: Rules,
}

impl Source<'_> {
    fn problem(&self, line: u64, field: &str, rule: impl Into<String>) -> Problem {
        Problem {
            file: self.name.to_owned(),
            file_index: self.file_index,
            line,
            field: field.to_owned(),
            rule: rule.into(),
            raw: None,
        }
    }

    fn next_item(&self, parser: &mut Parser) -> Option<Result<Item, ReadError>> {
        match parser {
            Parser::Jsonl { reader, line, buf } => loop {
                *line += 1;
                let too_long = match read_line(reader, buf) {
                    Ok(None) => return None,
                    Ok(Some(too_long)) => too_long,
                    Err(e) => return Some(Err(ReadError(format!("{}: {e}", self.name)))),
                };
                if too_long {
                    return Some(Ok(Item::Problem(self.problem(
                        *line,
                        "-",
                        format!("is longer than {} MiB", MAX_LINE >> 20),
                    ))));
                }
                let mut text = buf.as_slice();
                if *line == 1 {
                    // Spreadsheet tools and Windows editors start UTF-8 files with a byte-order
                    // mark.
                    text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
                }
                let text = text.strip_suffix(b"\n").unwrap_or(text);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Ok(self.jsonl(*line, text)));
            },
            Parser::Csv {
                reader,
                headers,
                row,
            } => loop {
                match reader.read_byte_record(row) {
                    Ok(false) => return None,
                    Ok(true) => {
                        if let Some(item) = self.csv_row(headers, row) {
                            return Some(Ok(item));
                        }
                    }
                    Err(e) => {
                        if let csv::ErrorKind::Io(io) = e.kind() {
                            return Some(Err(ReadError(format!("{}: {io}", self.name))));
                        }
                        let line = e.position().map_or(0, |p| p.line());
                        return Some(Ok(Item::Problem(self.problem(
                            line,
                            "-",
                            format!("is not valid CSV ({e})"),
                        ))));
                    }
                }
            },
            Parser::Done => None,
        }
    }

    fn jsonl(&self, line: u64, text: &[u8]) -> Item {
        let value = match serde_json::from_slice::<Value>(text) {
            Ok(v) => v,
            Err(e) => {
                return Item::Problem(self.problem(line, "-", format!("is not valid JSON ({e})")));
            }
        };
        let Value::Object(raw) = value else {
            return Item::Problem(self.problem(line, "-", "must be a JSON object"));
        };
        self.check(line, raw)
    }

    /// The header's problems, if any: a file whose header is unusable has no records.
    fn header_problems(&self, headers: &[String]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for h in headers {
            if h != "type" && h != ERROR_FIELD && shape_of(h).is_none() {
                problems.push(self.problem(
                    1,
                    h,
                    "is not a field of a lead or a sale (fields take Dub's names, e.g. \
                     customerExternalId, invoiceId)",
                ));
            }
        }
        if !headers.iter().any(|h| h == "type") {
            problems.push(self.problem(
                1,
                "type",
                "the header row needs a type column (lead or sale)",
            ));
        }
        problems
    }

    /// One CSV row as a record, or its problem; `None` for a row with nothing to say.
    fn csv_row(&self, headers: &[String], row: &csv::ByteRecord) -> Option<Item> {
        let line = row.position().map_or(0, |p| p.line());
        let mut raw = Map::new();
        let mut problem = None;
        for (name, cell) in headers.iter().zip(row.iter()) {
            let Ok(cell) = std::str::from_utf8(cell) else {
                problem.get_or_insert_with(|| self.problem(line, name, "is not valid UTF-8"));
                continue;
            };
            // An empty cell is a field left out: CSV has no other way to say so.
            if cell.is_empty() {
                continue;
            }
            let value = match (name.as_str(), shape_of(name)) {
                (_, Some(Shape::Count)) => match cell.trim().parse::<i64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        problem.get_or_insert_with(|| {
                            self.problem(line, name, "must be a whole number")
                        });
                        Value::String(cell.to_owned())
                    }
                },
                (_, Some(Shape::Object)) => match serde_json::from_str::<Value>(cell) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        problem.get_or_insert_with(|| {
                            self.problem(
                                line,
                                name,
                                "must be a JSON object in a CSV cell, e.g. {\"plan\":\"pro\"}",
                            )
                        });
                        Value::String(cell.to_owned())
                    }
                },
                (ERROR_FIELD, _) => continue,
                _ => Value::String(cell.to_owned()),
            };
            raw.insert(name.clone(), value);
        }
        Some(match problem {
            Some(mut p) => {
                p.raw = Some(raw);
                Item::Problem(p)
            }
            None => self.check(line, raw),
        })
    }

    /// Checks one record read as a JSON object.
    fn check(&self, line: u64, raw: Map<String, Value>) -> Item {
        match self.event(line, &raw) {
            Ok((event, digest)) => Item::Record(Record {
                file: self.name.to_owned(),
                file_index: self.file_index,
                line,
                digest,
                key: String::new(),
                event,
                raw,
            }),
            Err(mut p) => {
                p.raw = Some(raw);
                Item::Problem(p)
            }
        }
    }

    /// The event of a record, and the hash of its canonical content.
    fn event(&self, line: u64, raw: &Map<String, Value>) -> Result<(Event, u128), Problem> {
        let fields = match raw.get("type") {
            Some(Value::String(t)) if t == "lead" => LEAD_FIELDS,
            Some(Value::String(t)) if t == "sale" => SALE_FIELDS,
            Some(_) => return Err(self.problem(line, "type", "must be \"lead\" or \"sale\"")),
            None => {
                return Err(self.problem(line, "type", "is required (\"lead\" or \"sale\")"));
            }
        };
        let kind = if fields == LEAD_FIELDS {
            "lead"
        } else {
            "sale"
        };
        let mut clean = Map::new();
        for (name, value) in raw {
            if name == "type" || name == ERROR_FIELD {
                continue;
            }
            let Some(&(_, shape, _)) = fields.iter().find(|(n, _, _)| n == name) else {
                return Err(self.problem(
                    line,
                    name,
                    format!("is not a field of a {kind} (fields take Dub's names)"),
                ));
            };
            // null is the field left out, as Dub reads it.
            if value.is_null() {
                continue;
            }
            let fits = match shape {
                Shape::Text => value.is_string(),
                Shape::Count => value.is_u64(),
                Shape::Object => value.is_object(),
            };
            if !fits {
                let rule = match shape {
                    Shape::Text => "must be a string",
                    Shape::Count => "must be a whole number, 0 or more",
                    Shape::Object => "must be a JSON object",
                };
                return Err(self.problem(line, name, rule));
            }
            clean.insert(name.clone(), value.clone());
        }
        for (name, _, required) in fields {
            if *required && !clean.contains_key(*name) {
                return Err(self.problem(line, name, "is required"));
            }
        }
        clean.insert("type".into(), Value::String(kind.into()));
        let digest = digest(&clean);
        let event: Event = serde_json::from_value(Value::Object(clean))
            .map_err(|e| self.problem(line, "-", e.to_string()))?;
        if let Err(e) = event.validate() {
            let field = e.field().unwrap_or("-");
            let rule = e.message().map_or_else(|| e.to_string(), str::to_owned);
            return Err(self.problem(line, field, rule));
        }
        if !self.rules.allow_unsafe && !event.is_deduplicated() {
            return Err(match &event {
                Event::Sale(_) => self.problem(
                    line,
                    "invoiceId",
                    "is required to send a sale safely: Dub records a sale without one again \
                     each time it is sent, so a retry or a resumed run could count it twice \
                     (--allow-unsafe sends it anyway)",
                ),
                _ => self.problem(
                    line,
                    "mode",
                    "a lead of this mode (deferred) is not deduplicated by Dub, so a retry or a \
                     resumed run could count it twice (--allow-unsafe sends it anyway)",
                ),
            });
        }
        Ok((event, digest))
    }
}

/// The hash of a record's canonical content: its fields as compact JSON with every object's
/// keys sorted, so that neither the order of its fields, nor spacing, nor the file's format
/// changes it.
fn digest(fields: &Map<String, Value>) -> u128 {
    let mut text = Vec::with_capacity(256);
    canonical(fields, &mut text);
    fnv1a_128(&text)
}

fn canonical(object: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut names: Vec<&String> = object.keys().collect();
    names.sort();
    out.push(b'{');
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, name);
        out.push(b':');
        canonical_value(&object[name], out);
    }
    out.push(b'}');
}

fn canonical_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(inner) => canonical(inner, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_value(item, out);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// FNV-1a, 128 bits: a hash whose value never changes between builds or Rust versions, as a
/// record's identity across runs needs (std's hasher promises neither), and wide enough that
/// two different records of a billion share one by chance less than once in 10^20 runs.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text` as the file `name` (in a directory of its own).
    fn read_as(name: &str, text: &[u8], allow_unsafe: bool) -> (Vec<Record>, Vec<Problem>) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dub-track-input-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let inputs = Inputs::open(
            &[path.to_string_lossy().into_owned()],
            Format::Auto,
            Rules { allow_unsafe },
        )
        .unwrap();
        let (mut records, mut problems) = (Vec::new(), Vec::new());
        for item in inputs.read() {
            match item.unwrap() {
                Item::Record(r) => records.push(r),
                Item::Problem(p) => problems.push(p),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        (records, problems)
    }

    fn check(text: &str, allow_unsafe: bool) -> (Vec<Record>, Vec<Problem>) {
        read_as("f.jsonl", text.as_bytes(), allow_unsafe)
    }

    fn only_problem(text: &str) -> Problem {
        let (records, problems) = check(text, false);
        assert!(records.is_empty(), "{records:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_good_sale_and_lead_pass() {
        let (records, problems) = check(
            "{\"type\":\"lead\",\"clickId\":\"c\",\"eventName\":\"Sign up\",\"customerExternalId\":\"u\"}\n\n\
             {\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":100,\"invoiceId\":\"i\",\"metadata\":null}\n",
            false,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].line, 3);
    }

    #[test]
    fn problems_name_line_field_and_rule() {
        let p =
            only_problem("{\"type\":\"sale\",\"customerExternalId\":\"u\",\"invoiceId\":\"i\"}");
        assert_eq!(
            (p.line, p.field.as_str(), p.rule.as_str()),
            (1, "amount", "is required")
        );
        let p = only_problem(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":-1,\"invoiceId\":\"i\"}",
        );
        assert_eq!(p.field, "amount");
        let p = only_problem(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceID\":\"i\"}",
        );
        assert_eq!(p.field, "invoiceID");
        let p = only_problem(
            "{\"type\":\"lead\",\"clickId\":\"c\",\"eventName\":\"e\",\"customerExternalId\":\"u\",\"customerEmail\":\"nope\"}",
        );
        assert_eq!(p.field, "customerEmail");
        let p = only_problem("{\"type\":\"refund\"}");
        assert_eq!(p.field, "type");
        let p = only_problem("not json");
        assert_eq!(p.field, "-");
    }

    #[test]
    fn unsafe_records_are_refused_unless_allowed() {
        let sale = "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1}";
        assert_eq!(only_problem(sale).field, "invoiceId");
        let lead = "{\"type\":\"lead\",\"clickId\":\"c\",\"eventName\":\"e\",\"customerExternalId\":\"u\",\"mode\":\"deferred\"}";
        assert_eq!(only_problem(lead).field, "mode");
        assert_eq!(check(&format!("{sale}\n{lead}"), true).0.len(), 2);
    }

    #[test]
    fn the_error_field_of_a_failed_file_is_ignored() {
        let (records, problems) = check(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\",\"_error\":{\"kind\":\"x\"}}",
            false,
        );
        assert_eq!(records.len(), 1, "{problems:?}");
    }

    #[test]
    fn csv_cells_become_fields() {
        let (records, problems) = read_as(
            "f.csv",
            b"type,customerExternalId,amount,invoiceId,metadata,clickId,eventName\n\
              sale,u,100,i1,\"{\"\"a\"\":1}\",,\n\
              lead,u,,,,c,Sign up\n\
              sale,u,ten,i2,,,\n",
            false,
        );
        assert_eq!(records.len(), 2, "{problems:?}");
        assert_eq!(records[0].line, 2);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].line, problems[0].field.as_str()),
            (4, "amount")
        );
    }

    #[test]
    fn a_byte_order_mark_and_crlf_are_accepted() {
        let (records, problems) = check(
            "\u{feff}{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\"}\r\n",
            false,
        );
        assert_eq!(records.len(), 1, "{problems:?}");
    }

    #[test]
    fn no_input_makes_it_panic() {
        for text in [
            "",
            "\n\n",
            "null",
            "[]",
            "{}",
            "\"x\"",
            "{\"type\":null}",
            "\u{0}",
            "{\"type\":\"sale\",\"amount\":1e400}",
        ] {
            let _ = check(text, false);
        }
        for text in [
            &b""[..],
            b"type\n",
            b"type,amount\nsale\n",
            b"\"\n",
            b"type\n\xff\n",
        ] {
            let _ = read_as("f.csv", text, true);
        }
    }

    #[test]
    fn a_line_too_long_is_a_problem_and_the_next_line_is_read() {
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_LINE));
        let sale =
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\"}";
        let (records, problems) = check(&format!("{long}\n{sale}\n"), false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 1);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].line, 2);
    }

    #[test]
    fn the_digest_ignores_field_order_spacing_and_format() {
        let (a, _) = check(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\",\"metadata\":{\"a\":1,\"b\":[{\"y\":1,\"x\":2}]}}",
            false,
        );
        let (b, _) = check(
            "{ \"metadata\": {\"b\":[{\"x\":2,\"y\":1}],\"a\":1}, \"invoiceId\":\"i\",\"amount\":1,\"customerExternalId\":\"u\",\"type\":\"sale\",\"currency\":null }",
            false,
        );
        let (c, _) = read_as(
            "f.csv",
            b"type,customerExternalId,amount,invoiceId,metadata\n\
              sale,u,1,i,\"{\"\"a\"\":1,\"\"b\"\":[{\"\"y\"\":1,\"\"x\"\":2}]}\"\n",
            false,
        );
        assert_eq!(a[0].digest, b[0].digest);
        assert_eq!(a[0].digest, c[0].digest);
        let (d, _) = check(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":2,\"invoiceId\":\"i\"}",
            false,
        );
        assert_ne!(a[0].digest, d[0].digest);
    }

    #[test]
    fn identical_records_are_numbered_and_other_lines_do_not_move_keys() {
        let x = "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1}";
        let y = "{\"type\":\"sale\",\"customerExternalId\":\"v\",\"amount\":1}";
        let keys = |text: &str| {
            let dir = std::env::temp_dir().join(format!("dub-track-keys-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("k{}.jsonl", fnv1a_128(text.as_bytes())));
            std::fs::write(&path, text).unwrap();
            let inputs = Inputs::open(
                &[path.to_string_lossy().into_owned()],
                Format::Auto,
                Rules { allow_unsafe: true },
            )
            .unwrap();
            let entries = inputs.scan(|_| {}).unwrap();
            let _ = std::fs::remove_file(&path);
            entries.iter().map(Entry::key).collect::<Vec<_>>()
        };
        let base = keys(&format!("{x}\n{y}\n{x}\n"));
        assert_eq!(base[0].digest, base[2].digest);
        assert_eq!((base[0].occurrence, base[2].occurrence), (0, 1));
        let edited = keys(&format!("\n{{bad\n{y}\n\n{x}\n{x}\n"));
        let mut a = base.clone();
        let mut b = edited.clone();
        a.sort_by_key(|k| (k.digest, k.occurrence));
        b.sort_by_key(|k| (k.digest, k.occurrence));
        assert_eq!(a, b);
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(fnv1a_128(b""), 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn the_field_tables_are_the_specs() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
            .unwrap();
        let spec: Value = serde_yaml_ng::from_str(&text).unwrap();
        for (schema, table) in [
            ("TrackLeadRequest", LEAD_FIELDS),
            ("TrackSaleRequest", SALE_FIELDS),
        ] {
            let s = &spec["components"]["schemas"][schema];
            let properties = s["properties"].as_object().unwrap();
            let required: Vec<&str> = s["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let mut from_spec: Vec<(&str, Shape, bool)> = properties
                .iter()
                .map(|(name, p)| {
                    let shape = match p["type"].as_str().unwrap() {
                        "string" => Shape::Text,
                        "integer" => Shape::Count,
                        "object" => Shape::Object,
                        other => panic!("{schema}.{name}: type {other}: teach input.rs about it"),
                    };
                    (name.as_str(), shape, required.contains(&name.as_str()))
                })
                .collect();
            let mut ours = table.to_vec();
            from_spec.sort_by_key(|f| f.0);
            ours.sort_by_key(|f| f.0);
            assert_eq!(
                ours, from_spec,
                "{schema}: the table in input.rs is not the spec's"
            );
        }
    }
}

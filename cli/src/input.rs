//! Reading and checking the records of `send`'s input files.
//!
//! Every record is read and checked before anything is sent, so that a file with a mistake
//! sends nothing instead of half of itself. A problem names the file, the line, the field and
//! the rule it breaks.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use dub::tracker::Event;
use serde_json::{Map, Value};

/// The field of a failed record that carries its error in a `--failed` file. Reading ignores
/// it, so that a failed file can be sent again as it is once its records are fixed.
pub const ERROR_FIELD: &str = "_error";

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

/// One record, checked and ready to send.
#[derive(Debug, Clone)]
pub struct Record {
    /// The file as the user named it, for messages.
    pub file: String,
    /// Its line in the file (1-based; for CSV, the line the row starts on).
    pub line: u64,
    /// Its identity across runs: the file's canonical path, the line and a hash of its text.
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

/// What reading the inputs found.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The records that can be sent, in file order.
    pub records: Vec<Record>,
    /// The records that cannot.
    pub problems: Vec<Problem>,
}

/// Options of the check.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Accept records Dub does not deduplicate.
    pub allow_unsafe: bool,
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

/// Reads and checks every record of `paths` (`-` is standard input).
pub fn read_all(paths: &[String], format: Format, rules: Rules) -> Result<Inputs, ReadError> {
    let mut inputs = Inputs::default();
    let mut stdin_used = false;
    for path in paths {
        let format = match format {
            Format::Auto => detect(path)?,
            f => f,
        };
        let (identity, bytes) = if path == "-" {
            if stdin_used {
                return Err(ReadError("standard input (-) is named twice".into()));
            }
            stdin_used = true;
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| ReadError(format!("standard input: {e}")))?;
            ("-".to_owned(), bytes)
        } else {
            let canonical =
                std::fs::canonicalize(path).map_err(|e| ReadError(format!("{path}: {e}")))?;
            let bytes = std::fs::read(&canonical).map_err(|e| ReadError(format!("{path}: {e}")))?;
            (canonical.to_string_lossy().into_owned(), bytes)
        };
        let file = Source {
            name: path,
            identity: &identity,
            rules,
        };
        match format {
            Format::Csv => file.csv(&bytes, &mut inputs),
            _ => file.jsonl(&bytes, &mut inputs),
        }
    }
    Ok(inputs)
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

struct Source<'a> {
    name: &'a str,
    identity: &'a str,
    rules: Rules,
}

impl Source<'_> {
    fn problem(&self, line: u64, field: &str, rule: impl Into<String>) -> Problem {
        Problem {
            file: self.name.to_owned(),
            line,
            field: field.to_owned(),
            rule: rule.into(),
            raw: None,
        }
    }

    fn jsonl(&self, bytes: &[u8], out: &mut Inputs) {
        // Spreadsheet tools and Windows editors start UTF-8 files with a byte-order mark.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        for (index, text) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = index as u64 + 1;
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value = match serde_json::from_slice::<Value>(text) {
                Ok(v) => v,
                Err(e) => {
                    out.problems
                        .push(self.problem(line, "-", format!("is not valid JSON ({e})")));
                    continue;
                }
            };
            let Value::Object(raw) = value else {
                out.problems
                    .push(self.problem(line, "-", "must be a JSON object"));
                continue;
            };
            self.check(line, hash(&[text]), raw, out);
        }
    }

    fn csv(&self, bytes: &[u8], out: &mut Inputs) {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(bytes);
        let headers = match reader.headers() {
            Ok(h) => h.iter().map(|h| h.trim().to_owned()).collect::<Vec<_>>(),
            Err(e) => {
                out.problems.push(self.problem(
                    1,
                    "-",
                    format!("the header row cannot be read ({e})"),
                ));
                return;
            }
        };
        let mut bad_header = false;
        for h in &headers {
            if h != "type" && h != ERROR_FIELD && shape_of(h).is_none() {
                out.problems.push(self.problem(
                    1,
                    h,
                    "is not a field of a lead or a sale (fields take Dub's names, e.g. \
                     customerExternalId, invoiceId)",
                ));
                bad_header = true;
            }
        }
        if !headers.iter().any(|h| h == "type") {
            out.problems.push(self.problem(
                1,
                "type",
                "the header row needs a type column (lead or sale)",
            ));
            bad_header = true;
        }
        if bad_header {
            return;
        }
        for row in reader.byte_records() {
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    out.problems
                        .push(self.problem(line, "-", format!("is not valid CSV ({e})")));
                    continue;
                }
            };
            let line = row.position().map_or(0, |p| p.line());
            let fields: Vec<&[u8]> = row.iter().collect();
            let mut raw = Map::new();
            let mut ok = true;
            for (name, cell) in headers.iter().zip(&fields) {
                let Ok(cell) = std::str::from_utf8(cell) else {
                    out.problems
                        .push(self.problem(line, name, "is not valid UTF-8"));
                    ok = false;
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
                            out.problems
                                .push(self.problem(line, name, "must be a whole number"));
                            ok = false;
                            continue;
                        }
                    },
                    (_, Some(Shape::Object)) => match serde_json::from_str::<Value>(cell) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => {
                            out.problems.push(self.problem(
                                line,
                                name,
                                "must be a JSON object in a CSV cell, e.g. {\"plan\":\"pro\"}",
                            ));
                            ok = false;
                            continue;
                        }
                    },
                    (ERROR_FIELD, _) => continue,
                    _ => Value::String(cell.to_owned()),
                };
                raw.insert(name.clone(), value);
            }
            if ok {
                self.check(line, hash(&fields), raw, out);
            }
        }
    }

    /// Checks one record read as a JSON object; `digest` is the hash of its text.
    fn check(&self, line: u64, digest: u64, raw: Map<String, Value>, out: &mut Inputs) {
        match self.event(line, &raw) {
            Ok(event) => out.records.push(Record {
                file: self.name.to_owned(),
                line,
                key: format!("{}:{line}:{digest:016x}", self.identity),
                event,
                raw,
            }),
            Err(mut p) => {
                p.raw = Some(raw);
                out.problems.push(p);
            }
        }
    }

    fn event(&self, line: u64, raw: &Map<String, Value>) -> Result<Event, Problem> {
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
        Ok(event)
    }
}

/// FNV-1a, 64 bits: a hash whose value never changes between builds or Rust versions, as a
/// record's key across runs needs (std's hasher promises neither).
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator between CSV cells, so that ("ab","c") and ("a","bc") differ.
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, allow_unsafe: bool) -> Inputs {
        let mut out = Inputs::default();
        let source = Source {
            name: "f.jsonl",
            identity: "/f.jsonl",
            rules: Rules { allow_unsafe },
        };
        source.jsonl(text.as_bytes(), &mut out);
        out
    }

    fn only_problem(text: &str) -> Problem {
        let out = check(text, false);
        assert!(out.records.is_empty(), "{:?}", out.records);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        out.problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_good_sale_and_lead_pass() {
        let out = check(
            "{\"type\":\"lead\",\"clickId\":\"c\",\"eventName\":\"Sign up\",\"customerExternalId\":\"u\"}\n\n\
             {\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":100,\"invoiceId\":\"i\",\"metadata\":null}\n",
            false,
        );
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[1].line, 3);
        assert!(out.records[1].key.starts_with("/f.jsonl:3:"));
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
        assert_eq!(check(&format!("{sale}\n{lead}"), true).records.len(), 2);
    }

    #[test]
    fn the_error_field_of_a_failed_file_is_ignored() {
        let out = check(
            "{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\",\"_error\":{\"kind\":\"x\"}}",
            false,
        );
        assert_eq!(out.records.len(), 1, "{:?}", out.problems);
    }

    #[test]
    fn csv_cells_become_fields() {
        let mut out = Inputs::default();
        let source = Source {
            name: "f.csv",
            identity: "/f.csv",
            rules: Rules {
                allow_unsafe: false,
            },
        };
        source.csv(
            b"type,customerExternalId,amount,invoiceId,metadata,clickId,eventName\n\
              sale,u,100,i1,\"{\"\"a\"\":1}\",,\n\
              lead,u,,,,c,Sign up\n\
              sale,u,ten,i2,,,\n",
            &mut out,
        );
        assert_eq!(out.records.len(), 2, "{:?}", out.problems);
        assert_eq!(out.records[0].line, 2);
        assert_eq!(out.problems.len(), 1);
        assert_eq!(
            (out.problems[0].line, out.problems[0].field.as_str()),
            (4, "amount")
        );
    }

    #[test]
    fn a_byte_order_mark_and_crlf_are_accepted() {
        let out = check(
            "\u{feff}{\"type\":\"sale\",\"customerExternalId\":\"u\",\"amount\":1,\"invoiceId\":\"i\"}\r\n",
            false,
        );
        assert_eq!(out.records.len(), 1, "{:?}", out.problems);
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
        let mut out = Inputs::default();
        let source = Source {
            name: "f.csv",
            identity: "/f.csv",
            rules: Rules { allow_unsafe: true },
        };
        for text in [
            &b""[..],
            b"type\n",
            b"type,amount\nsale\n",
            b"\"\n",
            b"type\n\xff\n",
        ] {
            source.csv(text, &mut out);
        }
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(hash(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
    }
}

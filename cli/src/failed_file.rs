//! The `--failed` file: the records that failed or are uncertain, written whole or not at all
//! (a temporary file beside it, renamed over it).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Whether the file can be written, found out before anything is sent rather than after the
/// whole run: creates and removes the temporary file it is written through.
pub fn check(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    let tmp = tmp_path(path);
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// Writes the records as JSON Lines. On failure nothing is left behind: no temporary file,
/// and the earlier file, if any, untouched.
pub fn write(path: &Path, records: &[Value]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let written = write_to(&tmp, records).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_to(tmp: &Path, records: &[Value]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(tmp)?);
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

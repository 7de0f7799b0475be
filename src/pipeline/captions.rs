//! Captions files of a video data set: CSV (with a header) or JSONL, one video per row with
//! its path (relative to the file's folder, or absolute), a caption and an optional short
//! caption. Column names accepted (first match wins):
//! - path: `path`, `video`, `videoid`, `file`
//! - caption: `caption`, `text`, `name`
//! - short caption: `short_caption`, `short_text`

use std::path::{Path, PathBuf};

/// One row.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionRow {
    /// As written in the file.
    pub path: String,
    pub caption: String,
    pub short_caption: Option<String>,
}

impl CaptionRow {
    /// The video's location: `path` relative to the captions file's folder.
    pub fn resolve(&self, captions_file: &Path) -> PathBuf {
        let p = Path::new(&self.path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            captions_file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// Errors of a captions file.
#[derive(Debug, thiserror::Error)]
#[error("captions file {path}: {msg}")]
pub struct CaptionsError {
    pub path: String,
    pub msg: String,
}

const PATH_COLS: [&str; 4] = ["path", "video", "videoid", "file"];
const CAPTION_COLS: [&str; 3] = ["caption", "text", "name"];
const SHORT_COLS: [&str; 2] = ["short_caption", "short_text"];

/// Reads a `.csv` or `.jsonl` captions file.
pub fn read_captions(path: &Path) -> Result<Vec<CaptionRow>, CaptionsError> {
    let e = |msg: String| CaptionsError { path: path.display().to_string(), msg };
    let text = std::fs::read_to_string(path).map_err(|x| e(x.to_string()))?;
    // spreadsheet exports often begin with a byte-order mark
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let rows = match path.extension().and_then(|x| x.to_str()).map(|x| x.to_ascii_lowercase()).as_deref() {
        Some("csv") => parse_csv(text).map_err(e)?,
        Some("jsonl") | Some("json") => parse_jsonl(text).map_err(e)?,
        _ => return Err(e("unknown format: use a .csv (with a header row) or a .jsonl file".into())),
    };
    if rows.is_empty() {
        return Err(e("no rows".into()));
    }
    Ok(rows)
}

fn pick<'a>(get: &dyn Fn(&str) -> Option<&'a str>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| get(n))
}

fn parse_jsonl(text: &str) -> Result<Vec<CaptionRow>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|x| format!("line {}: {x}", i + 1))?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str());
        let path = pick(&get, &PATH_COLS).ok_or_else(|| format!("line {}: no path field (one of {PATH_COLS:?})", i + 1))?;
        let caption = pick(&get, &CAPTION_COLS).ok_or_else(|| format!("line {}: no caption field (one of {CAPTION_COLS:?})", i + 1))?;
        let short = pick(&get, &SHORT_COLS).filter(|s| !s.trim().is_empty());
        rows.push(CaptionRow { path: path.into(), caption: caption.into(), short_caption: short.map(String::from) });
    }
    Ok(rows)
}

/// Splits CSV text into records (RFC 4180 quoting: "" inside quotes is a quote).
fn csv_records(text: &str) -> Result<Vec<Vec<String>>, String> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars, mut line) = (false, text.chars().peekable(), 1);
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                line += 1;
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\r') => {}
            (_, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c)
            }
        }
    }
    if quoted {
        return Err(format!("unterminated quote (line {line})"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records.retain(|r| !(r.len() == 1 && r[0].trim().is_empty()));
    Ok(records)
}

fn parse_csv(text: &str) -> Result<Vec<CaptionRow>, String> {
    let records = csv_records(text)?;
    let Some((header, body)) = records.split_first() else { return Ok(vec![]) };
    let col = |names: &[&str]| names.iter().find_map(|n| header.iter().position(|h| h.trim().eq_ignore_ascii_case(n)));
    let p = col(&PATH_COLS).ok_or_else(|| format!("header {header:?} has no path column (one of {PATH_COLS:?})"))?;
    let c = col(&CAPTION_COLS).ok_or_else(|| format!("header {header:?} has no caption column (one of {CAPTION_COLS:?})"))?;
    let s = col(&SHORT_COLS);
    body.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                return Err(format!("row {}: {} fields, the header has {}", i + 2, r.len(), header.len()));
            }
            let short = s.map(|s| r[s].clone()).filter(|x| !x.trim().is_empty());
            Ok(CaptionRow { path: r[p].clone(), caption: r[c].clone(), short_caption: short })
        })
        .collect()
}

/// Writes rows as JSONL (the format `read_captions` reads back).
pub fn write_jsonl(path: &Path, rows: &[CaptionRow]) -> t2v_kernels::Result<()> {
    let mut text = String::new();
    for r in rows {
        let mut v = serde_json::json!({ "path": r.path, "caption": r.caption });
        if let Some(s) = &r.short_caption {
            v["short_caption"] = s.clone().into();
        }
        text += &v.to_string();
        text.push('\n');
    }
    t2v_kernels::io::write_atomic(path, text.as_bytes())
}

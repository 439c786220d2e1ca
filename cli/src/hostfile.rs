//! A host's config file as a document that can be edited without
//! disturbing anything else in it, and the careful write of the result.
//!
//! - JSON (and JSON with comments) goes through `jsonc-parser`'s concrete
//!   syntax tree: every byte outside the entries we touch, comments and
//!   key order included, is written back as it was.
//! - TOML goes through `toml_edit`, which keeps comments, order and
//!   layout the same way.
//! - Entries are read out as `serde_json::Value`s, whatever the format.
//! - Parse errors give a line and column, never the text of the file
//!   (which may hold tokens).
//! - Writes are atomic (a temporary file in the same directory, fsync,
//!   rename, directory fsync) and keep the file's mode. Before each write
//!   the file as it was is kept as `<file>.mcpauth-backup`: one per file,
//!   replaced by the next, mode 0600 whatever the file's (a host's file
//!   may hold its own secrets), removed by `disconnect`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use serde_json::{Map, Value};
use toml_edit::{DocumentMut, Item, Table};

use crate::hosts::Format;

/// Suffix of the copy of a file as it was before mcpauthctl last wrote it.
pub const BACKUP_SUFFIX: &str = ".mcpauth-backup";
/// Beside a host file that `connect` created: see [`created_mark`].
pub const CREATED_SUFFIX: &str = ".mcpauth-created";

/// A parsed host file.
pub enum Document {
    Json(CstRootNode),
    Toml(DocumentMut),
}

impl Document {
    /// Parses `text`; the error is the reason with its line and column.
    pub fn parse(format: Format, text: &str) -> Result<Self, String> {
        match format {
            Format::Json | Format::Jsonc => {
                let jsonc = format == Format::Jsonc;
                // The syntax tree lets comments through whatever the
                // options say, so strict JSON is checked by serde_json
                // first (its errors give the place, never the text).
                if !jsonc && !text.trim().is_empty() {
                    serde_json::from_str::<serde::de::IgnoredAny>(text)
                        .map_err(|e| format!("{e}"))?;
                }
                let options = ParseOptions {
                    allow_comments: jsonc,
                    allow_trailing_commas: jsonc,
                    allow_loose_object_property_names: false,
                    allow_missing_commas: false,
                    allow_single_quoted_strings: false,
                    allow_hexadecimal_numbers: false,
                    allow_unary_plus_numbers: false,
                    allow_bare_decimal_point_numbers: false,
                    allow_non_finite_numbers: false,
                    allow_extended_string_escapes: false,
                };
                let root = CstRootNode::parse(text, &options).map_err(|e| {
                    format!(
                        "{} at line {}, column {}",
                        e.kind(),
                        e.line_display(),
                        e.column_display()
                    )
                })?;
                match root.value() {
                    None => {}
                    Some(value) if value.as_object().is_some() => {}
                    Some(_) => return Err("it is not a JSON object".into()),
                }
                Ok(Document::Json(root))
            }
            Format::Toml => text
                .parse::<DocumentMut>()
                .map(Document::Toml)
                .map_err(|e| {
                    let (line, column) = e
                        .span()
                        .map_or((0, 0), |span| line_column(text, span.start));
                    // `message()` alone: `Display` would quote the line.
                    format!("{} at line {line}, column {column}", e.message().trim())
                }),
        }
    }

    /// An empty document, for a file that does not exist yet.
    pub fn new(format: Format) -> Self {
        match format {
            Format::Toml => Document::Toml(DocumentMut::new()),
            Format::Json | Format::Jsonc => Document::Json(
                CstRootNode::parse("{}\n", &ParseOptions::default()).expect("'{}' parses"),
            ),
        }
    }

    /// The entries under `key`, in file order.
    pub fn entries(&self, key: &str) -> Result<Vec<(String, Value)>, String> {
        match self {
            Document::Json(root) => {
                let Some(servers) = json_servers(root, key)? else {
                    return Ok(Vec::new());
                };
                Ok(servers
                    .properties()
                    .into_iter()
                    .filter_map(|prop| {
                        let name = prop.decoded_name()?;
                        let value = prop.value()?.to_serde_value()?;
                        Some((name, value))
                    })
                    .collect())
            }
            Document::Toml(doc) => {
                let Some(item) = doc.get(key) else {
                    return Ok(Vec::new());
                };
                let table = item
                    .as_table_like()
                    .ok_or_else(|| format!("`{key}` is not a table"))?;
                Ok(table
                    .iter()
                    .map(|(name, item)| (name.to_string(), item_json(item)))
                    .collect())
            }
        }
    }

    /// The entry `name` under `key`.
    pub fn entry(&self, key: &str, name: &str) -> Result<Option<Value>, String> {
        Ok(self
            .entries(key)?
            .into_iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    /// Makes `entry` the whole entry `name` (new ones go last).
    pub fn put(&mut self, key: &str, name: &str, entry: &Value) -> Result<(), String> {
        match self {
            Document::Json(root) => {
                let servers = match json_servers(root, key)? {
                    Some(servers) => servers,
                    None => root
                        .object_value_or_set()
                        .append(key, CstInputValue::Object(Vec::new()))
                        .object_value()
                        .expect("just set"),
                };
                match servers.get(name) {
                    Some(prop) => prop.set_value(cst_value(entry)),
                    None => {
                        servers.append(name, cst_value(entry));
                    }
                }
                Ok(())
            }
            Document::Toml(doc) => {
                let servers = toml_servers(doc, key)?;
                let mut table = Table::new();
                if let Some(Item::Table(old)) = servers.get(name) {
                    // The comments above the old table stay above the new one.
                    *table.decor_mut() = old.decor().clone();
                }
                if let Value::Object(fields) = entry {
                    for (k, v) in fields {
                        table.insert(k, Item::Value(toml_value(v)));
                    }
                }
                servers.insert(name, Item::Table(table));
                Ok(())
            }
        }
    }

    /// Sets `fields` in the existing entry `name`, keeping its other keys.
    pub fn merge(
        &mut self,
        key: &str,
        name: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), String> {
        match self {
            Document::Json(root) => {
                let entry = json_servers(root, key)?
                    .and_then(|servers| servers.get(name))
                    .and_then(|prop| prop.object_value())
                    .ok_or_else(|| format!("`{key}.{name}` is not an object"))?;
                for (k, v) in fields {
                    match entry.get(k) {
                        Some(prop) => prop.set_value(cst_value(v)),
                        None => {
                            entry.append(k, cst_value(v));
                        }
                    }
                }
                Ok(())
            }
            Document::Toml(doc) => {
                let servers = toml_servers(doc, key)?;
                let entry = servers
                    .get_mut(name)
                    .and_then(Item::as_table_like_mut)
                    .ok_or_else(|| format!("`{key}.{name}` is not a table"))?;
                for (k, v) in fields {
                    entry.insert(k, Item::Value(toml_value(v)));
                }
                Ok(())
            }
        }
    }

    /// Removes the entry `name`; whether there was one.
    pub fn remove(&mut self, key: &str, name: &str) -> Result<bool, String> {
        match self {
            Document::Json(root) => match json_servers(root, key)?.and_then(|s| s.get(name)) {
                Some(prop) => {
                    prop.remove();
                    Ok(true)
                }
                None => Ok(false),
            },
            Document::Toml(doc) => match doc.get_mut(key).and_then(Item::as_table_like_mut) {
                Some(servers) => Ok(servers.remove(name).is_some()),
                None => Ok(false),
            },
        }
    }

    /// Whether nothing is in the document but (maybe) an empty `key`: a
    /// file mcpauthctl created holds nothing of anyone else's then.
    pub fn is_empty_but(&self, key: &str) -> bool {
        let empty = |v: &Value| v.as_object().is_some_and(|o| o.is_empty());
        match self {
            Document::Json(root) => {
                let text = root.to_string();
                if text.contains("//") || text.contains("/*") {
                    return false;
                }
                match root.value().and_then(|v| v.to_serde_value()) {
                    None => true,
                    Some(Value::Object(o)) => o.iter().all(|(k, v)| k == key && empty(v)),
                    Some(_) => false,
                }
            }
            Document::Toml(doc) => {
                !doc.to_string().contains('#')
                    && doc.iter().all(|(k, item)| {
                        k == key && item.as_table_like().is_some_and(|t| t.is_empty())
                    })
            }
        }
    }

    pub fn render(&self) -> String {
        match self {
            Document::Json(root) => root.to_string(),
            Document::Toml(doc) => doc.to_string(),
        }
    }
}

/// The servers object of a JSON document, if there is one.
fn json_servers(root: &CstRootNode, key: &str) -> Result<Option<CstObject>, String> {
    let Some(object) = root.object_value() else {
        return Ok(None);
    };
    let Some(prop) = object.get(key) else {
        return Ok(None);
    };
    prop.object_value()
        .map(Some)
        .ok_or_else(|| format!("`{key}` is not an object"))
}

/// The servers table of a TOML document, created (implicit, so no empty
/// `[key]` header appears) when missing.
fn toml_servers<'a>(
    doc: &'a mut DocumentMut,
    key: &str,
) -> Result<&'a mut dyn toml_edit::TableLike, String> {
    if doc.get(key).is_none() {
        let mut table = Table::new();
        table.set_implicit(true);
        doc.insert(key, Item::Table(table));
    }
    doc.get_mut(key)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("`{key}` is not a table"))
}

fn cst_value(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(cst_value).collect()),
        Value::Object(fields) => CstInputValue::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), cst_value(v)))
                .collect(),
        ),
    }
}

fn toml_value(value: &Value) -> toml_edit::Value {
    match value {
        // TOML has no null; the entries we write never hold one.
        Value::Null => toml_edit::Value::from(""),
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or_default().into(),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => toml_edit::Value::Array(items.iter().map(toml_value).collect()),
        Value::Object(fields) => toml_edit::Value::InlineTable(
            fields
                .iter()
                .map(|(k, v)| (k.as_str(), toml_value(v)))
                .collect(),
        ),
    }
}

fn item_json(item: &Item) -> Value {
    match item {
        Item::None => Value::Null,
        Item::Value(v) => value_json(v),
        Item::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), item_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .map(|t| {
                    Value::Object(
                        t.iter()
                            .map(|(k, v)| (k.to_string(), item_json(v)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

fn value_json(value: &toml_edit::Value) -> Value {
    use toml_edit::Value as V;
    match value {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::from(*i.value()),
        V::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(Value::Null, Value::Number),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::String(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(value_json).collect()),
        V::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), value_json(v)))
                .collect(),
        ),
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

/// The file a path names, following symlinks (a dotfiles repository often
/// links these), so the link survives the write.
pub fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where the copy of `path` as it was before is kept.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(BACKUP_SUFFIX);
    path.with_file_name(name)
}

/// The mark beside a host file that mcpauthctl created (it did not exist
/// before `connect`), so `disconnect` can remove the file when nothing
/// else is left in it.
pub fn created_mark(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(CREATED_SUFFIX);
    path.with_file_name(name)
}

/// Marks `path` as created by mcpauthctl (an empty file, mode 0600).
pub fn mark_created(path: &Path) -> Result<(), String> {
    let mark = created_mark(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&mark)
        .map(drop)
        .map_err(|e| format!("cannot write {}: {e}", mark.display()))
}

/// Removes `path` (a file mcpauthctl created, now empty but for an empty
/// servers key), its backup and its mark, if it still holds `expected`.
/// Whether it was removed.
pub fn remove_created(path: &Path, expected: &[u8]) -> Result<bool, String> {
    let fail = |p: &Path, e: std::io::Error| format!("cannot remove {}: {e}", p.display());
    match std::fs::read(path) {
        Ok(now) if now == expected => {}
        _ => return Ok(false),
    }
    std::fs::remove_file(path).map_err(|e| fail(path, e))?;
    remove_backup(path)?;
    let mark = created_mark(path);
    match std::fs::remove_file(&mark) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&mark, e)),
    }
    Ok(true)
}

/// Keeps `original` (the file's bytes before this write) beside it, mode
/// 0600, replacing the backup of an earlier write (atomically, so a
/// backup is never half written and never a second file). Returns where.
pub fn keep_backup(path: &Path, original: &[u8]) -> Result<PathBuf, String> {
    let backup = backup_path(path);
    let fail = |e: std::io::Error| format!("cannot write the backup {}: {e}", backup.display());
    let dir = path.parent().unwrap_or(Path::new("/"));
    // A new file of mode 0600 (tempfile's), renamed over the old backup.
    let mut temp = tempfile::Builder::new()
        .prefix(".mcpauth-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    temp.write_all(original).map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(&backup).map_err(|e| fail(e.error))?;
    Ok(backup)
}

/// Removes the backup of `path`, if there is one. Returns it if it was
/// there.
pub fn remove_backup(path: &Path) -> Result<Option<PathBuf>, String> {
    let backup = backup_path(path);
    match std::fs::remove_file(&backup) {
        Ok(()) => Ok(Some(backup)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot remove the backup {}: {e}",
            backup.display()
        )),
    }
}

/// Writes `text` to `path` atomically with `mode`. `expected` is what the
/// file held when it was read (`None`: it did not exist); if someone else
/// changed it since (a running host rewrites its own file), nothing is
/// written and `Ok(false)` says to read it again.
pub fn write_atomically(
    path: &Path,
    text: &str,
    mode: u32,
    expected: Option<&[u8]>,
) -> Result<bool, String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut temp = tempfile::Builder::new()
        .prefix(".mcpauth-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail)?;
    temp.write_all(text.as_bytes()).map_err(fail)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    let now = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e)),
    };
    if now.as_deref() != expected {
        return Ok(false);
    }
    temp.persist(path).map_err(|e| fail(e.error))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(true)
}

/// Creates the directory of a new host file (private, like the files).
pub fn create_parent(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_edit_leaves_every_other_byte_alone() {
        let text = r#"{
  // the person's own note
  "theme": "dark",
  "mcpServers": {
    "files": { "command": "npx", "args": ["-y", "fs"] }, // trailing note
  },
  "zz": [1, 2],
}
"#;
        let mut doc = Document::parse(Format::Jsonc, text).unwrap();
        doc.put(
            "mcpServers",
            "lin",
            &json!({"command": "/b/mcpauthctl", "args": ["proxy", "lin"]}),
        )
        .unwrap();
        let out = doc.render();
        assert!(out.starts_with("{\n  // the person's own note\n  \"theme\": \"dark\",\n  \"mcpServers\": {\n    \"files\": { \"command\": \"npx\", \"args\": [\"-y\", \"fs\"] }, // trailing note\n"), "{out}");
        assert!(out.ends_with("  \"zz\": [1, 2],\n}\n"), "{out}");
        let again = Document::parse(Format::Jsonc, &out).unwrap();
        assert_eq!(
            again.entry("mcpServers", "lin").unwrap().unwrap(),
            json!({"command": "/b/mcpauthctl", "args": ["proxy", "lin"]})
        );
        // Removing it gives back the original text.
        let mut doc = again;
        assert!(doc.remove("mcpServers", "lin").unwrap());
        let back = doc.render();
        let parsed = |t: &str| {
            Document::parse(Format::Jsonc, t)
                .unwrap()
                .entries("mcpServers")
                .unwrap()
        };
        assert_eq!(parsed(&back), parsed(text));
        assert!(back.contains("// the person's own note") && back.contains("// trailing note"));
    }

    #[test]
    fn strict_json_refuses_comments_and_errors_never_quote_the_file() {
        let err = Document::parse(Format::Json, "{\n \"a\": \"sk-secret\" // x\n}")
            .err()
            .unwrap();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("sk-secret"), "{err}");
        let err = Document::parse(Format::Toml, "a = \"sk-secret\"\nb = = 1\n")
            .err()
            .unwrap();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            !err.contains("sk-secret") && !err.contains("b = = 1"),
            "{err}"
        );
        assert!(Document::parse(Format::Json, "[1]").is_err());
        // An empty file is an empty object.
        assert!(
            Document::parse(Format::Json, "")
                .unwrap()
                .entries("mcpServers")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_new_json_file_gets_the_servers_object() {
        let mut doc = Document::new(Format::Json);
        doc.put(
            "servers",
            "a",
            &json!({"type": "stdio", "command": "c", "args": ["x"]}),
        )
        .unwrap();
        let value: Value = serde_json::from_str(&doc.render()).unwrap();
        assert_eq!(
            value,
            json!({"servers": {"a": {"type": "stdio", "command": "c", "args": ["x"]}}})
        );
    }

    #[test]
    fn a_toml_edit_keeps_comments_and_other_tables() {
        let text = "# top comment\nmodel = \"o3\"\n\n[mcp_servers.files]\ncommand = \"npx\" # why\nargs = [\"fs\"]\n\n[tui]\nx = 1\n";
        let mut doc = Document::parse(Format::Toml, text).unwrap();
        doc.put(
            "mcp_servers",
            "lin",
            &json!({"url": "https://a/mcp", "http_headers_helper": "h"}),
        )
        .unwrap();
        let out = doc.render();
        // The new table joins its siblings; everything else is as it was.
        assert_eq!(
            out,
            text.replace(
                "\n[tui]",
                "\n[mcp_servers.lin]\nurl = \"https://a/mcp\"\nhttp_headers_helper = \"h\"\n\n[tui]"
            ),
            "{out}"
        );
        let mut fields = Map::new();
        fields.insert("http_headers_helper".into(), json!("h2"));
        doc.merge("mcp_servers", "lin", &fields).unwrap();
        assert_eq!(
            doc.entry("mcp_servers", "lin").unwrap().unwrap(),
            json!({"url": "https://a/mcp", "http_headers_helper": "h2"})
        );
        assert!(doc.remove("mcp_servers", "lin").unwrap());
        assert_eq!(doc.render(), text);
        // A new file gets no empty [mcp_servers] header.
        let mut doc = Document::new(Format::Toml);
        doc.put("mcp_servers", "a", &json!({"url": "u"})).unwrap();
        assert_eq!(doc.render(), "[mcp_servers.a]\nurl = \"u\"\n");
    }

    #[test]
    fn one_private_backup_per_file_replaced_by_the_next_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        let backup = backup_path(&path);
        // One left by an older mcpauthctl, with the host file's mode.
        std::fs::write(&backup, "older").unwrap();
        std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(keep_backup(&path, b"first").unwrap(), backup);
        assert_eq!(keep_backup(&path, b"second").unwrap(), backup);
        assert_eq!(std::fs::read(&backup).unwrap(), b"second");
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(remove_backup(&path).unwrap(), Some(backup));
        assert_eq!(remove_backup(&path).unwrap(), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_write_is_refused_when_the_file_changed_under_us() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, "a").unwrap();
        assert!(!write_atomically(&path, "new", 0o600, Some(b"old")).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a");
        assert!(write_atomically(&path, "new", 0o604, Some(b"a")).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o604);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! `mcpauthctl import` and `adopt`: finding the logins other tools hold.
//!
//! This side only finds things: which servers each tool knows (its own
//! server list), and where its login for each is (file and entry). Only
//! names, URLs and paths go to the daemon; the daemon reads the token
//! files itself (`daemon/src/import.rs`), so no secret crosses the socket
//! and nothing here ever holds one. Where each tool keeps what, checked
//! against the tools themselves:
//!
//! | tool | servers | logins |
//! |---|---|---|
//! | Codex 0.169 | `$CODEX_HOME/config.toml` `[mcp_servers.NAME] url` | `$CODEX_HOME/.credentials.json` (with `mcp_oauth_credentials_store = "file"`): `{"NAME\|HASH": {server_name, server_url, …}}` |
//! | Claude Code 2.1 | `~/.claude.json` `mcpServers.NAME.url` | `~/.claude/.credentials.json` `mcpOAuth["NAME\|HASH"]` (`serverName`, `serverUrl`, …) |
//! | mcp-remote 0.1–0.15 | the host entries that run `mcp-remote URL`, and `--url` | `~/.mcp-auth/mcp-remote-*/HASH_tokens.json` and `HASH_client_info.json`, HASH = md5 of `URL[\|resource][\|headers]` |
//! | Hermes | `$HERMES_HOME/config.yaml` `mcp_servers.NAME.url` | `$HERMES_HOME/mcp-tokens/SAFE.json` and `SAFE.client.json` |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mcpauth_client::pb;
use md5::{Digest, Md5};
use serde_json::Value;

use crate::failure::Failure;
use crate::hostfile::Document;
use crate::hosts::{self, Host, HostEnv};

/// The tools `import` knows, in the order they are tried.
pub const TOOLS: &[&str] = &["codex", "claude-code", "mcp-remote", "hermes"];

/// What was found: the items for the daemon, and notes for the person.
#[derive(Default)]
pub struct Found {
    pub items: Vec<pb::ImportItem>,
    pub notes: Vec<String>,
    /// Tools whose files exist on this machine.
    pub present: Vec<&'static str>,
}

fn usage(message: String) -> Failure {
    Failure::usage(message)
}

/// The tools named, or every tool when none is.
pub fn tools(named: &[String]) -> Result<Vec<&'static str>, Failure> {
    if named.is_empty() {
        return Ok(TOOLS.to_vec());
    }
    let mut chosen = Vec::new();
    for name in named {
        let tool = TOOLS.iter().find(|t| **t == name.as_str()).ok_or_else(|| {
            usage(format!(
                "unknown tool `{name}`; known tools: {}",
                TOOLS.join(", ")
            ))
        })?;
        if !chosen.contains(tool) {
            chosen.push(*tool);
        }
    }
    Ok(chosen)
}

fn item(
    tool: &str,
    name: &str,
    url: &str,
    store: Option<&Path>,
    key: Option<&str>,
    client_info: Option<&Path>,
) -> pb::ImportItem {
    let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
    pb::ImportItem {
        tool: tool.into(),
        name: name.into(),
        url: url.into(),
        store_path: path(store),
        key: key.unwrap_or_default().into(),
        client_info_path: path(client_info),
        keyring: false,
    }
}

/// A JSON file; `None` when it does not exist. Errors give a position,
/// never text (these files hold tokens).
fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is not JSON (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The servers (name, URL) in a host's file, remote entries only.
fn remote_servers(host: &dyn hosts::Host, env: &HostEnv) -> Result<Vec<(String, String)>, String> {
    let path = host.path(env);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let doc = Document::parse(host.format(), &text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(doc
        .entries(host.servers_key())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .into_iter()
        .filter(|(_, entry)| host.command_of(entry).is_none())
        .filter_map(|(name, entry)| host.url_of(&entry).map(|url| (name, url)))
        .collect())
}

/// A store keyed `NAME|HASH` (Codex, Claude Code): the key of the entry
/// for `name` at `url`, matched on the names and URLs the entries record.
fn keyed_entry<'a>(
    entries: &'a serde_json::Map<String, Value>,
    name_field: &str,
    url_field: &str,
    name: &str,
    url: &str,
) -> Option<&'a str> {
    let url_of = |e: &Value| e.get(url_field).and_then(Value::as_str).map(str::to_string);
    let matching = |k: &&String, e: &&Value| {
        url_of(e).is_some_and(|u| hosts::same_url(&u, url))
            && (e.get(name_field).and_then(Value::as_str) == Some(name)
                || k.split('|').next() == Some(name))
    };
    entries
        .iter()
        .find(|(k, e)| matching(k, e))
        .or_else(|| {
            entries
                .iter()
                .find(|(_, e)| url_of(e).is_some_and(|u| hosts::same_url(&u, url)))
        })
        .map(|(k, _)| k.as_str())
}

/// Servers from a host's list plus those only its store knows, each with
/// the key of its login.
fn keyed_tool(
    found: &mut Found,
    tool: &'static str,
    servers: Vec<(String, String)>,
    store: &Path,
    entries: Option<&serde_json::Map<String, Value>>,
    fields: (&str, &str),
) {
    let mut seen: Vec<String> = Vec::new();
    for (name, url) in &servers {
        let key = entries.and_then(|e| keyed_entry(e, fields.0, fields.1, name, url));
        if let Some(k) = key {
            seen.push(k.to_string());
        }
        found
            .items
            .push(item(tool, name, url, key.map(|_| store), key, None));
    }
    // Logins for servers no longer in the tool's list.
    for (key, entry) in entries.into_iter().flatten() {
        if seen.contains(key) {
            continue;
        }
        let Some(url) = entry.get(fields.1).and_then(Value::as_str) else {
            continue;
        };
        let name = entry
            .get(fields.0)
            .and_then(Value::as_str)
            .or_else(|| key.split('|').next())
            .unwrap_or("server");
        found
            .items
            .push(item(tool, name, url, Some(store), Some(key), None));
    }
}

fn codex(env: &HostEnv, found: &mut Found) -> Result<(), String> {
    let dir = env.codex_dir();
    let config = hosts::Codex.path(env);
    let store = dir.join(".credentials.json");
    if !config.exists() && !store.exists() {
        return Ok(());
    }
    found.present.push("codex");
    let servers = remote_servers(&hosts::Codex, env)?;
    let creds = read_json(&store)?;
    let entries = creds.as_ref().and_then(Value::as_object);
    keyed_tool(
        found,
        "codex",
        servers,
        &store,
        entries,
        ("server_name", "server_url"),
    );
    let file_store = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| {
            d.get("mcp_oauth_credentials_store")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    // Unless told to use the file, Codex keeps its logins in the OS
    // keyring (falling back to the file where there is none): the daemon
    // looks there for every server the file has no login for.
    if file_store.as_deref() != Some("file") {
        for i in found.items.iter_mut() {
            if i.tool == "codex" && i.store_path.is_empty() {
                i.keyring = true;
            }
        }
    }
    Ok(())
}

fn claude_code(env: &HostEnv, found: &mut Found) -> Result<(), String> {
    let config = hosts::ClaudeCode.path(env);
    let store = env.claude_dir().join(".credentials.json");
    if !config.exists() && !store.exists() {
        return Ok(());
    }
    found.present.push("claude-code");
    let servers = remote_servers(&hosts::ClaudeCode, env)?;
    let creds = read_json(&store)?;
    let entries = creds
        .as_ref()
        .and_then(|c| c.get("mcpOAuth"))
        .and_then(Value::as_object);
    keyed_tool(
        found,
        "claude-code",
        servers,
        &store,
        entries,
        ("serverName", "serverUrl"),
    );
    if env.macos {
        found.notes.push(
            "claude-code: on macOS Claude Code keeps its logins in the Keychain, which mcpauthctl does not read; log in through the broker (`mcpauthctl login NAME`)".into(),
        );
    }
    Ok(())
}

/// An `mcp-remote` invocation: the URL and what else goes into its hash.
#[derive(Debug, PartialEq, Eq)]
pub struct McpRemote {
    pub url: String,
    pub resource: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl McpRemote {
    /// Parses the arguments of `… mcp-remote URL [PORT] [--resource R]
    /// [--header "K: V"]…`.
    pub fn from_argv(argv: &[String]) -> Option<Self> {
        let url = hosts::mcp_remote_url(argv)?;
        let at = argv.iter().position(|a| a == &url)?;
        let mut remote = McpRemote {
            url,
            resource: None,
            headers: BTreeMap::new(),
        };
        let mut rest = argv[at + 1..].iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--resource" => remote.resource = rest.next().cloned(),
                "--header" => {
                    // As mcp-remote: `^([A-Za-z0-9_-]+):\s*(.*)$`.
                    if let Some((k, v)) = rest.next().and_then(|h| h.split_once(':'))
                        && !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        remote.headers.insert(k.into(), v.trim_start().into());
                    }
                }
                _ => {}
            }
        }
        Some(remote)
    }

    /// mcp-remote's `getServerUrlHash`: md5 of the URL, the resource and
    /// the headers (JSON, keys sorted), joined by `|`.
    pub fn hash(&self) -> String {
        let mut parts = vec![self.url.clone()];
        if let Some(r) = self.resource.as_ref().filter(|r| !r.is_empty()) {
            parts.push(r.clone());
        }
        if !self.headers.is_empty() {
            parts.push(serde_json::to_string(&self.headers).unwrap_or_default());
        }
        let digest = Md5::digest(parts.join("|").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The newest `HASH_tokens.json` under the mcp-remote directories.
fn mcp_remote_tokens(dirs: &[PathBuf], hash: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(format!("{hash}_tokens.json")))
        .filter_map(|p| {
            let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((mtime, p))
        })
        .max_by_key(|(mtime, _)| *mtime)
        .map(|(_, p)| p)
}

fn mcp_remote(env: &HostEnv, urls: &[String], found: &mut Found) -> Result<(), String> {
    let root = env.mcp_remote_dir();
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("mcp-remote-"))
                })
                .collect()
        })
        .unwrap_or_default();
    // The invocations: every host entry that runs mcp-remote, then --url.
    let mut remotes: Vec<(String, McpRemote)> = Vec::new();
    for host in hosts::HOSTS {
        let path = host.path(env);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(entries) =
            Document::parse(host.format(), &text).and_then(|d| d.entries(host.servers_key()))
        else {
            continue;
        };
        for (name, entry) in entries {
            if let Some(remote) = host
                .command_of(&entry)
                .and_then(|a| McpRemote::from_argv(&a))
                && !remotes.iter().any(|(_, r)| r == &remote)
            {
                remotes.push((name, remote));
            }
        }
    }
    for url in urls {
        let remote = McpRemote {
            url: url.clone(),
            resource: None,
            headers: BTreeMap::new(),
        };
        if !remotes.iter().any(|(_, r)| r == &remote) {
            let name = url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "server".into());
            remotes.push((name, remote));
        }
    }
    if dirs.is_empty() && remotes.is_empty() {
        return Ok(());
    }
    found.present.push("mcp-remote");
    let mut matched = Vec::new();
    for (name, remote) in &remotes {
        let tokens = mcp_remote_tokens(&dirs, &remote.hash());
        let client_info = tokens.as_ref().map(|t| {
            let file = t.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            t.with_file_name(file.replace("_tokens.json", "_client_info.json"))
        });
        if let Some(t) = &tokens {
            matched.push(t.clone());
        }
        found.items.push(item(
            "mcp-remote",
            name,
            &remote.url,
            tokens.as_deref(),
            None,
            client_info.as_deref(),
        ));
    }
    let unmatched = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_tokens.json"))
                && !matched.contains(p)
        })
        .count();
    if unmatched > 0 {
        found.notes.push(format!(
            "mcp-remote: {unmatched} {} in {} for servers no host config names; pass each server's URL with --url URL to import {}",
            if unmatched == 1 { "login" } else { "logins" },
            root.display(),
            if unmatched == 1 { "it" } else { "them" },
        ));
    }
    Ok(())
}

/// Hermes' file name for a server: `re.sub(r"[^\w\-]", "_", name)
/// .strip("_")[:128]`.
pub fn hermes_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').chars().take(128).collect()
}

fn hermes(env: &HostEnv, found: &mut Found) -> Result<(), String> {
    let dir = env.hermes_dir();
    let config = dir.join("config.yaml");
    let tokens = dir.join("mcp-tokens");
    if !config.exists() && !tokens.exists() {
        return Ok(());
    }
    found.present.push("hermes");
    let servers: Vec<(String, String)> = match std::fs::read_to_string(&config) {
        Ok(text) => {
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                    .unwrap_or_default();
                format!("cannot read {}: not YAML{at}", config.display())
            })?;
            doc.get("mcp_servers")
                .and_then(|s| s.as_mapping())
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    Some((k.as_str()?.to_string(), v.get("url")?.as_str()?.to_string()))
                })
                .collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", config.display())),
    };
    // Hermes' file names are not one-to-one (`a b` and `a_b` share
    // `a_b.json`): a file two servers would use belongs to neither.
    let mut claimants: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, _) in &servers {
        claimants.entry(hermes_safe(name)).or_default().push(name);
    }
    for (safe, names) in claimants.iter().filter(|(_, n)| n.len() > 1) {
        let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        found.notes.push(format!(
            "hermes: {} would be the login of {} alike (Hermes gives them one file name), so it is imported for none of them; add them with `mcpauthctl add NAME URL` and log in",
            tokens.join(format!("{safe}.json")).display(),
            names.join(" and ")
        ));
    }
    for (name, url) in &servers {
        let safe = hermes_safe(name);
        if claimants[&safe].len() > 1 {
            continue;
        }
        let file = tokens.join(format!("{safe}.json"));
        let client = tokens.join(format!("{safe}.client.json"));
        found.items.push(item(
            "hermes",
            name,
            url,
            file.exists().then_some(file.as_path()),
            None,
            client.exists().then_some(client.as_path()),
        ));
    }
    Ok(())
}

/// Finds what `tools` know. A tool whose own files cannot be read is a
/// note, not a failure of the whole run.
pub fn find(tools: &[&str], env: &HostEnv, urls: &[String]) -> Found {
    let mut found = Found::default();
    for tool in tools {
        let result = match *tool {
            "codex" => codex(env, &mut found),
            "claude-code" => claude_code(env, &mut found),
            "mcp-remote" => mcp_remote(env, urls, &mut found),
            "hermes" => hermes(env, &mut found),
            _ => Ok(()),
        };
        if let Err(e) = result {
            found
                .notes
                .push(format!("{tool}: {e}; nothing was imported from it"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn mcp_remote_hashes_as_mcp_remote_does() {
        // Computed with mcp-remote 0.1.49's getServerUrlHash.
        let plain = McpRemote::from_argv(&argv(&[
            "npx",
            "-y",
            "mcp-remote",
            "https://example.com/mcp",
        ]))
        .unwrap();
        assert_eq!(plain.hash(), "8724945d3c4865fe12d6890203193588");
        let with_headers = McpRemote::from_argv(&argv(&[
            "npx",
            "mcp-remote@0.1.49",
            "https://example.com/mcp",
            "--header",
            "X-B:2",
            "--header",
            "Authorization:Bearer ${TOKEN}",
        ]))
        .unwrap();
        assert_eq!(with_headers.hash(), "206c26c21490fbf8b8a67df9d298c3c4");
    }

    #[test]
    fn hermes_names_its_files_as_hermes_does() {
        assert_eq!(hermes_safe("my server/x"), "my_server_x");
        assert_eq!(hermes_safe("__a-b__"), "a-b");
        // Not one-to-one: why a shared file is nobody's.
        assert_eq!(hermes_safe("a b"), hermes_safe("a_b"));
    }

    #[test]
    fn unknown_tools_are_usage_errors() {
        assert_eq!(tools(&[]).ok(), Some(TOOLS.to_vec()));
        assert_eq!(
            tools(&["hermes".into(), "hermes".into()]).ok(),
            Some(vec!["hermes"])
        );
        assert_eq!(
            tools(&["vim".into()]).err().unwrap().code(),
            mcpauth_client::exit::USAGE
        );
    }
}

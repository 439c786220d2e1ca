//! `mcpauthctl connect`, `disconnect` and `hosts`: wiring each MCP host's
//! own config file to the broker.
//!
//! `connect HOST [NAME…]` writes one entry per configured server into the
//! host's user-level file (`hosts.rs` knows where and in what shape), run
//! by the absolute path of this very `mcpauthctl`. When the socket in use
//! is not the one a process with only `HOME` and `PATH` would find (hosts
//! start helpers with a filtered environment), the command carries
//! `--socket PATH`.
//!
//! Rules for every file: nothing else in it changes; each write keeps the
//! file as it was as `<file>.mcpauth-backup` (one per file, mode 0600,
//! named in the output), which `disconnect` removes with the last of the
//! broker's entries; writes are atomic and keep the mode; a second run
//! changes nothing; an entry of the same name that
//! mcpauthctl did not write is left alone unless `--replace`; `disconnect`
//! removes only entries `connect` wrote; a file that does not parse is
//! not touched. Every run says, per server, what it did (or, with
//! `--dry-run`, would do).

use std::path::{Path, PathBuf};

use mcpauth_client::Client;
use serde_json::Value;

use crate::failure::Failure;
use crate::hostfile::{self, Document};
use crate::hosts::{self, Host, HostEnv, Via};
use crate::output::{Bypass, HostSurvey, Wired};

/// How a host entry runs the broker.
pub struct Wiring {
    /// This `mcpauthctl`, canonical.
    pub exe: PathBuf,
    /// `--socket PATH` for the entry, when needed.
    pub socket: Option<PathBuf>,
    /// `--no-autostart` for the entry: a daemon that a helper started
    /// with the host's filtered environment would use another state
    /// directory or config than this one, and hold the socket with them.
    pub no_autostart: bool,
}

impl Wiring {
    /// The running `mcpauthctl`, talking to `socket`.
    pub fn current(socket: &Path) -> Result<Self, Failure> {
        let exe = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| {
                Failure::failed(format!(
                    "cannot tell where this mcpauthctl is installed: {e}"
                ))
            })?;
        let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
        use mcpauth_proto::paths;
        Ok(Self {
            exe,
            socket: socket_flag(&socket, &paths::home_only_socket_path()),
            no_autostart: paths::state_dir() != paths::home_only_state_dir()
                || paths::config_path() != paths::home_only_config_path(),
        })
    }

    /// `mcpauthctl [--socket PATH] headers|proxy -- NAME` as argv: after
    /// `--`, a name that starts with `-` is never read as an option.
    pub fn command(&self, via: Via, name: &str) -> Vec<String> {
        let mut argv = vec![self.exe.display().to_string()];
        if let Some(socket) = &self.socket {
            argv.push("--socket".into());
            argv.push(socket.display().to_string());
        }
        if self.no_autostart {
            argv.push("--no-autostart".into());
        }
        argv.push(via.subcommand().into());
        argv.push("--".into());
        argv.push(name.into());
        argv
    }
}

/// The socket to name in host entries: none when a helper would find the
/// one in use by itself.
pub fn socket_flag(in_use: &Path, home_only: &Path) -> Option<PathBuf> {
    (in_use != home_only).then(|| in_use.to_path_buf())
}

/// A configured server: name and URL.
pub struct Server {
    pub name: String,
    pub url: String,
}

/// The host called `id`, or a usage error naming the known ones.
pub fn host(id: &str) -> Result<&'static dyn Host, Failure> {
    hosts::find(id).ok_or_else(|| {
        Failure::usage(format!(
            "unknown host `{id}`; known hosts: {}",
            hosts::ids()
        ))
    })
}

/// Every configured server.
pub async fn configured(client: &mut Client) -> Result<Vec<Server>, Failure> {
    Ok(client
        .list_servers()
        .await?
        .into_iter()
        .map(|s| Server {
            name: s.name,
            url: s.url,
        })
        .collect())
}

/// The configured servers called `names` (all of them when empty).
pub async fn select(client: &mut Client, names: &[String]) -> Result<Vec<Server>, Failure> {
    let servers = configured(client).await?;
    if names.is_empty() {
        if servers.is_empty() {
            return Err(Failure::failed(
                "no servers configured; add one with `mcpauthctl add NAME URL` first",
            ));
        }
        return Ok(servers);
    }
    let mut chosen = Vec::new();
    for name in names {
        match servers.iter().find(|s| &s.name == name) {
            Some(s) if !chosen.iter().any(|c: &Server| &c.name == name) => chosen.push(Server {
                name: s.name.clone(),
                url: s.url.clone(),
            }),
            Some(_) => {}
            None => {
                return Err(Failure::usage(format!(
                    "no configured server `{name}`; add it with `mcpauthctl add {name} URL` (see `mcpauthctl list`)"
                )));
            }
        }
    }
    Ok(chosen)
}

/// What a run printed, and whether it failed after all.
pub struct Report {
    pub lines: Vec<String>,
    pub failure: Option<Failure>,
}

/// What happened to one entry.
enum Outcome {
    Added,
    Updated,
    Replaced,
    Unchanged,
    Removed,
    NotConnected,
    Skipped(&'static str),
}

impl Outcome {
    fn changes(&self) -> bool {
        matches!(
            self,
            Outcome::Added | Outcome::Updated | Outcome::Replaced | Outcome::Removed
        )
    }

    fn line(&self, name: &str, url: Option<&str>) -> String {
        let url = url.map(|u| format!(" ({u})")).unwrap_or_default();
        match self {
            Outcome::Added => format!("  added      {name}{url}"),
            Outcome::Updated => format!("  updated    {name}{url}"),
            Outcome::Replaced => {
                format!("  updated    {name}{url}, replacing an entry mcpauthctl did not write")
            }
            Outcome::Unchanged => format!("  unchanged  {name}"),
            Outcome::Removed => format!("  removed    {name}"),
            Outcome::NotConnected => format!("  unchanged  {name} (not connected)"),
            Outcome::Skipped(why) => format!("  skipped    {name} ({why})"),
        }
    }
}

const FOREIGN: &str =
    "an entry of that name exists that mcpauthctl did not write; --replace overwrites it";
const FOREIGN_KEPT: &str = "that entry was not written by mcpauthctl; it is left as it is";

/// The file's bytes, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failure(format!("cannot read {}: {e}", path.display()))),
    }
}

fn failure(message: String) -> Failure {
    Failure::failed(message)
}

fn parse(host: &dyn Host, path: &Path, bytes: &[u8]) -> Result<Document, Failure> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        failure(format!(
            "{} is not UTF-8 text; nothing was changed",
            path.display()
        ))
    })?;
    Document::parse(host.format(), text).map_err(|e| {
        failure(format!(
            "cannot read {}: {e}; fix the file (or move it away), nothing was changed",
            path.display()
        ))
    })
}

/// The file's permission bits (0600 for a file to be created).
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777)
}

/// Whether every key we write already has the value we would write.
fn matches(want: &Value, have: &Value) -> bool {
    want.as_object()
        .is_some_and(|w| w.iter().all(|(k, v)| have.get(k) == Some(v)))
}

/// What `edit_file` did.
struct Edited {
    lines: Vec<String>,
    /// Entries left alone because mcpauthctl did not write them.
    skipped: usize,
    /// How many entries the edit looked at.
    entries: usize,
}

/// What a write does with the backup beside the host's file.
#[derive(Clone, Copy, PartialEq)]
enum Backup {
    /// Keep the file as it was before this write (connect, adopt).
    Keep,
    /// Remove it once no entry of the broker's is left (disconnect): it
    /// holds the host's own settings, secrets maybe, and has done its job.
    RemoveWithTheLastEntry,
}

/// What an edit returns: per entry, its name, the URL to show, and what
/// became of it.
type Outcomes = Vec<(String, Option<String>, Outcome)>;

/// Applies `edit` to the host's file and writes the result: the edit
/// returns one outcome per entry. A missing file is created only when
/// `create`. A file rewritten by someone else between our read and our
/// write is read again (three tries).
fn edit_file(
    host: &dyn Host,
    env: &HostEnv,
    dry_run: bool,
    create: bool,
    backup: Backup,
    mut edit: impl FnMut(&mut Document, &[(String, Value)]) -> Result<Outcomes, String>,
) -> Result<Edited, Failure> {
    let shown = host.path(env);
    let path = hostfile::real_path(&shown);
    for _ in 0..3 {
        let original = read_optional(&path)?;
        if original.is_none() && !create {
            return Ok(Edited {
                lines: vec![format!(
                    "{}: {} does not exist; nothing to disconnect",
                    host.title(),
                    shown.display()
                )],
                skipped: 0,
                entries: 0,
            });
        }
        let (doc, mut done, changed) = apply(host, &shown, original.as_deref(), &mut edit)?;
        if !changed {
            return Ok(done);
        }
        if dry_run {
            done.lines.push("dry run: nothing was written".into());
            return Ok(done);
        }
        if let Some(lines) = write(host, &shown, &path, original.as_deref(), &doc, backup)? {
            done.lines.extend(lines);
            return Ok(done);
        }
        // Rewritten meanwhile: read it again.
    }
    Err(failure(format!(
        "{} kept changing while mcpauthctl was writing it (is {} running and rewriting it?); nothing was written, try again",
        shown.display(),
        host.title()
    )))
}

/// Runs `edit` on the file's text (`original`, or a new document): the
/// edited document, the lines saying what it did, and whether it changed
/// anything.
fn apply(
    host: &dyn Host,
    shown: &Path,
    original: Option<&[u8]>,
    edit: &mut impl FnMut(&mut Document, &[(String, Value)]) -> Result<Outcomes, String>,
) -> Result<(Document, Edited, bool), Failure> {
    let mut lines = vec![format!(
        "{}: {}{}",
        host.title(),
        shown.display(),
        if original.is_none() {
            " (new file)"
        } else {
            ""
        }
    )];
    let mut doc = match original {
        Some(bytes) => parse(host, shown, bytes)?,
        None => Document::new(host.format()),
    };
    let before = doc.entries(host.servers_key()).map_err(|e| {
        failure(format!(
            "cannot read {}: {e}; fix the file, nothing was changed",
            shown.display()
        ))
    })?;
    let outcomes = edit(&mut doc, &before).map_err(|e| {
        failure(format!(
            "cannot edit {}: {e}; nothing was changed",
            shown.display()
        ))
    })?;
    let skipped = outcomes
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Skipped(_)))
        .count();
    let changed = outcomes.iter().any(|(_, _, o)| o.changes());
    lines.extend(
        outcomes
            .iter()
            .map(|(name, url, o)| o.line(name, url.as_deref())),
    );
    let edited = Edited {
        lines,
        skipped,
        entries: outcomes.len(),
    };
    Ok((doc, edited, changed))
}

/// Writes the edited document in place of `original` (the careful
/// write of `hostfile`), or removes a file `connect` created once
/// nothing is left in it. The lines say what became of the file and its
/// backup; `None` when someone rewrote the file since it was read.
fn write(
    host: &dyn Host,
    shown: &Path,
    path: &Path,
    original: Option<&[u8]>,
    doc: &Document,
    backup: Backup,
) -> Result<Option<Vec<String>>, Failure> {
    // A file `connect` created, with nothing left in it: removed, with
    // its backup, rather than left behind empty.
    let created = hostfile::created_mark(path).exists();
    if backup == Backup::RemoveWithTheLastEntry
        && created
        && doc.is_empty_but(host.servers_key())
        && let Some(bytes) = original
    {
        if !hostfile::remove_created(path, bytes).map_err(failure)? {
            return Ok(None);
        }
        return Ok(Some(vec![format!(
            "  removed {}: mcpauthctl created it, and nothing else is in it",
            shown.display()
        )]));
    }
    let mode = mode_of(path);
    let kept = match (original, backup) {
        (Some(bytes), Backup::Keep) => Some(hostfile::keep_backup(path, bytes).map_err(failure)?),
        (Some(_), Backup::RemoveWithTheLastEntry) => None,
        (None, _) => {
            hostfile::create_parent(path).map_err(failure)?;
            None
        }
    };
    if !hostfile::write_atomically(path, &doc.render(), mode, original).map_err(failure)? {
        return Ok(None);
    }
    if original.is_none() {
        hostfile::mark_created(path).map_err(failure)?;
    }
    let mut lines = Vec::new();
    if let Some(kept) = kept {
        lines.push(if created {
            // There was no original: the file is mcpauthctl's own.
            format!(
                "  mcpauthctl created this file; before this write it is kept in {} (mode 0600; `mcpauthctl disconnect {}` removes both when nothing else is in it)",
                kept.display(),
                host.id()
            )
        } else {
            format!(
                "  the file as it was is kept in {} (mode 0600; `mcpauthctl disconnect {}` removes it)",
                kept.display(),
                host.id()
            )
        });
    }
    let ours_left = doc
        .entries(host.servers_key())
        .map_err(failure)?
        .iter()
        .any(|(name, entry)| hosts::is_ours(host, name, entry));
    if backup == Backup::RemoveWithTheLastEntry
        && !ours_left
        && let Some(removed) = hostfile::remove_backup(path).map_err(failure)?
    {
        lines.push(format!("  removed the backup {}", removed.display()));
    }
    Ok(Some(lines))
}

/// `mcpauthctl connect`.
pub fn connect(
    host: &dyn Host,
    env: &HostEnv,
    servers: &[Server],
    wiring: &Wiring,
    dry_run: bool,
    replace: bool,
) -> Result<Report, Failure> {
    let key = host.servers_key();
    let mut mcp_remote_urls = Vec::new();
    let edited = edit_file(host, env, dry_run, true, Backup::Keep, |doc, before| {
        mcp_remote_urls = before
            .iter()
            .filter_map(|(_, entry)| host.command_of(entry))
            .filter_map(|argv| hosts::mcp_remote_url(&argv))
            .collect();
        let mut outcomes = Vec::new();
        for server in servers {
            let want = host.entry(&server.url, &wiring.command(host.via(), &server.name));
            let outcome = match doc.entry(key, &server.name)? {
                None => {
                    doc.put(key, &server.name, &want)?;
                    Outcome::Added
                }
                Some(have) if hosts::is_ours(host, &server.name, &have) => {
                    if matches(&want, &have) {
                        Outcome::Unchanged
                    } else {
                        let fields = want.as_object().cloned().unwrap_or_default();
                        doc.merge(key, &server.name, &fields)?;
                        Outcome::Updated
                    }
                }
                Some(_) if replace => {
                    doc.put(key, &server.name, &want)?;
                    Outcome::Replaced
                }
                Some(_) => Outcome::Skipped(FOREIGN),
            };
            outcomes.push((server.name.clone(), Some(server.url.clone()), outcome));
        }
        Ok(outcomes)
    })?;
    let (mut lines, skipped) = (edited.lines, edited.skipped);
    // How mcpauthd will be running when a host needs it.
    let manager = mcpauth_client::autostart::user_manager_runs;
    if wiring.no_autostart {
        lines.push(format!(
            "note: mcpauthd's state or config is not where a host's filtered environment would find it (XDG_STATE_HOME, XDG_CONFIG_HOME or MCP_BROKER_*), so these entries never start mcpauthd: keep it running ({})",
            if manager() {
                "`mcpauthctl service install` does"
            } else {
                "`mcpauthctl start` after each boot; no user service manager runs here"
            }
        ));
    } else if !dry_run && !manager() {
        lines.push(
            "note: these entries start mcpauthd on demand when the host needs a token (no user service manager runs here, so there is no service to install)".into(),
        );
    }
    lines.extend(login_notes(host, env, servers, &mcp_remote_urls));
    let failure = (skipped > 0).then(|| Failure::failed(format!(
            "{skipped} {} in {} left as {} (not written by mcpauthctl); rerun with --replace to overwrite",
            if skipped == 1 { "entry" } else { "entries" },
            host.path(env).display(),
            if skipped == 1 { "it was" } else { "they were" },
        )));
    Ok(Report { lines, failure })
}

/// `mcpauthctl adopt`: hands the host's own entries for `servers` over to
/// the broker. A remote entry for a server's URL gets the broker's entry
/// fields (its other keys stay); with `mcp_remote`, an entry that runs
/// `mcp-remote URL` for a server's URL runs `mcpauthctl proxy NAME`
/// instead (its other keys, `env` and the like, stay). Entries for other
/// URLs are not touched.
pub fn hand_over(
    host: &dyn Host,
    env: &HostEnv,
    servers: &[Server],
    wiring: &Wiring,
    dry_run: bool,
    remote_entries: bool,
    mcp_remote: bool,
) -> Result<Report, Failure> {
    let key = host.servers_key();
    let edited = edit_file(host, env, dry_run, false, Backup::Keep, |doc, before| {
        let mut outcomes = Vec::new();
        for (entry_name, entry) in before {
            // The server of that URL; of two entries with one URL (two
            // accounts), only the one of the entry's own name: which
            // account the host's entry is for is not ours to guess.
            let server_for = |url: &str| {
                let same: Vec<&Server> = servers
                    .iter()
                    .filter(|s| hosts::same_url(&s.url, url))
                    .collect();
                match same.as_slice() {
                    [one] => Some(*one),
                    several => several.iter().copied().find(|s| s.name == *entry_name),
                }
            };
            let argv = host.command_of(entry);
            let fields = match &argv {
                None if remote_entries => {
                    let Some(server) = host.url_of(entry).and_then(|u| server_for(&u)) else {
                        continue;
                    };
                    host.entry(&server.url, &wiring.command(host.via(), &server.name))
                        .as_object()
                        .cloned()
                        .map(|f| (server, f))
                }
                Some(argv) if mcp_remote => {
                    let Some(server) = hosts::mcp_remote_url(argv).and_then(|u| server_for(&u))
                    else {
                        continue;
                    };
                    let proxy = wiring.command(hosts::Via::Proxy, &server.name);
                    let mut f = serde_json::Map::new();
                    if entry.get("command").is_some_and(Value::is_array) {
                        f.insert("command".into(), Value::from(proxy));
                    } else {
                        f.insert("command".into(), Value::from(proxy[0].clone()));
                        f.insert("args".into(), Value::from(proxy[1..].to_vec()));
                    }
                    Some((server, f))
                }
                _ => continue,
            };
            let Some((server, fields)) = fields else {
                continue;
            };
            let unchanged = fields.iter().all(|(k, v)| entry.get(k) == Some(v));
            if !unchanged {
                doc.merge(key, entry_name, &fields)?;
            }
            outcomes.push((
                entry_name.clone(),
                Some(format!("{} via `{}`", server.url, server.name)),
                if unchanged {
                    Outcome::Unchanged
                } else {
                    Outcome::Updated
                },
            ));
        }
        Ok(outcomes)
    })?;
    let mut lines = edited.lines;
    if edited.entries == 0 {
        if !remote_entries {
            // Sweeping every host for mcp-remote: say nothing of the rest.
            lines.clear();
        } else {
            lines.push("  no entry here reaches an imported server by itself".into());
        }
    }
    Ok(Report {
        lines,
        failure: None,
    })
}

/// `mcpauthctl disconnect`: removes the entries `connect` wrote (all of
/// them when `names` is empty).
pub fn disconnect(
    host: &dyn Host,
    env: &HostEnv,
    names: &[String],
    dry_run: bool,
) -> Result<Report, Failure> {
    let key = host.servers_key();
    let edited = edit_file(
        host,
        env,
        dry_run,
        false,
        Backup::RemoveWithTheLastEntry,
        |doc, before| {
            let wanted: Vec<String> = if names.is_empty() {
                before
                    .iter()
                    .filter(|(name, entry)| hosts::is_ours(host, name, entry))
                    .map(|(name, _)| name.clone())
                    .collect()
            } else {
                names.to_vec()
            };
            let mut outcomes = Vec::new();
            for name in wanted {
                let outcome = match doc.entry(key, &name)? {
                    None => Outcome::NotConnected,
                    Some(entry) if hosts::is_ours(host, &name, &entry) => {
                        doc.remove(key, &name)?;
                        Outcome::Removed
                    }
                    Some(_) => Outcome::Skipped(FOREIGN_KEPT),
                };
                if !outcomes.iter().any(|(n, _, _)| n == &name) {
                    outcomes.push((name, None, outcome));
                }
            }
            Ok(outcomes)
        },
    )?;
    let (mut lines, skipped) = (edited.lines, edited.skipped);
    if edited.entries == 0 && lines.len() == 1 && host.path(env).exists() {
        lines.push("  nothing to disconnect: no entry here goes through mcpauthctl".into());
    }
    let failure = (skipped > 0).then(|| {
        Failure::failed(format!(
            "{skipped} {} in {} not written by mcpauthctl, so not removed",
            if skipped == 1 {
                "entry is"
            } else {
                "entries are"
            },
            host.path(env).display(),
        ))
    });
    Ok(Report { lines, failure })
}

/// Where the host keeps its own login for a server being connected: the
/// broker does not use it, and `import` can bring it over.
fn login_notes(
    host: &dyn Host,
    env: &HostEnv,
    servers: &[Server],
    mcp_remote_urls: &[String],
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(own) = host.own_logins(env) {
        for server in servers {
            if own.names.contains(&server.name) {
                notes.push(format!(
                    "note: {} holds its own login for {} in {}; run `mcpauthctl import` to bring it into the broker (or `mcpauthctl login {}`)",
                    host.title(),
                    server.name,
                    own.file.display(),
                    server.name
                ));
            }
        }
    }
    let mcp_auth = env.mcp_remote_dir();
    let has_tokens = std::fs::read_dir(&mcp_auth).is_ok_and(|mut d| d.next().is_some());
    if has_tokens {
        for server in servers {
            if mcp_remote_urls
                .iter()
                .any(|u| hosts::same_url(u, &server.url))
            {
                notes.push(format!(
                    "note: mcp-remote holds its own login for {} in {}; run `mcpauthctl import` to bring it into the broker (or `mcpauthctl login {}`)",
                    server.url,
                    mcp_auth.display(),
                    server.name
                ));
            }
        }
    }
    notes
}

/// The hosts whose file has an entry `connect` wrote for the server
/// `name` (under that name).
pub fn hosts_with(env: &HostEnv, name: &str) -> Vec<&'static dyn Host> {
    hosts::HOSTS
        .iter()
        .copied()
        .filter(|host| host.path(env).exists())
        .filter(|host| {
            survey_one(*host, env, &[])
                .wired
                .iter()
                .any(|w| w.entry == name && w.server == name)
        })
        .collect()
}

/// `mcpauthctl remove NAME`: the host entries `connect` wrote for it are
/// disconnected too (they could only fail now), or, with `keep`, named.
pub fn after_remove(env: &HostEnv, name: &str, keep: bool) -> Result<Vec<String>, Failure> {
    let mut lines = Vec::new();
    for host in hosts_with(env, name) {
        if keep {
            lines.push(format!(
                "kept {name}'s entry in {} ({}): it fails until you add {name} again, or run `mcpauthctl disconnect {} {name}`",
                host.path(env).display(),
                host.title(),
                host.id()
            ));
        } else {
            let report = disconnect(host, env, &[name.to_string()], false)?;
            lines.push(format!(
                "removed {name}'s entry from {} ({}), which `connect` wrote (--keep-host-entries keeps such entries)",
                host.path(env).display(),
                host.title()
            ));
            // What else the disconnect did (the backup, the file).
            lines.extend(
                report
                    .lines
                    .into_iter()
                    .filter(|l| l.starts_with("  removed ")),
            );
        }
    }
    Ok(lines)
}

/// The hosts found on this machine: the file exists, or the host's
/// directory does.
pub fn survey(env: &HostEnv, servers: &[Server]) -> Vec<HostSurvey> {
    hosts::HOSTS
        .iter()
        .filter(|host| host.path(env).exists() || host.dir(env).is_dir())
        .map(|host| survey_one(*host, env, servers))
        .collect()
}

fn survey_one(host: &dyn Host, env: &HostEnv, servers: &[Server]) -> HostSurvey {
    let path = host.path(env);
    let mut survey = HostSurvey {
        host: host.id(),
        title: host.title(),
        path: path.display().to_string(),
        exists: path.exists(),
        error: None,
        wired: Vec::new(),
        not_wired: Vec::new(),
        bypassing: Vec::new(),
        other_entries: 0,
    };
    let entries = match std::fs::read(&path) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| Document::parse(host.format(), text))
            .and_then(|doc| doc.entries(host.servers_key())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    };
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            survey.error = Some(e);
            return survey;
        }
    };
    let configured = |url: &str| {
        servers
            .iter()
            .find(|s| hosts::same_url(&s.url, url))
            .map(|s| s.name.clone())
    };
    for (name, entry) in entries {
        let argv = host.command_of(&entry);
        if let Some((_, server)) = argv.as_deref().and_then(hosts::broker_target) {
            survey.wired.push(Wired {
                entry: name,
                configured: servers.iter().any(|s| s.name == server),
                server,
            });
        } else if let Some(url) = argv.as_deref().and_then(hosts::mcp_remote_url) {
            survey.bypassing.push(Bypass {
                entry: name,
                via: "mcp-remote",
                server: configured(&url),
                url,
            });
        } else if let Some(url) = host.url_of(&entry) {
            survey.bypassing.push(Bypass {
                entry: name,
                via: "http",
                server: configured(&url),
                url,
            });
        } else {
            survey.other_entries += 1;
        }
    }
    survey.not_wired = servers
        .iter()
        .filter(|s| !survey.wired.iter().any(|w| w.server == s.name))
        .map(|s| s.name.clone())
        .collect();
    survey
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_named_only_when_a_filtered_environment_would_miss_it() {
        let home_only = Path::new("/run/user/1000/mcpauth/mcpauthd.sock");
        assert_eq!(socket_flag(home_only, home_only), None);
        assert_eq!(
            socket_flag(Path::new("/tmp/x/mcpauthd.sock"), home_only),
            Some(PathBuf::from("/tmp/x/mcpauthd.sock"))
        );
        let mut wiring = Wiring {
            exe: "/opt/bin/mcpauthctl".into(),
            socket: Some("/tmp/x/mcpauthd.sock".into()),
            no_autostart: false,
        };
        assert_eq!(
            wiring.command(Via::HeadersHelper, "lin"),
            [
                "/opt/bin/mcpauthctl",
                "--socket",
                "/tmp/x/mcpauthd.sock",
                "headers",
                "--",
                "lin"
            ]
        );
        wiring.no_autostart = true;
        let argv = wiring.command(Via::Proxy, "lin");
        assert_eq!(argv[3], "--no-autostart");
        assert_eq!(
            hosts::broker_target(&argv),
            Some((Via::Proxy, "lin".into()))
        );
    }
}

//! Everything `mcpauthctl` shows: the writing of stdout, the human
//! renderings (`text`) and the stable `--json` shapes (`json`), and the
//! small formatters they share (times, tables, state names).
//!
//! Commands decide what to show; the words and shapes are here. A line
//! on stdout goes through [`out!`], which ends the program quietly when
//! stdout is closed.

mod json;
mod text;

pub use json::*;
pub use text::*;

use mcpauth_client::{exit, pb};

/// Prints a line on stdout. A closed stdout (`mcpauthctl list | head -1`)
/// ends the program quietly. (SIGPIPE itself stays ignored, as Rust sets
/// it: the default action would also kill the CLI when the daemon closes
/// its end of the socket.)
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}
pub(crate) use out;

pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    write_stdout_bytes(format!("{args}\n").as_bytes());
}

/// Writes `bytes` to stdout as they are, like [`out!`].
pub fn write_stdout_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("mcpauthctl: cannot write output: {e}");
        std::process::exit(i32::from(exit::FAILURE));
    }
}

/// A `--json` answer: pretty-printed.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON serialises")
    );
}

/// One JSON value on one line (an event of `watch --json`, `logout --json`).
pub fn print_json_line<T: serde::Serialize + ?Sized>(value: &T) {
    out!("{}", serde_json::to_string(value).expect("JSON serialises"));
}

/// A time of day (`HH:MM`), with the date unless it is today.
pub fn clock(at_ms: i64, now_ms: i64) -> String {
    let at = local_time(at_ms);
    if at.get(..10) == local_time(now_ms).get(..10) {
        at[11..16].to_string()
    } else {
        at[..16].to_string()
    }
}

/// `unix_ms` as local time, `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(unix_ms: i64) -> String {
    let secs = (unix_ms / 1000) as nix::libc::time_t;
    // SAFETY: localtime_r fills the `tm` we own from the time we pass.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { nix::libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        return format!("@{}", unix_ms / 1000);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The state's name as `--json` spells it (`login_required`, ...).
pub fn state_name(state: i32) -> &'static str {
    match pb::AuthState::try_from(state) {
        Ok(pb::AuthState::LoginRequired) => "login_required",
        Ok(pb::AuthState::LoginPending) => "login_pending",
        Ok(pb::AuthState::Authorized) => "authorized",
        Ok(pb::AuthState::RefreshFailing) => "refresh_failing",
        Ok(pb::AuthState::StepUpRequired) => "step_up_required",
        Ok(pb::AuthState::OnDemand) => "on_demand",
        Ok(pb::AuthState::Locked) => "locked",
        _ => "unknown",
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// "in 5m", "in 6s", "3h ago", "just now" (under a second).
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let delta = (at_ms - now_ms) / 1000;
    let span = delta.unsigned_abs();
    let amount = match span {
        0 => return "just now".into(),
        1..=59 => format!("{span}s"),
        60..=3599 => format!("{}m", span / 60),
        3600..=86_399 => format!("{}h", span / 3600),
        _ => format!("{}d", span / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(1_000_000 + 300_000, 1_000_000), "in 5m");
        assert_eq!(relative(1_000_000 - 3 * 3_600_000, 1_000_000), "3h ago");
        assert_eq!(relative(1_000_000, 1_000_400), "just now");
        assert_eq!(relative(1_000_000 + 6_000, 1_000_000), "in 6s");
        assert_eq!(relative(1_000_000, 1_001_000), "1s ago");
        assert_eq!(relative(1_000_000 + 2 * 86_400_000, 1_000_000), "in 2d");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "URL"],
            &[
                vec!["a".into(), "https://x".into()],
                vec!["long-name".into(), "u".into()],
            ],
        );
        assert_eq!(t, "NAME       URL\na          https://x\nlong-name  u");
    }
}

//! Opening the authorization URL for a person.
//!
//! `$BROWSER` wins when set: a `:`-separated list of commands, each split
//! into words, with `%s` replaced by the URL (or the URL appended), run
//! directly, never through a shell. Otherwise the platform opener
//! (`open` on macOS, `xdg-open` elsewhere). Only http and https URLs are
//! ever opened.

use std::process::{Command, Stdio};

/// Whether this looks like a session with no local browser: no `$BROWSER`
/// telling us otherwise, and (outside macOS) no display to show one on.
/// `xdg-open` "succeeds" on such machines without showing anything, so
/// its exit status cannot tell.
pub fn is_headless() -> bool {
    let var = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if var("BROWSER") {
        return false;
    }
    if cfg!(target_os = "macos") {
        // A Mac has a browser unless this is an SSH session.
        return var("SSH_CONNECTION") || var("SSH_TTY");
    }
    !(var("DISPLAY") || var("WAYLAND_DISPLAY"))
}

/// The command lines that would open `url`, in order of preference.
pub fn candidates(url: &str, browser_var: Option<&str>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    if let Some(list) = browser_var.filter(|v| !v.trim().is_empty()) {
        for entry in list.split(':').filter(|e| !e.trim().is_empty()) {
            let mut words: Vec<String> = entry.split_whitespace().map(str::to_string).collect();
            if words.iter().any(|w| w.contains("%s")) {
                for w in &mut words {
                    *w = w.replace("%s", url);
                }
            } else {
                words.push(url.to_string());
            }
            out.push(words);
        }
        return out;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    out.push(vec![opener.to_string(), url.to_string()]);
    out
}

/// Opens `url`; returns the program that took it.
pub fn open(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("refusing to open a {} URL", parsed.scheme()));
    }
    let browser = std::env::var("BROWSER").ok();
    let mut errors = Vec::new();
    for words in candidates(url, browser.as_deref()) {
        let (program, args) = words.split_first().expect("at least the program");
        match Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(_) => return Ok(program.clone()),
            Err(e) => errors.push(format!("{program}: {e}")),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_variable_forms() {
        let u = "https://as.example/authorize?a=1&b=2";
        assert_eq!(
            candidates(u, Some("firefox")),
            [vec!["firefox".to_string(), u.into()]]
        );
        assert_eq!(
            candidates(u, Some("my-browser --new-tab %s --x")),
            [vec![
                "my-browser".to_string(),
                "--new-tab".into(),
                u.into(),
                "--x".into()
            ]]
        );
        assert_eq!(candidates(u, Some("a:b")).len(), 2);
        // Shell syntax is just words: nothing is interpreted.
        assert_eq!(candidates(u, Some("echo $(rm -rf x)"))[0][1], "$(rm");
        assert_eq!(candidates(u, None)[0][1], u);
    }

    #[test]
    fn only_http_urls_are_opened() {
        assert!(open("file:///etc/passwd").unwrap_err().contains("refusing"));
        assert!(
            open("javascript:alert(1)")
                .unwrap_err()
                .contains("refusing")
        );
    }
}

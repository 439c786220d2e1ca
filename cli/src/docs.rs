//! Shell completions and the man page, generated from the clap definitions
//! so they never drift from the commands. Neither needs the daemon.

use clap::{Arg, Command};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The shells `mcpauthctl completions` writes a script for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// The completion script for `shell`.
pub fn completions(mut cmd: Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::from(shell),
        &mut cmd,
        name,
        &mut script,
    );
    script
}

/// One man page for the whole program: clap_mangen's title, name,
/// synopsis, description and global options, then every command with its
/// arguments (clap_mangen would point at a page per command, which is not
/// installed), then the exit status from `exit_codes` ("  N  meaning"
/// lines after a heading line).
pub fn man_page(mut cmd: Command, exit_codes: &str) -> std::io::Result<Vec<u8>> {
    cmd.build();
    let man = Man::new(cmd.clone());
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for render in [
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ] {
        let mut piece = Vec::new();
        render(&man, &mut piece)?;
        pieces.push(piece);
    }

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in visible_subcommands(&cmd) {
        command_entry(&mut roff, sub);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for line in exit_codes.lines().skip(1) {
        if let Some((code, meaning)) = line.trim().split_once(char::is_whitespace) {
            roff.control("TP", []);
            roff.text([bold(code)]);
            roff.text([roman(meaning.trim())]);
        }
    }
    let mut piece = Vec::new();
    roff.to_writer(&mut piece)?;
    pieces.push(piece);

    let mut piece = Vec::new();
    man.render_version_section(&mut piece)?;
    pieces.push(piece);

    // Each rendered piece starts with the same preamble; keep the first.
    let preamble = Roff::new().render().into_bytes();
    let mut page = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        match piece.strip_prefix(preamble.as_slice()) {
            Some(rest) if i > 0 => page.extend_from_slice(rest),
            _ => page.extend_from_slice(piece),
        }
    }
    Ok(page)
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// One command (or, for a command with subcommands, each of those): its
/// usage, its description, its arguments and its long help's examples.
fn command_entry(roff: &mut Roff, cmd: &Command) {
    if cmd.has_subcommands() {
        for sub in visible_subcommands(cmd) {
            command_entry(roff, sub);
        }
        return;
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    roff.control("TP", []);
    roff.text([bold(usage)]);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        paragraphs(roff, &about.to_string());
    }
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help")
        .collect();
    let after = cmd.get_after_long_help().or_else(|| cmd.get_after_help());
    if args.is_empty() && after.is_none() {
        return;
    }
    roff.control("RS", []);
    for arg in args {
        roff.control("TP", []);
        roff.text(arg_header(arg));
        if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
            paragraphs(roff, &help.to_string());
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() && !arg.is_hide_possible_values_set() {
            roff.text([
                Inline::LineBreak,
                roman(format!("One of: {}", values.join(", "))),
            ]);
        }
    }
    if let Some(after) = after {
        // Examples and install lines: kept line for line.
        roff.control("PP", []);
        roff.control("nf", []);
        for line in after.to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    roff.control("RE", []);
}

/// `--status <CODE> [default: 401]`, or `NAME` for a positional.
fn arg_header(arg: &Arg) -> Vec<Inline> {
    let value_names: Vec<String> = arg
        .get_value_names()
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let takes_values = arg.get_num_args().is_some_and(|n| n.takes_values());
    let mut header = Vec::new();
    if arg.is_positional() {
        let name = value_names
            .first()
            .cloned()
            .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        header.push(italic(name));
    } else {
        if let Some(short) = arg.get_short() {
            header.push(bold(format!("-{short}")));
            header.push(roman(", "));
        }
        if let Some(long) = arg.get_long() {
            header.push(bold(format!("--{long}")));
        }
        if takes_values {
            for name in &value_names {
                header.push(roman(" "));
                header.push(italic(name.clone()));
            }
        }
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if takes_values && !defaults.is_empty() && !arg.is_hide_default_value_set() {
        header.push(roman(format!(" [default: {}]", defaults.join(", "))));
    }
    header
}

/// Text whose blank lines separate paragraphs, inside a `.TP` body.
fn paragraphs(roff: &mut Roff, text: &str) {
    for line in text.lines() {
        if line.trim().is_empty() {
            roff.control("sp", []);
        } else {
            roff.text([roman(line)]);
        }
    }
}

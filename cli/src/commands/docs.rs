//! `completions` and `man`: generated from the clap definitions, with
//! no daemon.

use crate::args::{self, CompletionsArgs, EXIT_CODES};
use crate::docs;
use crate::failure::Failure;
use crate::output::write_stdout_bytes;

/// `mcpauthctl completions SHELL`.
pub fn completions(CompletionsArgs { shell }: CompletionsArgs) -> Result<(), Failure> {
    write_stdout_bytes(&docs::completions(args::command(), shell));
    Ok(())
}

/// `mcpauthctl man`.
pub fn man() -> Result<(), Failure> {
    let page = docs::man_page(args::command(), EXIT_CODES)
        .map_err(|e| Failure::failed(format!("cannot render the man page: {e}")))?;
    write_stdout_bytes(&page);
    Ok(())
}

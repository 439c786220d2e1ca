//! The shape of the CLI's sources that ARCHITECTURE.md describes: `main.rs`
//! stays a thin `main` (the commands live in `commands/`), and no
//! function, tests included, grows past what a reader takes in at once.
//! Lengths are read from the syntax tree: from the `fn` keyword to the
//! closing brace of its body.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The longest a function may be, in lines.
const MAX_FN_LINES: usize = 120;
/// The longest `main.rs` may be, in lines.
const MAX_MAIN_LINES: usize = 150;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every function longer than `MAX_FN_LINES` in `text`, as "NAME (N lines)
/// at line L".
fn too_long(text: &str) -> Vec<String> {
    struct Lengths(Vec<String>);
    impl Lengths {
        fn check(&mut self, sig: &syn::Signature, block: &syn::Block) {
            let start = sig.fn_token.span.start().line;
            let end = block.brace_token.span.close().end().line;
            let lines = end + 1 - start;
            if lines > MAX_FN_LINES {
                self.0
                    .push(format!("{} ({lines} lines) at line {start}", sig.ident));
            }
        }
    }
    impl<'ast> Visit<'ast> for Lengths {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.check(&f.sig, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.check(&f.sig, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
            if let Some(block) = &f.default {
                self.check(&f.sig, block);
            }
            syn::visit::visit_trait_item_fn(self, f);
        }
    }
    let file = syn::parse_file(text).expect("the source parses");
    let mut lengths = Lengths(Vec::new());
    lengths.visit_file(&file);
    lengths.0
}

#[test]
fn no_function_in_the_cli_is_longer_than_120_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10, "the sources were found");
    let long: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let shown = path.strip_prefix(&src).unwrap().display().to_string();
            too_long(&text)
                .into_iter()
                .map(move |f| format!("{shown}: {f}"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these into functions of at most {MAX_FN_LINES} lines: {long:#?}"
    );
}

#[test]
fn main_rs_stays_a_thin_main() {
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs");
    let lines = std::fs::read_to_string(main).unwrap().lines().count();
    assert!(
        lines < MAX_MAIN_LINES,
        "main.rs has {lines} lines; commands belong in commands/, clap definitions in args.rs, rendering in output/"
    );
}

#[test]
fn the_length_check_sees_functions_everywhere() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let free = format!("fn long() {{\n{body}}}\n");
    assert_eq!(too_long(&free).len(), 1);
    let method = format!("impl A {{\n    fn long(&self) {{\n{body}    }}\n}}\n");
    assert_eq!(too_long(&method).len(), 1);
    let test =
        format!("#[cfg(test)]\nmod tests {{\n    #[test]\n    fn long() {{\n{body}    }}\n}}\n");
    assert_eq!(too_long(&test).len(), 1);
    // Exactly the limit is fine: the fn line, 118 lines, the brace.
    let short = format!(
        "fn ok() {{\n{}}}\n",
        "    let x = 1;\n".repeat(MAX_FN_LINES - 2)
    );
    assert!(too_long(&short).is_empty());
}

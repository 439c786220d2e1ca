//! The architecture invariants that grep can check (ARCHITECTURE.md,
//! "Invariants"), checked on every test run instead of by discipline.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, relative to the repository root.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            (rel, text)
        })
        .collect()
}

/// The code of a file: comments dropped, and every item marked
/// `#[cfg(test)]` blanked out (unit tests may build state directly),
/// wherever it stands: code after a test item is still checked.
fn code(text: &str) -> String {
    let tests = ast::test_lines(text);
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if tests.iter().any(|r| r.contains(&(i + 1))) {
                return "";
            }
            match l.find("//") {
                Some(i) if !l[..i].contains('"') => &l[..i],
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The checks that read the syntax tree, so that neither a local binding
/// nor rustfmt's line breaks nor a test item placed first can hide a
/// call. Each takes source text and returns what it found wrong, and is
/// tested on small bad inputs below.
mod ast {
    use std::collections::{BTreeMap, BTreeSet};
    use std::ops::RangeInclusive;

    use syn::visit::Visit;

    fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|a| {
            a.path().is_ident("cfg")
                && a.meta.require_list().is_ok_and(|l| {
                    l.tokens
                        .to_string()
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|t| t == "test")
                })
        })
    }

    fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
        match item {
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => &[],
        }
    }

    /// The file without its test items (in modules and impls too).
    pub fn parse(text: &str) -> syn::File {
        fn strip(items: &mut Vec<syn::Item>) {
            items.retain(|i| !is_cfg_test(item_attrs(i)));
            for item in items {
                match item {
                    syn::Item::Mod(m) => {
                        if let Some((_, inner)) = &mut m.content {
                            strip(inner);
                        }
                    }
                    syn::Item::Impl(i) => i.items.retain(|ii| match ii {
                        syn::ImplItem::Fn(f) => !is_cfg_test(&f.attrs),
                        _ => true,
                    }),
                    _ => {}
                }
            }
        }
        let mut file = syn::parse_file(text).expect("the source parses");
        strip(&mut file.items);
        file
    }

    /// The lines of every test item.
    pub fn test_lines(text: &str) -> Vec<RangeInclusive<usize>> {
        use syn::spanned::Spanned;
        fn walk(items: &[syn::Item], out: &mut Vec<RangeInclusive<usize>>) {
            for item in items {
                if is_cfg_test(item_attrs(item)) {
                    out.push(item.span().start().line..=item.span().end().line);
                    continue;
                }
                match item {
                    syn::Item::Mod(m) => {
                        if let Some((_, inner)) = &m.content {
                            walk(inner, out);
                        }
                    }
                    syn::Item::Impl(i) => {
                        for ii in &i.items {
                            if let syn::ImplItem::Fn(f) = ii
                                && is_cfg_test(&f.attrs)
                            {
                                out.push(f.span().start().line..=f.span().end().line);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if let Ok(file) = syn::parse_file(text) {
            walk(&file.items, &mut out);
        }
        out
    }

    /// A call: the method or function name, its argument count (a
    /// method's receiver not counted), and the function it is in.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Call {
        pub name: String,
        pub args: usize,
        pub in_fn: String,
        /// `Type::name(..)` (a path call) rather than `x.name(..)`.
        pub path_call: bool,
        /// On `self`, `Self::` or `Store::`: a call of the type's own.
        pub own: bool,
        /// The receiver, as tokens (empty for a path call).
        pub receiver: String,
    }

    #[derive(Default)]
    struct Calls {
        current: Vec<String>,
        found: Vec<Call>,
    }

    impl<'ast> Visit<'ast> for Calls {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.current.push(f.sig.ident.to_string());
            syn::visit::visit_item_fn(self, f);
            self.current.pop();
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.current.push(f.sig.ident.to_string());
            syn::visit::visit_impl_item_fn(self, f);
            self.current.pop();
        }
        fn visit_expr_method_call(&mut self, c: &'ast syn::ExprMethodCall) {
            use quote::ToTokens;
            let receiver = c.receiver.to_token_stream().to_string();
            self.found.push(Call {
                name: c.method.to_string(),
                args: c.args.len(),
                in_fn: self.current.first().cloned().unwrap_or_default(),
                path_call: false,
                own: receiver == "self",
                receiver,
            });
            syn::visit::visit_expr_method_call(self, c);
        }
        fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
            if let syn::Expr::Path(p) = &*c.func
                && let Some(last) = p.path.segments.last()
            {
                let first = p.path.segments.first().map(|s| s.ident.to_string());
                self.found.push(Call {
                    name: last.ident.to_string(),
                    args: c.args.len(),
                    in_fn: self.current.first().cloned().unwrap_or_default(),
                    path_call: true,
                    own: p.path.segments.len() == 2
                        && matches!(first.as_deref(), Some("Self" | "Store")),
                    receiver: String::new(),
                });
            }
            syn::visit::visit_expr_call(self, c);
        }
    }

    /// Every call in the non-test code of `text`.
    pub fn calls(text: &str) -> Vec<Call> {
        let mut v = Calls::default();
        v.visit_file(&parse(text));
        v.found
    }

    /// `Store::install_grant(guard, grant, record)` (three arguments; the
    /// broker's installer takes four) called anywhere but inside
    /// `install.rs`'s `install_grant`: one line per offending call.
    pub fn store_installs_outside_the_installer(files: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (path, text) in files {
            for call in calls(text) {
                let store_install = call.name == "install_grant"
                    && (call.args == 3 || (call.path_call && call.args == 4));
                let home = path.ends_with("daemon/src/install.rs") && call.in_fn == "install_grant";
                if store_install && !home {
                    out.push(format!("{path}: in {}", call.in_fn));
                }
            }
        }
        out
    }

    /// The methods that write to sled, directly or through another
    /// method of `Store`.
    fn writers(methods: &BTreeMap<String, (Vec<Call>, bool)>) -> BTreeSet<String> {
        const SLED_WRITES: [&str; 6] = [
            "insert",
            "compare_and_swap",
            "transaction",
            "apply_batch",
            "clear",
            "drop_tree",
        ];
        // A sled write: a write method on one of the store's trees
        // (`self.<tree>`, a `tree` binding, `….open_tree(..)?`), or one of
        // the names only sled has. Not the in-memory cache, not a JSON map.
        let sled_write = |c: &Call| {
            let on_tree = (c.receiver.starts_with("self .") && !c.receiver.contains("cache"))
                || c.receiver == "tree"
                || c.receiver.contains("open_tree");
            !c.path_call
                && (matches!(
                    c.name.as_str(),
                    "compare_and_swap" | "transaction" | "apply_batch" | "drop_tree"
                ) || (on_tree
                    && (SLED_WRITES.contains(&c.name.as_str()) || c.name == "remove")))
        };
        let mut writes: BTreeSet<String> = methods
            .iter()
            .filter(|(_, (calls, _))| calls.iter().any(sled_write))
            .map(|(n, _)| n.clone())
            .collect();
        loop {
            let more: Vec<String> = methods
                .iter()
                .filter(|(n, (calls, _))| {
                    !writes.contains(*n) && calls.iter().any(|c| c.own && writes.contains(&c.name))
                })
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                return writes;
            }
            writes.extend(more);
        }
    }

    /// Every public method of `Store` that writes, directly or through
    /// another method, must take a `&ServerGuard` (or, for an identity
    /// provider's record, an `&IdpGuard`), unless `exempt` names it.
    pub fn store_writes_without_a_guard(store: &str, exempt: &[&str]) -> Vec<String> {
        let (methods, guarded) = store_methods(store);
        writers(&methods)
            .into_iter()
            .filter(|m| methods[m].1 && !guarded.contains(m) && !exempt.contains(&m.as_str()))
            .map(|m| format!("Store::{m}"))
            .collect()
    }

    /// The public methods of `Store` found to write.
    pub fn store_writers(store: &str) -> BTreeSet<String> {
        let (methods, _) = store_methods(store);
        writers(&methods)
            .into_iter()
            .filter(|m| methods[m].1)
            .collect()
    }

    /// Each method of `impl Store`: its calls and whether it is public
    /// (and on a live store); and those that take a guard.
    #[allow(clippy::type_complexity)]
    fn store_methods(store: &str) -> (BTreeMap<String, (Vec<Call>, bool)>, BTreeSet<String>) {
        let file = parse(store);
        let mut methods: BTreeMap<String, (Vec<Call>, bool)> = BTreeMap::new();
        let mut guarded = BTreeSet::new();
        for item in &file.items {
            let syn::Item::Impl(imp) = item else { continue };
            let syn::Type::Path(t) = &*imp.self_ty else {
                continue;
            };
            if !t.path.is_ident("Store") || imp.trait_.is_some() {
                continue;
            }
            for ii in &imp.items {
                let syn::ImplItem::Fn(f) = ii else { continue };
                let name = f.sig.ident.to_string();
                let mut v = Calls::default();
                v.visit_block(&f.block);
                // Methods on a live store; constructors and the rewrite
                // at start (no `self`) run before it serves anyone.
                let public =
                    matches!(f.vis, syn::Visibility::Public(_)) && f.sig.receiver().is_some();
                methods.insert(name.clone(), (v.found, public));
                let takes_guard = f.sig.inputs.iter().any(|input| {
                    let syn::FnArg::Typed(t) = input else {
                        return false;
                    };
                    let syn::Type::Reference(r) = &*t.ty else {
                        return false;
                    };
                    let syn::Type::Path(p) = &*r.elem else {
                        return false;
                    };
                    p.path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "ServerGuard" || s.ident == "IdpGuard")
                });
                if takes_guard {
                    guarded.insert(name);
                }
            }
        }
        (methods, guarded)
    }

    /// The top-level module a file of `daemon/src` belongs to: `login`
    /// for `login/device.rs`, `oauth` for every file under `oauth/`.
    pub fn module_of(path: &str) -> String {
        let rel = path.strip_prefix("daemon/src/").unwrap_or(path);
        let first = rel.split('/').next().unwrap_or(rel);
        first.trim_end_matches(".rs").to_string()
    }

    #[derive(Default)]
    struct Uses {
        modules: BTreeSet<String>,
        names: BTreeSet<String>,
    }

    impl Uses {
        fn tree(&mut self, tree: &syn::UseTree, after_crate: bool) {
            match tree {
                syn::UseTree::Path(p) if after_crate => {
                    self.modules.insert(p.ident.to_string());
                    self.tree(&p.tree, false);
                }
                syn::UseTree::Path(p) => self.tree(&p.tree, p.ident == "crate"),
                syn::UseTree::Name(n) => {
                    if after_crate {
                        self.modules.insert(n.ident.to_string());
                    }
                    self.names.insert(n.ident.to_string());
                }
                syn::UseTree::Rename(r) => {
                    if after_crate {
                        self.modules.insert(r.ident.to_string());
                    }
                    self.names.insert(r.ident.to_string());
                }
                syn::UseTree::Group(g) => {
                    for t in &g.items {
                        self.tree(t, after_crate);
                    }
                }
                syn::UseTree::Glob(_) => {}
            }
        }
    }

    impl<'ast> Visit<'ast> for Uses {
        fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
            self.tree(&u.tree, false);
        }
        fn visit_path(&mut self, p: &'ast syn::Path) {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            if segments.len() > 1 && segments[0] == "crate" {
                self.modules.insert(segments[1].clone());
            }
            self.names.extend(segments);
            syn::visit::visit_path(self, p);
        }
    }

    /// The modules of the crate that the non-test code of `text` names
    /// (`use crate::x` or a `crate::x::..` path anywhere), and every name
    /// its paths and imports mention.
    fn uses(text: &str) -> Uses {
        let mut v = Uses::default();
        v.visit_file(&parse(text));
        v
    }

    /// Which top-level modules each module of `files` (paths under
    /// `daemon/src`) depends on, itself left out.
    pub fn module_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, text) in files {
            let module = module_of(path);
            let mut deps = uses(text).modules;
            deps.remove(&module);
            graph.entry(module).or_default().extend(deps);
        }
        graph
    }

    /// The import cycles of `graph`: each strongly connected set of more
    /// than one module, as its sorted names.
    pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
        let reaches = |from: &str| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.to_string()];
            while let Some(m) = todo.pop() {
                for d in graph.get(&m).into_iter().flatten() {
                    if seen.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            seen
        };
        let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
        for m in graph.keys() {
            let from_m = reaches(m);
            let cycle: Vec<String> = graph
                .keys()
                .filter(|o| *o == m || (from_m.contains(*o) && reaches(o).contains(m)))
                .cloned()
                .collect();
            if cycle.len() > 1 {
                found.insert(cycle);
            }
        }
        found.into_iter().collect()
    }

    /// The files whose non-test code names `ident` (imported or in a
    /// path), but for those in `allowed`.
    pub fn naming(files: &[(String, String)], ident: &str, allowed: &[&str]) -> Vec<String> {
        files
            .iter()
            .filter(|(path, _)| !allowed.contains(&path.as_str()))
            .filter(|(_, text)| uses(text).names.contains(ident))
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Every function (free, in an impl or a trait, nested or a test)
    /// longer than `max` lines, from `fn` to its closing brace, as
    /// `path:line name (N lines)`.
    pub fn long_functions(files: &[(String, String)], max: usize) -> Vec<String> {
        use syn::spanned::Spanned;
        struct Long<'a> {
            path: &'a str,
            max: usize,
            found: Vec<String>,
        }
        impl Long<'_> {
            fn check(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
                let (start, end) = (span.start().line, span.end().line);
                if end + 1 - start > self.max {
                    self.found.push(format!(
                        "{}:{start} {name} ({} lines)",
                        self.path,
                        end + 1 - start
                    ));
                }
            }
        }
        impl<'ast> Visit<'ast> for Long<'_> {
            fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
                self.check(&f.sig.ident, f.span());
                syn::visit::visit_item_fn(self, f);
            }
            fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
                self.check(&f.sig.ident, f.span());
                syn::visit::visit_impl_item_fn(self, f);
            }
            fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
                if f.default.is_some() {
                    self.check(&f.sig.ident, f.span());
                }
                syn::visit::visit_trait_item_fn(self, f);
            }
        }
        let mut found = Vec::new();
        for (path, text) in files {
            let file = syn::parse_file(text).expect("the source parses");
            let mut v = Long {
                path,
                max,
                found: Vec::new(),
            };
            v.visit_file(&file);
            found.extend(v.found);
        }
        found
    }

    /// The string literals of the non-test code of `text` that contain
    /// `needle`, wherever they stand (in `format!` and `#[error(..)]`
    /// too, which the syntax tree keeps as tokens), doc comments aside.
    pub fn literals_containing(text: &str, needle: &str) -> Vec<String> {
        use quote::ToTokens;
        fn walk(tokens: proc_macro2::TokenStream, needle: &str, out: &mut Vec<String>) {
            for tree in tokens {
                match tree {
                    proc_macro2::TokenTree::Group(g) => {
                        let doc = g.delimiter() == proc_macro2::Delimiter::Bracket
                            && g.stream().into_iter().next().is_some_and(
                                |t| matches!(&t, proc_macro2::TokenTree::Ident(i) if i == "doc"),
                            );
                        if !doc {
                            walk(g.stream(), needle, out);
                        }
                    }
                    proc_macro2::TokenTree::Literal(l) => {
                        let l = l.to_string();
                        if l.contains(needle) {
                            out.push(l);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(parse(text).into_token_stream(), needle, &mut out);
        out
    }
}

/// Files under `dir` whose code contains any of `needles`, except `allowed`.
fn offenders(dir: &str, needles: &[&str], allowed: &[&str]) -> Vec<String> {
    sources(dir)
        .into_iter()
        .filter(|(path, _)| !allowed.contains(&path.as_str()))
        .filter(|(_, text)| {
            let code = code(text);
            needles.iter().any(|n| code.contains(n))
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_the_rpc_layer_and_the_client_library_know_tonic_and_prost() {
    let found = offenders(
        "daemon/src",
        &[
            "tonic::",
            "prost::",
            "use tonic",
            "use prost",
            "mcpauth_proto::pb",
        ],
        &["daemon/src/rpc.rs"],
    );
    assert!(found.is_empty(), "tonic/prost outside rpc.rs: {found:?}");
    let found = offenders(
        "cli/src",
        &["tonic::", "prost::", "use tonic", "use prost"],
        &["cli/src/lib.rs", "cli/src/main.rs"],
    );
    assert!(
        found.is_empty(),
        "tonic/prost outside the client library: {found:?}"
    );
}

#[test]
fn only_the_store_knows_sled() {
    let found = offenders(
        "daemon/src",
        &["sled::", "use sled"],
        &["daemon/src/store.rs"],
    );
    assert!(found.is_empty(), "sled outside store.rs: {found:?}");
}

#[test]
fn the_oauth_engine_knows_nothing_of_grpc_the_store_or_the_broker() {
    let found = offenders(
        "daemon/src/oauth",
        &[
            "tonic",
            "prost",
            "sled",
            "crate::rpc",
            "crate::store",
            "crate::broker",
            "crate::locks",
        ],
        &[],
    );
    assert!(found.is_empty(), "the OAuth engine reaches out: {found:?}");
}

#[test]
fn one_place_refreshes_and_one_place_installs_a_grant() {
    // The token request of a refresh: only in refresh.rs.
    let found = offenders(
        "daemon/src",
        &[
            ".refresh(&discovery",
            "http.refresh(",
            "(\"grant_type\", \"refresh_token\")",
        ],
        &["daemon/src/refresh.rs", "daemon/src/oauth/token.rs"],
    );
    assert!(
        found.is_empty(),
        "a refresh request outside refresh_grant: {found:?}"
    );
    let refresh = std::fs::read_to_string(root().join("daemon/src/refresh.rs")).unwrap();
    // Whitespace-blind: rustfmt may split the call over lines.
    let refresh: String = code(&refresh).split_whitespace().collect();
    assert_eq!(
        refresh.matches(".refresh(&discovery").count(),
        1,
        "one refresh request, in refresh_locked"
    );
    // A grant is written only by the store's install, called only by
    // Installer::install_grant: read as syntax, so no binding or line break
    // hides a call.
    let found = ast::store_installs_outside_the_installer(&sources("daemon/src"));
    assert!(
        found.is_empty(),
        "a grant write outside install.rs: {found:?}"
    );
    let store = code(&std::fs::read_to_string(root().join("daemon/src/store.rs")).unwrap());
    assert_eq!(
        store.matches("grants.insert(").count(),
        1,
        "the grants tree is written in one place (the install transaction)"
    );
    let install = code(&std::fs::read_to_string(root().join("daemon/src/install.rs")).unwrap());
    assert_eq!(
        install.matches("install_grant(").count(),
        2,
        "defined once, calls the store once"
    );
}

#[test]
fn tokens_leave_the_daemon_in_one_place() {
    let rpc = code(&std::fs::read_to_string(root().join("daemon/src/rpc.rs")).unwrap());
    assert_eq!(
        rpc.matches("access_token:").count(),
        1,
        "one wire field carries a token"
    );
    let found = offenders(
        "daemon/src",
        &["access_token.expose()"],
        &[
            "daemon/src/rpc.rs",
            // Token files are a way out the person configured; the token
            // service only fingerprints the token to compare it.
            "daemon/src/files.rs",
            "daemon/src/tokens.rs",
        ],
    );
    assert!(found.is_empty(), "a token exposed elsewhere: {found:?}");
}

#[test]
fn every_state_write_takes_the_servers_guard() {
    let store = std::fs::read_to_string(root().join("daemon/src/store.rs")).unwrap();
    // The check sees the writers it must see.
    let writers = ast::store_writers(&store);
    for method in [
        "put_server",
        "delete_server",
        "install_grant",
        "delete_grant",
        "put_registration",
        "delete_registrations",
        "put_flow",
        "delete_flow",
        "put_identity",
        "unlock",
    ] {
        assert!(
            writers.contains(method),
            "{method} not seen writing: {writers:?}"
        );
    }
    let found = ast::store_writes_without_a_guard(&store, STORE_WRITES_WITHOUT_A_SERVER);
    assert!(
        found.is_empty(),
        "a Store method writes without a guard: {found:?}"
    );
}

/// The `Store` methods that write what belongs to no server, and why.
const STORE_WRITES_WITHOUT_A_SERVER: &[&str] = &[
    // The config text in force, written under the config edit lock.
    "set_last_good_config",
    // Where the store key lives, once, at start or when the key comes.
    "set_key_source",
    // Re-encodes (seals) what is there, each value only if unchanged.
    "unlock",
    // State under a name that cannot be a server's (so has no lock).
    "purge_invalid",
];

#[test]
fn the_checks_that_read_syntax_catch_what_text_would_miss() {
    let file = |path: &str, text: &str| vec![(path.to_string(), text.to_string())];
    // A local binding, and rustfmt's line breaks.
    let bound = "impl Logins { async fn sneaky(&self, g: &ServerGuard) {\n\
        let s = self.store();\n s.install_grant(g, &grant, &record).await; } }";
    let split = "impl Logins { async fn sneaky(&self, g: &ServerGuard) {\n\
        self.store()\n    .install_grant(\n        g,\n        &grant,\n        &record,\n    )\n    .await; } }";
    let path_call = "fn sneaky() { Store::install_grant(&store, g, &grant, &record); }";
    for text in [bound, split, path_call] {
        assert_eq!(
            ast::store_installs_outside_the_installer(&file("daemon/src/login.rs", text)).len(),
            1,
            "{text}"
        );
    }
    // The broker's installer (four arguments) is what others call.
    let fine = "fn ok(&self) { self.install_grant(&guard, new, GrantSource::Login, |_| {}); }";
    assert!(
        ast::store_installs_outside_the_installer(&file("daemon/src/login.rs", fine)).is_empty()
    );
    // Code after a test item is still read.
    let after_test =
        "#[cfg(test)]\nfn helper() {}\nfn sneaky() { s.install_grant(g, &grant, &record); }";
    assert_eq!(
        ast::store_installs_outside_the_installer(&file("daemon/src/files.rs", after_test)).len(),
        1
    );
    assert!(!code(after_test).contains("fn helper"));
    assert!(code(after_test).contains("fn sneaky"));
    // A new store method that writes without a guard, directly or
    // through a helper, is found by its signature, not by a list.
    let store = "impl Store {\n\
        fn put(&self, tree: &sled::Tree) { tree.insert(1, 2); }\n\
        pub async fn put_record(&self, guard: &ServerGuard) { self.put(&self.servers); }\n\
        pub async fn sneaky_write(&self) { self.put(&self.grants); }\n\
        pub async fn sneaky_remove(&self, name: &str) { self.flows.remove(name); }\n\
        pub fn read(&self) { self.servers.get(1); }\n\
        #[cfg(test)]\n pub fn test_only(&self) { self.grants.insert(1, 2); }\n\
    }";
    assert_eq!(
        ast::store_writes_without_a_guard(store, &[]),
        ["Store::sneaky_remove", "Store::sneaky_write"]
    );
    assert!(
        ast::store_writes_without_a_guard(store, &["sneaky_write", "sneaky_remove"]).is_empty()
    );

    // An import cycle, through a `use` group or a path in an expression,
    // across files of one module (`login/`).
    let graph = ast::module_graph(&[
        ("daemon/src/a.rs".into(), "use crate::{b::B, c};".into()),
        (
            "daemon/src/b.rs".into(),
            "fn f() { crate::login::go(); }".into(),
        ),
        (
            "daemon/src/login/device.rs".into(),
            "use crate::a::A; use super::x;".into(),
        ),
        (
            "daemon/src/c.rs".into(),
            "#[cfg(test)] use crate::a::A;".into(),
        ),
    ]);
    assert_eq!(ast::cycles(&graph), [["a", "b", "login"]]);
    assert!(graph["c"].is_empty(), "test code is no dependency");
    // A part that names the broker, however it reaches it.
    let parts = [
        (
            "daemon/src/p.rs".to_string(),
            "use crate::broker::{Broker as B};".to_string(),
        ),
        (
            "daemon/src/q.rs".to_string(),
            "fn f(b: &crate::broker::Broker) {}".to_string(),
        ),
        (
            "daemon/src/r.rs".to_string(),
            "use crate::broker::AuthState;".to_string(),
        ),
    ];
    assert_eq!(
        ast::naming(&parts, "Broker", &[]),
        ["daemon/src/p.rs", "daemon/src/q.rs"]
    );
    // A long function, in an impl, nested, or a test.
    let body = "    let x = 1;\n".repeat(119);
    for text in [
        format!("fn long() {{\n{body}}}"),
        format!("impl A {{ fn long(&self) {{\n{body}}} }}"),
        format!("fn outer() {{ fn long() {{\n{body}}} }}"),
        format!("#[cfg(test)] mod t {{ #[test] fn long() {{\n{body}}} }}"),
    ] {
        let found = ast::long_functions(&file("cli/src/x.rs", &text), MAX_FUNCTION_LINES);
        assert!(
            found.iter().any(|f| f.contains(" long (121 lines)")),
            "{found:?}"
        );
    }
    let short = format!("fn short() {{\n{}}}", "    let x = 1;\n".repeat(118));
    assert!(ast::long_functions(&file("cli/src/x.rs", &short), MAX_FUNCTION_LINES).is_empty());
    // A CLI command in a daemon string: in a format!, an error attribute,
    // a plain literal; doc comments and tests are not messages.
    let text = r##"
        /// Run `mcpauthctl login`: documentation.
        #[derive(thiserror::Error)]
        enum E { #[error("run `mcpauthctl login {0}`")] A(String) }
        fn f(n: &str) -> String { format!("run mcpauthctl login {n}") }
        fn g() -> &'static str { r#"mcpauthctl status"# }
        #[cfg(test)] fn t() -> &'static str { "mcpauthctl" }
    "##;
    assert_eq!(ast::literals_containing(text, "mcpauthctl").len(), 3);
}

#[test]
fn the_daemon_s_modules_form_no_cycle_and_only_the_wiring_names_the_broker() {
    let files = sources("daemon/src");
    let graph = ast::module_graph(&files);
    // The check sees the edges it must see.
    assert!(graph["broker"].contains("tokens") && graph["tokens"].contains("refresh"));
    let cycles = ast::cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles among daemon/src's modules: {cycles:?}"
    );
    // The parts depend on the context and on each other, never on the
    // broker: it is named by its wiring (broker.rs, lib.rs) and by the
    // RPC layer that serves it.
    let found = ast::naming(
        &files,
        "Broker",
        &[
            "daemon/src/broker.rs",
            "daemon/src/lib.rs",
            "daemon/src/rpc.rs",
        ],
    );
    assert!(found.is_empty(), "a module that names Broker: {found:?}");
}

/// A function longer than this is several functions.
const MAX_FUNCTION_LINES: usize = 120;

#[test]
fn no_function_is_longer_than_120_lines() {
    let mut files = sources("daemon/src");
    files.extend(sources("cli/src"));
    let found = ast::long_functions(&files, MAX_FUNCTION_LINES);
    assert!(found.is_empty(), "functions to split: {found:#?}");
    let main = std::fs::read_to_string(root().join("cli/src/main.rs")).unwrap();
    assert!(
        main.lines().count() < 150,
        "cli/src/main.rs is a thin main: {} lines",
        main.lines().count()
    );
}

#[test]
fn no_daemon_message_names_a_cli_command() {
    // What to do next travels as data (`error::NextStep`); clients word
    // it. The one place the daemon words it itself (a desktop
    // notification) takes the command's name from the protocol crate.
    let found: Vec<(String, Vec<String>)> = sources("daemon/src")
        .into_iter()
        .map(|(path, text)| (path, ast::literals_containing(&text, "mcpauthctl")))
        .filter(|(_, found)| !found.is_empty())
        .collect();
    assert!(
        found.is_empty(),
        "daemon strings naming the CLI: {found:#?}"
    );
}

#[test]
fn every_daemon_module_is_on_the_map() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let lib = std::fs::read_to_string(root().join("daemon/src/lib.rs")).unwrap();
    let layout: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    for line in lib.lines() {
        let Some(rest) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "))
        else {
            continue;
        };
        let module = rest.trim_end_matches(';');
        let file = if root().join(format!("daemon/src/{module}/mod.rs")).exists() {
            format!("`{module}/`")
        } else {
            format!("`{module}.rs`")
        };
        assert!(
            arch.contains(&file),
            "ARCHITECTURE.md's code map lacks {file}"
        );
        assert!(
            layout.contains(&format!("[`{module}`]")),
            "lib.rs's layout doc lacks [`{module}`]"
        );
    }
}

#[test]
fn grants_without_a_person_share_the_one_refresh_path() {
    // An unattended grant is obtained and renewed only by refresh_grant
    // (which calls Unattended::renew under the server's guard).
    let found = offenders(
        "daemon/src",
        &["unattended.renew("],
        &["daemon/src/refresh.rs", "daemon/src/unattended.rs"],
    );
    assert!(
        found.is_empty(),
        "an unattended grant obtained elsewhere: {found:?}"
    );
    let refresh = code(&std::fs::read_to_string(root().join("daemon/src/refresh.rs")).unwrap());
    assert_eq!(refresh.matches(".renew(").count(), 1);
    // Their token requests, and the device polls, have one caller each.
    // (enterprise.rs's requests run inside Unattended::renew.)
    for (call, homes) in [
        (".client_credentials(", &["daemon/src/unattended.rs"][..]),
        (
            ".jwt_bearer(",
            &["daemon/src/unattended.rs", "daemon/src/enterprise.rs"][..],
        ),
        (".exchange_for_id_jag(", &["daemon/src/enterprise.rs"][..]),
        (".poll_device(", &["daemon/src/login/device.rs"][..]),
        (
            ".device_authorization(",
            &["daemon/src/login/device.rs"][..],
        ),
    ] {
        let mut allowed = homes.to_vec();
        allowed.push("daemon/src/oauth/grants.rs");
        let found = offenders("daemon/src", &[call], &allowed);
        assert!(found.is_empty(), "{call} outside {homes:?}: {found:?}");
    }
    let unattended =
        code(&std::fs::read_to_string(root().join("daemon/src/unattended.rs")).unwrap());
    assert_eq!(
        unattended.matches(".enterprise_tokens(").count(),
        1,
        "the ID-JAG exchange runs only inside Unattended::renew"
    );
}

#[test]
fn secrets_are_exposed_only_where_they_leave() {
    // Keys, client secrets, assertions and device codes reach the wire in
    // the OAuth engine only; the broker's modules (the device flow and the
    // unattended grants among them) pass them as `Secret`s. Tokens leave
    // through rpc.rs and token files; tokens.rs only fingerprints them.
    let found = offenders(
        "daemon/src",
        &[".expose()"],
        &[
            "daemon/src/rpc.rs",
            "daemon/src/files.rs",
            "daemon/src/tokens.rs",
            "daemon/src/secret.rs",
            "daemon/src/oauth/token.rs",
            "daemon/src/oauth/grants.rs",
            "daemon/src/oauth/jwt.rs",
            "daemon/src/oauth/flow.rs",
            "daemon/src/oauth/pkce.rs",
            // check_token: a token shown to its own server, to check it.
            "daemon/src/oauth/http.rs",
            // A tool's keyring entry read as its JSON, as import.rs reads
            // the tools' files.
            "daemon/src/keyring.rs",
        ],
    );
    assert!(found.is_empty(), "a secret exposed in: {found:?}");
}

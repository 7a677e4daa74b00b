//! The import graph of node/src at top-level-module granularity, and the test that keeps
//! it layered: data flows transport → domain → store/peers, so no module below a
//! transport imports one, and no two top-level modules import each other through any
//! chain.
//!
//! The graph is read from the source files found on disk (every `crate::<module>` path in
//! code, in `use` trees and inline), so it follows the tree as modules move.
//! `cargo test -p yidi-node module_graph -- --nocapture` prints it as a mermaid diagram
//! (the one docs/architecture.md shows).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// The transports and the tools built on them: the only modules that may import
/// `service` (the gRPC implementation). `server` assembles the transports into a running
/// node, so it is their composition root, not a layer below them.
const TRANSPORTS: &[&str] = &[
    "service",
    "nhsa",
    "console",
    "server",
    "main",
    "cli",
    "bench",
    "bench_clearing",
    "demo",
    "quote",
];

/// One `crate::<module>` reference: which top-level module, from which file and line.
#[derive(Debug, Clone)]
struct Reference {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

/// The top-level module a file under `src` belongs to: `src/config.rs` → `config`,
/// `src/service/admin.rs` → `service`, `src/main.rs` → `main`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments, string and character literals blanked out (newlines kept,
/// so byte offsets still give the right line), leaving only code to search.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                let start = i;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                blank(&mut out, start, i.min(b.len()));
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                let start = i;
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                blank(&mut out, start, i);
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                blank(&mut out, start, i);
            }
            b'\'' => {
                // A character literal ('x', '\n', '\u{..}', '"'); otherwise a lifetime.
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p + 1)
                } else {
                    let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 2 + ch_len)
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i, end);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(b: &[u8], i: usize) -> Option<(&str, usize)> {
    let end = b[i..]
        .iter()
        .position(|&c| !is_ident(c))
        .map_or(b.len(), |p| i + p);
    (end > i).then(|| (std::str::from_utf8(&b[i..end]).unwrap_or(""), end))
}

/// The top-level modules named after each `root::` (`crate::` in the library, also
/// `yidi_node::` in the binary), with the byte offset of each: `crate::store::Store`
/// gives `store`; `crate::{store::Store, peers}` gives `store` and `peers`.
fn module_paths(code: &str, root: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let pat = format!("{root}::");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find(&pat) {
        let at = from + p;
        from = at + pat.len();
        if at > 0 && is_ident(b[at - 1]) {
            continue;
        }
        let i = skip_ws(b, from);
        if b.get(i) == Some(&b'{') {
            // A use tree: the first segment of each item at the top level of the braces.
            let mut depth = 0usize;
            let mut j = i;
            let mut expect_item = true;
            while j < b.len() {
                match b[j] {
                    b'{' => {
                        depth += 1;
                        j += 1;
                        if depth == 1 {
                            expect_item = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => {
                        expect_item = true;
                        j += 1;
                    }
                    c if depth == 1 && expect_item && is_ident(c) => {
                        if let Some((name, end)) = ident_at(b, j) {
                            found.push((name.to_owned(), j));
                            j = end;
                        }
                        expect_item = false;
                    }
                    _ => j += 1,
                }
            }
            from = j;
        } else if let Some((name, _)) = ident_at(b, i) {
            found.push((name.to_owned(), i));
        }
    }
    found
}

/// Every reference from one top-level module to another found under `src`.
fn references(src: &Path) -> (BTreeSet<String>, Vec<Reference>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| top_module(src, f))
        .filter(|m| m != "lib")
        .collect();
    let mut refs = Vec::new();
    for file in &files {
        let Some(from) = top_module(src, file) else {
            continue;
        };
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        let code = code_only(&text);
        let mut paths = module_paths(&code, "crate");
        paths.extend(module_paths(&code, "$crate"));
        if from == "main" {
            paths.extend(module_paths(&code, "yidi_node"));
        }
        for (to, offset) in paths {
            if to == from || !modules.contains(&to) {
                continue;
            }
            let line = code[..offset].matches('\n').count() + 1;
            refs.push(Reference {
                from: from.clone(),
                to,
                file: file.clone(),
                line,
            });
        }
    }
    (modules, refs)
}

/// The edges between top-level modules, each with its first reference.
fn graph(refs: &[Reference]) -> BTreeMap<(String, String), &Reference> {
    let mut edges = BTreeMap::new();
    for r in refs {
        edges.entry((r.from.clone(), r.to.clone())).or_insert(r);
    }
    edges
}

/// A cycle through the graph if there is one, as the list of edges around it.
fn find_cycle<'a>(
    modules: &BTreeSet<String>,
    edges: &BTreeMap<(String, String), &'a Reference>,
) -> Option<Vec<&'a Reference>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        out.entry(from).or_default().push(to);
    }
    // Colours: 0 unvisited, 1 on the current path, 2 done.
    let mut colour: BTreeMap<&str, u8> = modules.iter().map(|m| (m.as_str(), 0)).collect();
    fn visit<'m>(
        m: &'m str,
        out: &BTreeMap<&'m str, Vec<&'m str>>,
        colour: &mut BTreeMap<&'m str, u8>,
        path: &mut Vec<&'m str>,
    ) -> Option<Vec<&'m str>> {
        colour.insert(m, 1);
        path.push(m);
        for &next in out.get(m).into_iter().flatten() {
            match colour.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|&p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, out, colour, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        colour.insert(m, 2);
        None
    }
    for m in modules {
        if colour.get(m.as_str()) == Some(&0) {
            let mut path = Vec::new();
            if let Some(cycle) = visit(m, &out, &mut colour, &mut path) {
                return Some(
                    cycle
                        .windows(2)
                        .map(|w| edges[&(w[0].to_owned(), w[1].to_owned())])
                        .collect(),
                );
            }
        }
    }
    None
}

fn show(r: &Reference, src: &Path) -> String {
    let file = r
        .file
        .strip_prefix(src.parent().unwrap_or(src))
        .unwrap_or(&r.file);
    format!("{} -> {} ({}:{})", r.from, r.to, file.display(), r.line)
}

/// The graph as a mermaid flowchart, transports on top.
fn mermaid(modules: &BTreeSet<String>, edges: &BTreeMap<(String, String), &Reference>) -> String {
    let mut s = String::from("flowchart TD\n");
    for m in modules {
        let shape = if TRANSPORTS.contains(&m.as_str()) {
            format!("{m}[/{m}/]")
        } else {
            format!("{m}[{m}]")
        };
        let _ = writeln!(s, "    {shape}");
    }
    for (from, to) in edges.keys() {
        let _ = writeln!(s, "    {from} --> {to}");
    }
    s
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn module_graph_has_no_cycles_and_nothing_below_a_transport_imports_it() {
    let src = source_dir();
    let (modules, refs) = references(&src);
    assert!(
        modules.contains("store"),
        "the scan found no modules under {}",
        src.display()
    );
    let edges = graph(&refs);
    println!("{}", mermaid(&modules, &edges));

    let upward: Vec<String> = refs
        .iter()
        .filter(|r| r.to == "service" && !TRANSPORTS.contains(&r.from.as_str()))
        .map(|r| show(r, &src))
        .collect();
    assert!(
        upward.is_empty(),
        "only transports ({}) may import service; found:\n  {}",
        TRANSPORTS.join(", "),
        upward.join("\n  ")
    );

    if let Some(cycle) = find_cycle(&modules, &edges) {
        let lines: Vec<String> = cycle.iter().map(|r| show(r, &src)).collect();
        panic!(
            "import cycle among node/src modules:\n  {}",
            lines.join("\n  ")
        );
    }
}

#[test]
fn module_graph_reads_use_trees_inline_paths_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::{store::Store, peers::{A, B}, self};\n\
         // crate::commented\n\
         let s = \"crate::quoted\"; let c = '\"'; let r = r#\"crate::raw\"#;\n\
         fn f<'a>(x: &'a crate::config::Config) { crate::metrics::m(); }\n\
         /* crate::block */ not_crate::x;",
    );
    let found: Vec<String> = module_paths(&code, "crate")
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(found, ["store", "peers", "self", "config", "metrics"]);
}

#[test]
fn module_graph_reports_a_cycle_with_its_edges() {
    let r = |from: &str, to: &str| Reference {
        from: from.into(),
        to: to.into(),
        file: PathBuf::from(format!("src/{from}.rs")),
        line: 1,
    };
    let refs = vec![r("a", "b"), r("b", "c"), r("c", "a"), r("c", "d")];
    let modules: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let edges = graph(&refs);
    let cycle = find_cycle(&modules, &edges).expect("a cycle");
    let names: Vec<(&str, &str)> = cycle
        .iter()
        .map(|r| (r.from.as_str(), r.to.as_str()))
        .collect();
    assert_eq!(names, [("a", "b"), ("b", "c"), ("c", "a")]);
    let acyclic = graph(&refs[..2]);
    assert!(find_cycle(&modules, &acyclic).is_none());
}

//! Executable documentation. A ```` ```sh ```` block of README.md or docs/*.md whose
//! line before is `<!-- doc-run -->` is run, in document order, by `local_run`'s test
//! against the local federation of deploy/local/run.sh and its sample data; a block
//! marked `<!-- doc-skip: REASON -->` is illustrative. A fenced block marked
//! `<!-- doc-expect -->` below a run block (prose may stand between) lists lines the run
//! block's stdout must contain, each trimmed; a line `…` stands for lines left out.
//! Every ```` ```sh ```` block must carry one of the two markers, so that a new block is
//! classified and a doc that drifts from what the binary does fails the suite.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use yidi_tests::process::{workspace_root, yidi_bin};

/// The docs with runnable blocks, in the order they run: each walk-through builds on
/// the state the previous one left (integrator.md settles what clearing.md clears).
pub const RUN_ORDER: [&str; 6] = [
    "README.md",
    "docs/integrator.md",
    "docs/clearing.md",
    "docs/admin.md",
    "docs/quote.md",
    "docs/security.md",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Run,
    Skip(String),
    None,
}

#[derive(Debug, Clone)]
pub struct Block {
    /// 1-based line of the opening fence.
    pub line: usize,
    pub marker: Marker,
    pub code: String,
    /// Lines the block's stdout must contain (trimmed), from a doc-expect block below it.
    pub expect: Vec<String>,
}

fn marker_of(line: &str) -> Marker {
    let l = line.trim();
    let Some(inner) = l
        .strip_prefix("<!--")
        .and_then(|s| s.strip_suffix("-->"))
        .map(str::trim)
    else {
        return Marker::None;
    };
    if inner == "doc-run" {
        Marker::Run
    } else if let Some(reason) = inner.strip_prefix("doc-skip:") {
        Marker::Skip(reason.trim().to_owned())
    } else {
        Marker::None
    }
}

/// The fenced shell blocks of a Markdown text (info string `sh`, `bash` or `shell`), with
/// their markers and expected output.
#[must_use]
pub fn parse(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks: Vec<Block> = Vec::new();
    let mut i = 0;
    // The last shell block above: a doc-expect block belongs to it.
    let mut last_sh: Option<usize> = None;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let Some(info) = t.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = lines[i].len() - t.len();
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim_start() != "```" {
            let l = lines[i];
            body.push_str(l.strip_prefix(&" ".repeat(indent)).unwrap_or(l));
            body.push('\n');
            i += 1;
        }
        i += 1; // the closing fence
        let before = start.checked_sub(1).map_or("", |b| lines[b]);
        let info = info.trim();
        if matches!(info, "sh" | "bash" | "shell") {
            blocks.push(Block {
                line: start + 1,
                marker: marker_of(before),
                code: body,
                expect: Vec::new(),
            });
            last_sh = Some(blocks.len() - 1);
        } else if before.trim() == "<!-- doc-expect -->" {
            let owner = last_sh
                .filter(|&b| blocks[b].marker == Marker::Run)
                .unwrap_or_else(|| {
                    panic!(
                        "line {}: a doc-expect block must follow a doc-run block",
                        start + 1
                    )
                });
            blocks[owner].expect.extend(
                body.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && *l != "…")
                    .map(str::to_owned),
            );
        }
    }
    blocks
}

/// README.md and docs/*.md, relative to the workspace root.
fn all_docs() -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let mut more: Vec<String> = std::fs::read_dir(workspace_root().join("docs"))
        .expect("docs/")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

fn read_doc(doc: &str) -> String {
    std::fs::read_to_string(workspace_root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// `root/target/release/yidi`, a link to the test's binary, where a fresh clone has it
/// after `cargo build --release`: the docs put that directory on PATH themselves
/// (README, "Running a node") and run.sh finds it there.
pub fn link_release_binary(root: &Path) -> PathBuf {
    let dir = root.join("target/release");
    std::fs::create_dir_all(&dir).expect("bin dir");
    let link = dir.join("yidi");
    if !link.exists() {
        std::os::unix::fs::symlink(yidi_bin(), &link).expect("link yidi");
    }
    link
}

/// Runs every doc-run block of the docs of [`RUN_ORDER`] in `root` (the directory holding
/// deploy/ and yidi-data/ of a running local federation), each with `bash -euo pipefail`.
/// Exported variables carry from one block to the next of the same doc; each doc starts
/// from the test's environment without any `YIDI_*` (so a doc sets what it needs, PATH
/// to `yidi` included). Panics
/// naming the doc, the block's line, its commands and output when a block fails or lacks
/// an expected line. Returns how many blocks ran per doc.
pub fn run_docs(root: &Path, state_dir: &Path) -> Vec<(String, usize)> {
    let mut ran = Vec::new();
    for doc in RUN_ORDER {
        let state = state_dir.join(format!("{}.env", doc.replace('/', "_")));
        std::fs::write(&state, "").expect("env state file");
        let mut n = 0;
        for block in parse(&read_doc(doc)) {
            if block.marker != Marker::Run {
                continue;
            }
            run_block(doc, &block, root, &state);
            n += 1;
        }
        ran.push((doc.to_owned(), n));
    }
    ran
}

fn run_block(doc: &str, block: &Block, root: &Path, state: &Path) {
    let mut script = String::new();
    let _ = writeln!(script, "source {}", shell_quote(state));
    script.push_str(&block.code);
    // Only reached when every command succeeded (errexit).
    let _ = writeln!(script, "\nexport -p > {}", shell_quote(state));
    let mut cmd = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("YIDI") {
            cmd.env_remove(&name);
        }
    }
    let out = cmd
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{doc}:{}: the block exited with {}\n--- commands\n{}--- stdout\n{stdout}--- stderr\n{stderr}",
        block.line,
        out.status,
        block.code
    );
    let have: Vec<&str> = stdout.lines().map(str::trim).collect();
    for want in &block.expect {
        assert!(
            have.contains(&want.as_str()),
            "{doc}:{}: the output has no line {want:?} (doc-expect)\n--- commands\n{}--- stdout\n{stdout}--- stderr\n{stderr}",
            block.line,
            block.code
        );
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Every shell block of README.md and docs/*.md is classified: runnable, or illustrative
/// with a reason.
#[test]
fn every_shell_block_is_marked_run_or_skip() {
    let mut unmarked = Vec::new();
    for doc in all_docs() {
        for b in parse(&read_doc(&doc)) {
            match &b.marker {
                Marker::None => unmarked.push(format!("{doc}:{}", b.line)),
                Marker::Skip(reason) if reason.is_empty() => {
                    unmarked.push(format!("{doc}:{} (doc-skip without a reason)", b.line));
                }
                _ => {}
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "shell blocks without <!-- doc-run --> or <!-- doc-skip: REASON --> on the line \
         before the fence:\n{}",
        unmarked.join("\n")
    );
}

/// Only the docs of RUN_ORDER hold runnable blocks (another doc's would silently never
/// run), and each of them holds some.
#[test]
fn runnable_blocks_are_in_the_run_order_docs() {
    for doc in all_docs() {
        let runs = parse(&read_doc(&doc))
            .iter()
            .filter(|b| b.marker == Marker::Run)
            .count();
        assert_eq!(
            runs > 0,
            RUN_ORDER.contains(&doc.as_str()),
            "{doc}: {runs} doc-run blocks; RUN_ORDER in tests/integration/doc_run.rs lists \
             the docs whose blocks run"
        );
    }
}

#[test]
fn parse_reads_markers_indented_fences_and_expectations() {
    let text = "intro\n\
                <!-- doc-run -->\n\
                ```sh\n\
                echo a\n\
                ```\n\
                \n\
                <!-- doc-expect -->\n\
                ```text\n\
                a\n\
                ```\n\
                - item:\n\
                \x20 <!-- doc-skip: needs systemd -->\n\
                \x20 ```sh\n\
                \x20 systemctl start yidi\n\
                \x20 ```\n\
                ```sh\n\
                ls\n\
                ```\n\
                <!-- doc-run -->\n\
                ```sh\n\
                echo b; echo c\n\
                ```\n\
                Prose between.\n\
                <!-- doc-expect -->\n\
                ```\n\
                │ b │\n\
                …\n\
                ```\n\
                ```toml\n\
                a = 1\n\
                ```\n";
    let blocks = parse(text);
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    assert_eq!(
        (blocks[0].line, &blocks[0].marker, blocks[0].code.as_str()),
        (3, &Marker::Run, "echo a\n")
    );
    assert_eq!(blocks[0].expect, ["a"]);
    assert_eq!(
        (blocks[1].line, &blocks[1].marker, blocks[1].code.as_str()),
        (
            13,
            &Marker::Skip("needs systemd".to_owned()),
            "systemctl start yidi\n"
        )
    );
    assert_eq!((blocks[2].line, &blocks[2].marker), (16, &Marker::None));
    assert!(blocks[2].expect.is_empty());
    assert_eq!((blocks[3].line, &blocks[3].marker), (20, &Marker::Run));
    assert_eq!(blocks[3].expect, ["│ b │"]);
}

/// A doc-expect block below an illustrative block is a mistake, not silently ignored.
#[test]
#[should_panic(expected = "line 6: a doc-expect block must follow a doc-run block")]
fn parse_refuses_an_expectation_of_a_skipped_block() {
    let _: Vec<Block> =
        parse("<!-- doc-skip: x -->\n```sh\nls\n```\n<!-- doc-expect -->\n```\nx\n```\n");
}

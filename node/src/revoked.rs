//! The revocation list a node reads (`revoked_file`): one certificate serial (hex) per
//! line, `#` starts a comment. `yidi certs revoke` writes it; the node refuses a peer
//! whose serial is listed, and its own certificate if listed.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{Context, bail};

use crate::identity::normalize_serial;

/// Reads a revocation list: one serial per line, `#` comments and blank lines ignored.
/// A line that is not a serial is an error naming its line number: a typo must not
/// silently leave a certificate trusted.
pub fn read_revoked(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_revoked(&text).with_context(|| path.display().to_string())
}

/// Parses the text of a revocation list.
pub fn parse_revoked(text: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match normalize_serial(line) {
            Some(s) => {
                out.insert(s);
            }
            None => bail!("line {}: {line:?} is not a hexadecimal serial", i + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_list_parses_and_refuses_typos() {
        let set = parse_revoked("# header\n00:AB  # why\n\n4f3a\n").expect("parses");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["4f3a", "ab"]);
        assert!(parse_revoked("ab\nnot-a-serial\n").is_err());
    }
}

//! The files `yidi hospital` reads: fee lines (CSV or JSON) for upload-fees and the
//! hospital's own settlements for reconcile-detail.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use tonic::Status;
use yidi_common::{
    engine,
    money::{self, Sign},
    proto,
};

// ---------------------------------------------------------------- fee files

/// Columns of a fee CSV; the first four are required.
const FEE_COLUMNS: [&str; 6] = [
    "line_no",
    "item_code",
    "quantity",
    "unit_price",
    "amount",
    "service_date",
];
const FEE_REQUIRED: usize = 4;

/// One line as read from a file: where it came from, for messages, and its six values
/// in [`FEE_COLUMNS`] order.
type RawLine = (String, [String; 6]);

/// Reads a fee file, by extension, into wire lines with every amount filled in.
pub(super) fn read_fees(path: &Path) -> anyhow::Result<Vec<proto::FeeLine>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let raw = match ext.as_deref() {
        Some("csv") => fees_from_csv(path)?,
        Some("json") => fees_from_json(path)?,
        _ => bail!(
            "{}: cannot tell the format; name the fee file .csv or .json",
            path.display()
        ),
    };
    if raw.is_empty() {
        bail!("{}: no fee lines", path.display());
    }
    Ok(raw
        .into_iter()
        .map(|(at, cols)| fee_line(&at, cols))
        .collect::<Result<_, _>>()?)
}

fn fees_from_csv(path: &Path) -> anyhow::Result<Vec<RawLine>> {
    let name = file_name(path);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let positions = columns(&name, rdr.headers()?, &FEE_COLUMNS, FEE_REQUIRED)?;
    let mut out = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.with_context(|| format!("{name}: unreadable CSV"))?;
        // Line 1 is the header, as the admin imports count.
        out.push((format!("{name} line {}", i + 2), pick(&row, &positions)));
    }
    Ok(out)
}

fn fees_from_json(path: &Path) -> anyhow::Result<Vec<RawLine>> {
    let name = file_name(path);
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{name}: not JSON"))?;
    let Value::Array(items) = doc else {
        bail!("{name}: expected a JSON array of fee lines");
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{name} [{i}]");
            let Value::Object(obj) = item else {
                bail!(
                    "{at}: expected an object with keys {}",
                    FEE_COLUMNS.join(", ")
                );
            };
            if let Some(k) = obj.keys().find(|k| !FEE_COLUMNS.contains(&k.as_str())) {
                bail!(
                    "{at}: unknown key {k:?}; expected {}",
                    FEE_COLUMNS.join(", ")
                );
            }
            let mut cols: [String; 6] = Default::default();
            for (slot, key) in cols.iter_mut().zip(FEE_COLUMNS) {
                *slot = match obj.get(key) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.trim().to_owned(),
                    // Numbers are accepted for convenience; strings are exact.
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => bail!("{at}: {key} must be a string, got {other}"),
                };
            }
            Ok((at, cols))
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Where each of `wanted` stands in a CSV header; the first `required` must be there and
/// unknown columns are refused, so that a misspelt column is not silently ignored.
fn columns<const N: usize>(
    name: &str,
    header: &csv::StringRecord,
    wanted: &[&str; N],
    required: usize,
) -> anyhow::Result<[Option<usize>; N]> {
    if let Some(unknown) = header.iter().find(|h| !wanted.contains(h)) {
        bail!(
            "{name}: unknown column {unknown:?}; expected {}",
            wanted.join(",")
        );
    }
    let mut pos = [None; N];
    for (slot, col) in pos.iter_mut().zip(wanted) {
        *slot = header.iter().position(|h| h == *col);
    }
    if let Some(missing) = wanted[..required]
        .iter()
        .zip(&pos)
        .find_map(|(c, p)| p.is_none().then_some(c))
    {
        bail!(
            "{name}: missing column {missing}; the header must name {}",
            wanted[..required].join(",")
        );
    }
    Ok(pos)
}

fn pick<const N: usize>(row: &csv::StringRecord, pos: &[Option<usize>; N]) -> [String; N] {
    pos.map(|p| p.and_then(|i| row.get(i)).unwrap_or_default().to_owned())
}

/// A wire fee line; an empty amount becomes quantity × unit_price rounded half-up to the
/// fen — the node's own rule, so the computed amount always passes its check. Given
/// amounts are sent as they are: the node checks them and names the line if they are off.
fn fee_line(at: &str, cols: [String; 6]) -> Result<proto::FeeLine, Status> {
    let [
        line_no,
        item_code,
        quantity,
        unit_price,
        mut amount,
        service_date,
    ] = cols;
    if amount.is_empty() {
        let q = engine::parse_quantity(&quantity, &format!("quantity ({at})"))?;
        let p = money::parse(
            &unit_price,
            &format!("unit_price ({at})"),
            Sign::NonNegative,
        )?;
        amount = money::format(money::round_fen(q * p));
    }
    Ok(proto::FeeLine {
        line_no,
        item_code,
        quantity,
        unit_price,
        amount,
        service_date,
    })
}

const RECONCILE_COLUMNS: [&str; 3] = ["settlement_id", "medfee_sumamt", "fund_pay_sumamt"];

pub(super) fn read_reconcile_entries(path: &Path) -> anyhow::Result<Vec<proto::ReconcileEntry>> {
    let name = file_name(path);
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let positions = columns(&name, rdr.headers()?, &RECONCILE_COLUMNS, 3)?;
    rdr.records()
        .map(|row| {
            let row = row.with_context(|| format!("{name}: unreadable CSV"))?;
            let [settlement_id, medfee_sumamt, fund_pay_sumamt] = pick(&row, &positions);
            Ok(proto::ReconcileEntry {
                settlement_id,
                medfee_sumamt,
                fund_pay_sumamt,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn raw(cols: [&str; 6]) -> [String; 6] {
        cols.map(str::to_owned)
    }

    #[test]
    fn empty_amounts_are_computed_half_up_to_the_fen() {
        let l = fee_line("t", raw(["1", "X", "3", "3.335", "", ""])).unwrap_err();
        assert!(l.message().contains("unit_price (t)"), "{l:?}");
        let l = fee_line("t", raw(["1", "X", "0.5", "0.05", "", ""])).unwrap();
        assert_eq!(l.amount, "0.03");
        let l = fee_line("t", raw(["1", "X", "3", "2.50", "", "2026-03-10"])).unwrap();
        assert_eq!(
            (l.amount.as_str(), l.service_date.as_str()),
            ("7.50", "2026-03-10")
        );
        // A given amount goes to the node untouched: the node is the judge.
        let l = fee_line("t", raw(["1", "X", "3", "2.50", "9.99", ""])).unwrap();
        assert_eq!(l.amount, "9.99");
    }

    #[test]
    fn bad_quantity_names_the_column_and_the_line() {
        let e = fee_line("fees.csv line 3", raw(["1", "X", "-1", "2.00", "", ""])).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("quantity (fees.csv line 3)"), "{e:?}");
    }

    #[test]
    fn csv_and_json_fee_files_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("fees.csv");
        std::fs::write(
            &csv,
            "line_no,item_code,quantity,unit_price,amount\n1,NB-A,1,10000.00,\n2,NB-B,4,500.00,2000.00\n",
        )
        .unwrap();
        let js = dir.path().join("fees.json");
        std::fs::write(
            &js,
            r#"[{"line_no":"1","item_code":"NB-A","quantity":1,"unit_price":"10000.00"},
                {"line_no":"2","item_code":"NB-B","quantity":"4","unit_price":"500.00","amount":"2000.00"}]"#,
        )
        .unwrap();
        let a = read_fees(&csv).unwrap();
        assert_eq!(a, read_fees(&js).unwrap());
        assert_eq!(a[0].amount, "10000.00");
    }

    #[test]
    fn misspelt_or_missing_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fees.csv");
        std::fs::write(&f, "line_no,item_code,qty,unit_price\n1,A,1,1.00\n").unwrap();
        let e = read_fees(&f).unwrap_err().to_string();
        assert!(e.contains("unknown column \"qty\""), "{e}");
        std::fs::write(&f, "line_no,item_code,unit_price\n1,A,1.00\n").unwrap();
        let e = read_fees(&f).unwrap_err().to_string();
        assert!(e.contains("missing column quantity"), "{e}");
        let j = dir.path().join("fees.json");
        std::fs::write(&j, r#"[{"line_no":"1","item":"A"}]"#).unwrap();
        let e = read_fees(&j).unwrap_err().to_string();
        assert!(e.contains("unknown key \"item\""), "{e}");
    }
}

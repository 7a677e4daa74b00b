//! Bulk CSV import for `yidi admin person|catalogue|institution import`.
//!
//! The file is streamed, never loaded whole: rows are cut into batches (default 1000)
//! sent with `ImportPersons` / `ImportCatalogue`. Each batch's request id is derived
//! from the file's SHA-256, the batch size and the batch's index, so re-running an
//! interrupted or finished import sends the very same requests: batches the node already
//! committed are answered from its idempotency record (nothing is written twice) and
//! the rest are imported. Institutions have no bulk call, so their file is applied one
//! `UpsertInstitution` per row with the same reporting. Values are validated by the
//! node, so every client gets the same per-row errors; the client only maps columns.
//!
//! Exit codes: 0 when every row was accepted, 2 when the import finished but some
//! rows were rejected (they are listed, and written to `--errors FILE`), 1 when the
//! import could not finish (unreadable file, node unreachable after retries, …).

use std::{
    fs::File,
    io::{IsTerminal, Read},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};
use yidi_common::{
    proto::{self, RowError},
    types::{AgreementStatus, HospitalLevel, InstitutionKind},
};

use super::{
    admin::{Client, Globals},
    output,
};

/// Flags of the `import` subcommands.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// CSV file with a header line; columns are named like the fields (docs/admin.md).
    pub file: PathBuf,
    /// Rows per request. Changing it between runs of the same file starts a new import
    /// instead of resuming the previous one (rows then count as unchanged). Each batch's
    /// request id is `<prefix>-<n>`: the prefix is --request-id, else derived from the
    /// file's digest, so that running the same file again resumes it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Also write rejected rows to this CSV file (columns: row, field, reason).
    #[arg(long)]
    pub errors: Option<PathBuf>,
}

/// What a bulk import sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Persons,
    Catalogue,
}

pub(super) const PERSON_COLUMNS: &[&str] = &[
    "id_number",
    "name",
    "card_no",
    "insurance_type",
    "person_type",
    "civil_servant",
    "status",
    "account_balance",
    "enrolled_since",
];
/// Also the columns of `catalogue list`: the table reads like the file.
pub(crate) const CATALOGUE_COLUMNS: &[&str] = &[
    "code",
    "name",
    "category",
    "class",
    "first_selfpay_ratio",
    "price_cap",
    "unit",
    "valid_from",
    "valid_to",
    "free_of_charge",
];
/// Also the columns of `institution list`.
pub(crate) const INSTITUTION_COLUMNS: &[&str] = &[
    "code",
    "name",
    "kind",
    "level",
    "agreement_status",
    "agreement_from",
    "agreement_to",
];

impl Target {
    fn one(self) -> &'static str {
        match self {
            Target::Persons => "person",
            Target::Catalogue => "catalogue item",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Target::Persons => "persons",
            Target::Catalogue => "catalogue items",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Target::Persons => PERSON_COLUMNS,
            Target::Catalogue => CATALOGUE_COLUMNS,
        }
    }

    async fn send(
        self,
        client: &mut Client,
        request_id: String,
        batch: &[Line],
        cols: &Columns,
    ) -> Result<proto::ImportResult, Status> {
        let answer = match self {
            Target::Persons => {
                let rows = batch.iter().map(|l| cols.person_row(l)).collect();
                client
                    .import_persons(proto::ImportPersonsRequest { request_id, rows })
                    .await?
            }
            Target::Catalogue => {
                let rows = batch
                    .iter()
                    .map(|l| proto::CatalogueRow {
                        row: l.line,
                        code: cols.get(l, "code"),
                        name: cols.get(l, "name"),
                        category: cols.get(l, "category"),
                        class: cols.get(l, "class"),
                        first_selfpay_ratio: cols.get(l, "first_selfpay_ratio"),
                        price_cap: cols.get(l, "price_cap"),
                        unit: cols.get(l, "unit"),
                        valid_from: cols.get(l, "valid_from"),
                        valid_to: cols.get(l, "valid_to"),
                        free_of_charge: cols.get(l, "free_of_charge"),
                    })
                    .collect();
                client
                    .import_catalogue(proto::ImportCatalogueRequest { request_id, rows })
                    .await?
            }
        };
        Ok(answer.into_inner())
    }
}

/// One data record and the line it starts on (the header is line 1).
#[derive(Debug)]
pub(super) struct Line {
    pub(super) line: u64,
    record: csv::StringRecord,
}

/// Where each known column sits in the file. Columns may come in any order; a
/// missing optional column reads as empty, and an unknown one is refused up front so
/// that a misspelt header cannot silently drop a field from every row.
#[derive(Debug)]
pub(super) struct Columns {
    /// Known column → field position. A short list searched in order: cheaper than
    /// hashing the name for every field of millions of rows.
    index: Vec<(&'static str, usize)>,
    width: usize,
}

impl Columns {
    pub(super) fn from_header(
        header: &csv::StringRecord,
        known: &'static [&'static str],
        file: &Path,
    ) -> anyhow::Result<Self> {
        let mut index: Vec<(&'static str, usize)> = Vec::new();
        for (i, raw) in header.iter().enumerate() {
            let name = raw
                .trim_start_matches('\u{feff}')
                .trim()
                .to_ascii_lowercase();
            let Some(col) = known.iter().find(|k| **k == name) else {
                bail!(
                    "{}: unknown column {name:?} in the header; expected columns: {}",
                    file.display(),
                    known.join(",")
                );
            };
            if index.iter().any(|(c, _)| c == col) {
                bail!(
                    "{}: column {name:?} appears twice in the header",
                    file.display()
                );
            }
            index.push((*col, i));
        }
        // The key identifies the record; without it no row can be imported.
        let key = known[0];
        if !index.iter().any(|(c, _)| *c == key) {
            bail!(
                "{}: the header has no {key:?} column; expected columns: {}",
                file.display(),
                known.join(",")
            );
        }
        Ok(Self {
            index,
            width: header.len(),
        })
    }

    fn get(&self, line: &Line, column: &str) -> String {
        self.index
            .iter()
            .find(|(c, _)| *c == column)
            .and_then(|(_, i)| line.record.get(*i))
            .unwrap_or_default()
            .to_owned()
    }

    /// A line of the persons file as the row ImportPersons takes.
    pub(super) fn person_row(&self, l: &Line) -> proto::PersonRow {
        proto::PersonRow {
            row: l.line,
            id_number: self.get(l, "id_number"),
            name: self.get(l, "name"),
            card_no: self.get(l, "card_no"),
            insurance_type: self.get(l, "insurance_type"),
            person_type: self.get(l, "person_type"),
            civil_servant: self.get(l, "civil_servant"),
            status: self.get(l, "status"),
            account_balance: self.get(l, "account_balance"),
            enrolled_since: self.get(l, "enrolled_since"),
        }
    }

    /// A row with the wrong number of fields is reported rather than guessed at.
    pub(super) fn check_width(&self, line: &Line) -> Option<RowError> {
        (line.record.len() != self.width).then(|| RowError {
            row: line.line,
            field: String::new(),
            reason: format!(
                "expected {} fields like the header, got {}",
                self.width,
                line.record.len()
            ),
        })
    }
}

/// The first line of each key (ID number or code) in the file. A key on a second line
/// is refused as a row error naming both lines: otherwise the last row would silently
/// win, and every later run of the file would write both rows again (each "updated").
/// The key column is the first known column; ID numbers compare with an upper-case X,
/// as the node stores them. Held for the whole file, as batches may split the repeat.
pub(super) struct FirstLines {
    column: &'static str,
    what: &'static str,
    upper: bool,
    seen: std::collections::HashMap<String, u64>,
}

impl FirstLines {
    pub(super) fn new(known: &'static [&'static str], what: &'static str) -> Self {
        Self {
            column: known[0],
            what,
            upper: known[0] == "id_number",
            seen: std::collections::HashMap::new(),
        }
    }

    /// The row error of a line whose key an earlier line has; records a new key.
    pub(super) fn check(&mut self, line: &Line, cols: &Columns) -> Option<RowError> {
        let raw = cols.get(line, self.column);
        if raw.is_empty() {
            // The node names the missing key.
            return None;
        }
        let key = if self.upper {
            raw.to_ascii_uppercase()
        } else {
            raw
        };
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => Some(RowError {
                row: line.line,
                field: self.column.to_owned(),
                reason: yidi_node::records::repeated_reason(first.key(), *first.get(), self.what),
            }),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(line.line);
                None
            }
        }
    }
}

/// First 16 hex digits of the file's SHA-256: the import's identity.
fn file_digest(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize())[..16].to_owned())
}

pub(super) fn open_csv(path: &Path) -> anyhow::Result<csv::Reader<File>> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Reads the next record; a record that is not valid UTF-8 becomes a row error so that
/// one bad line does not stop the import, while an I/O error does.
pub(super) fn next_line(
    reader: &mut csv::Reader<File>,
    errors: &mut Vec<RowError>,
) -> anyhow::Result<Option<Line>> {
    loop {
        let mut record = csv::StringRecord::new();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(None),
            Ok(true) => {
                let line = record.position().map_or(0, csv::Position::line);
                return Ok(Some(Line { line, record }));
            }
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => errors.push(RowError {
                row: e.position().map_or(0, csv::Position::line),
                field: String::new(),
                reason: "the line is not valid UTF-8 (save the file as UTF-8)".to_owned(),
            }),
            Err(e) => return Err(e).context("cannot read the CSV file"),
        }
    }
}

/// Running totals, the progress bar and the final report of one import.
pub(super) struct Report {
    noun: &'static str,
    file: PathBuf,
    started: Instant,
    rows: u64,
    requests: u64,
    pub(super) result: proto::ImportResult,
    /// Rows of batches an earlier run already imported (replayed answers).
    replayed: u64,
    pub(super) bar: ProgressBar,
    /// How long each step took, for a load (`yidi load-persons`): printed after the
    /// summary and under `phases` in JSON.
    pub(super) phases: Vec<(&'static str, Duration)>,
}

impl Report {
    pub(super) fn new(noun: &'static str, file: &Path, json: bool) -> Self {
        let len = std::fs::metadata(file).map_or(0, |m| m.len());
        // Progress goes to stderr; keep it off when stdout is machine-read or nobody
        // watches, so logs and pipes stay clean.
        let bar = if json || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        ) {
            bar.set_style(style);
        }
        Self {
            noun,
            file: file.to_owned(),
            started: Instant::now(),
            rows: 0,
            requests: 0,
            result: proto::ImportResult::default(),
            replayed: 0,
            bar,
            phases: Vec::new(),
        }
    }

    fn add(&mut self, rows: u64, r: proto::ImportResult, byte: u64) {
        self.requests += 1;
        if r.replayed {
            // Imported by an earlier run of this file: nothing was written now.
            self.replayed += r.inserted + r.updated + r.unchanged;
        } else {
            self.result.inserted += r.inserted;
            self.result.updated += r.updated;
            self.result.unchanged += r.unchanged;
        }
        self.read(rows, r.errors, byte);
    }

    /// When the import began.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Counts rows read up to `byte` of the file and the rows rejected among them.
    pub(super) fn read(&mut self, rows: u64, errors: Vec<RowError>, byte: u64) {
        self.rows += rows;
        self.result.errors.extend(errors);
        self.bar.set_position(byte);
        self.bar.set_message(format!(
            "{} rows, {} rejected",
            self.rows,
            self.result.errors.len()
        ));
    }

    /// Prints the summary and the rejected rows, writes `--errors`, and returns the
    /// exit code (0 all accepted, 2 some rejected).
    pub(super) fn finish(mut self, json: bool, errors_file: Option<&Path>) -> anyhow::Result<i32> {
        self.bar.finish_and_clear();
        let elapsed = self.started.elapsed();
        let millis = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let per_second = self.rows.saturating_mul(1000) / millis;
        self.result
            .errors
            .sort_by(|a, b| (a.row, &a.field).cmp(&(b.row, &b.field)));
        let r = &self.result;
        if let Some(path) = errors_file {
            write_errors(path, &r.errors)?;
        }
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .map(|(name, d)| ((*name).to_owned(), json!(d.as_millis() as u64)))
            .collect();
        if json {
            output::print_json(&json!({
                "file": self.file.display().to_string(),
                "rows": self.rows,
                "requests": self.requests,
                "inserted": r.inserted,
                "updated": r.updated,
                "unchanged": r.unchanged,
                "already_imported": self.replayed,
                "rejected": r.errors.len(),
                "errors": r.errors.iter().map(|e| json!({"row": e.row, "field": e.field, "reason": e.reason})).collect::<Vec<_>>(),
                "elapsed_ms": millis,
                "rows_per_second": per_second,
                "phases_ms": phases,
            }));
        } else {
            if !r.errors.is_empty() {
                let mut t = output::table();
                t.set_header(["row", "field", "reason"]);
                for e in &r.errors {
                    t.add_row([e.row.to_string(), e.field.clone(), e.reason.clone()]);
                }
                output::emit(format_args!("{t}"));
            }
            output::emit(format_args!(
                "{}: {} rows of {} in {:.1?} ({per_second} rows/s): {} inserted, {} updated, {} unchanged, {} rejected{}",
                self.file.display(),
                self.rows,
                self.noun,
                elapsed,
                r.inserted,
                r.updated,
                r.unchanged,
                r.errors.len(),
                if self.replayed > 0 {
                    format!(
                        "; {} rows already imported by an earlier run (nothing written)",
                        self.replayed
                    )
                } else {
                    String::new()
                },
            ));
            if !self.phases.is_empty() {
                let steps: Vec<String> = self
                    .phases
                    .iter()
                    .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
                    .collect();
                output::emit(format_args!("time: {}", steps.join(", ")));
            }
            if let Some(path) = errors_file {
                output::emit(format_args!("rejected rows written to {}", path.display()));
            }
        }
        Ok(if r.errors.is_empty() { 0 } else { 2 })
    }
}

fn write_errors(path: &Path, errors: &[RowError]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    w.write_record(["row", "field", "reason"])?;
    for e in errors {
        w.write_record([e.row.to_string().as_str(), &e.field, &e.reason])?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Whether a failed call may succeed if sent again: the node unreachable, restarting
/// or busy.
fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Aborted) || output::is_connection_lost(s)
}

/// Retries a call that failed with a transient status (the node restarting, a busy
/// store). Safe only because every retried call carries the same request id.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(s) if transient(&s) && attempt < 6 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The request id prefix of an import: `--request-id`, or `import-<digest>-<batch size>`.
fn id_prefix(g: &Globals, kind: &str, digest: &str, batch_size: u32) -> String {
    g.request_id
        .clone()
        .unwrap_or_else(|| format!("{kind}-{digest}-{batch_size}"))
}

/// Imports a persons or catalogue CSV file in batches.
pub async fn run(
    client: &mut Client,
    g: &Globals,
    target: Target,
    args: ImportArgs,
) -> anyhow::Result<i32> {
    let digest = file_digest(&args.file)?;
    let prefix = id_prefix(g, "import", &digest, args.batch_size);
    let mut reader = open_csv(&args.file)?;
    let header = reader
        .headers()
        .context("cannot read the CSV header")?
        .clone();
    let cols = Columns::from_header(&header, target.columns(), &args.file)?;
    let mut first_lines = FirstLines::new(target.columns(), target.one());
    let mut report = Report::new(target.noun(), &args.file, g.json);
    let batch_size = args.batch_size as usize;
    let mut batch: Vec<Line> = Vec::with_capacity(batch_size);
    let mut index = 0u64;
    loop {
        let mut local_errors = Vec::new();
        let next = next_line(&mut reader, &mut local_errors)?;
        report.result.errors.extend(local_errors);
        let done = next.is_none();
        if let Some(line) = next {
            match cols
                .check_width(&line)
                .or_else(|| first_lines.check(&line, &cols))
            {
                Some(e) => report.result.errors.push(e),
                None => batch.push(line),
            }
        }
        if batch.len() == batch_size || (done && !batch.is_empty()) {
            let request_id = format!("{prefix}-{index}");
            let result = with_retries(|| {
                let mut c = client.clone();
                let id = request_id.clone();
                let batch = &batch;
                let cols = &cols;
                async move { target.send(&mut c, id, batch, cols).await }
            })
            .await
            .map_err(|s| anyhow::Error::new(s).context(format!(
                "batch {index} (lines {}–{}) failed; batches before it are imported, re-run the same command to resume",
                batch.first().map_or(0, |l| l.line),
                batch.last().map_or(0, |l| l.line),
            )))?;
            report.add(batch.len() as u64, result, reader.position().byte());
            batch.clear();
            index += 1;
        }
        if done {
            break;
        }
    }
    report.finish(g.json, args.errors.as_deref())
}

/// Parses an enum column of the institutions file into its wire value, or the row
/// error naming the column.
fn enum_field<T>(
    value: &str,
    field: &str,
    row: u64,
    parse: fn(&str, &str) -> yidi_common::Result<T>,
    wire: fn(T) -> i32,
) -> Result<i32, RowError> {
    parse(value, field)
        .map(wire)
        .map_err(|e| row_error(row, field, e))
}

fn row_error(row: u64, field: &str, e: yidi_common::Error) -> RowError {
    let reason = match e {
        yidi_common::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    };
    RowError {
        row,
        field: field.to_owned(),
        reason,
    }
}

/// Turns a node's refusal of one row into a row error: INVALID_ARGUMENT messages have
/// the form `invalid <field>: <reason>`, so the field can be shown in its own column.
fn status_row_error(row: u64, s: &Status) -> RowError {
    let parsed = (s.code() == Code::InvalidArgument)
        .then(|| s.message().strip_prefix("invalid ")?.split_once(": "))
        .flatten();
    match parsed {
        Some((field, reason)) if !field.contains(' ') => RowError {
            row,
            field: field.to_owned(),
            reason: reason.to_owned(),
        },
        _ => RowError {
            row,
            field: String::new(),
            reason: output::status_line(s),
        },
    }
}

/// The institution a row describes, or the row error of its first bad enum column.
fn institution_of(line: &Line, cols: &Columns) -> Result<proto::Institution, RowError> {
    let row = line.line;
    let level = match cols.get(line, "level") {
        // Pharmacies and ungraded clinics may leave the level empty.
        s if s.is_empty() => HospitalLevel::Ungraded.to_proto(),
        s => enum_field(
            &s,
            "level",
            row,
            HospitalLevel::parse,
            HospitalLevel::to_proto,
        )?,
    };
    Ok(proto::Institution {
        code: cols.get(line, "code"),
        name: cols.get(line, "name"),
        kind: enum_field(
            &cols.get(line, "kind"),
            "kind",
            row,
            InstitutionKind::parse,
            InstitutionKind::to_proto,
        )?,
        level,
        agreement_status: enum_field(
            &cols.get(line, "agreement_status"),
            "agreement_status",
            row,
            AgreementStatus::parse,
            AgreementStatus::to_proto,
        )?,
        agreement_from: cols.get(line, "agreement_from"),
        agreement_to: cols.get(line, "agreement_to"),
    })
}

/// Applies one institution row: reads the stored record first so that an identical row
/// is `unchanged` and writes nothing, and the summary tells inserts from updates.
async fn upsert_institution(
    client: &mut Client,
    request_id: String,
    inst: proto::Institution,
) -> Result<proto::ImportResult, Status> {
    let get = proto::GetInstitutionRequest {
        code: inst.code.clone(),
    };
    let stored = match client.get_institution(get).await {
        Ok(r) => Some(r.into_inner()),
        // An invalid code is reported by the upsert below with the node's own message.
        Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => None,
        Err(s) => return Err(s),
    };
    let mut result = proto::ImportResult::default();
    if stored.as_ref() == Some(&inst) {
        result.unchanged = 1;
        return Ok(result);
    }
    let req = proto::UpsertInstitutionRequest {
        request_id,
        institution: Some(inst),
    };
    client.upsert_institution(req).await?;
    if stored.is_some() {
        result.updated = 1;
    } else {
        result.inserted = 1;
    }
    Ok(result)
}

/// Imports an institutions CSV file, one `UpsertInstitution` per row with request id
/// `inst-<file digest>-<line>`.
pub async fn run_institutions(
    client: &mut Client,
    g: &Globals,
    args: ImportArgs,
) -> anyhow::Result<i32> {
    let digest = file_digest(&args.file)?;
    let prefix = g
        .request_id
        .clone()
        .unwrap_or_else(|| format!("inst-{digest}"));
    let mut reader = open_csv(&args.file)?;
    let header = reader
        .headers()
        .context("cannot read the CSV header")?
        .clone();
    let cols = Columns::from_header(&header, INSTITUTION_COLUMNS, &args.file)?;
    let mut first_lines = FirstLines::new(INSTITUTION_COLUMNS, "institution");
    let mut report = Report::new("institutions", &args.file, g.json);
    loop {
        let mut errors = Vec::new();
        let next = next_line(&mut reader, &mut errors)?;
        report.result.errors.append(&mut errors);
        let Some(line) = next else { break };
        let inst = match cols
            .check_width(&line)
            .or_else(|| first_lines.check(&line, &cols))
            .map_or_else(|| institution_of(&line, &cols), Err)
        {
            Ok(inst) => inst,
            Err(e) => {
                report.result.errors.push(e);
                continue;
            }
        };
        let request_id = format!("{prefix}-{}", line.line);
        let outcome = with_retries(|| {
            let mut c = client.clone();
            let (id, inst) = (request_id.clone(), inst.clone());
            async move { upsert_institution(&mut c, id, inst).await }
        })
        .await;
        let result = match outcome {
            Ok(r) => r,
            Err(s) if transient(&s) || s.code() == Code::Internal => {
                return Err(anyhow::Error::new(s).context(format!(
                    "line {} failed; the lines before it are imported, re-run the same command to resume",
                    line.line
                )));
            }
            Err(s) => proto::ImportResult {
                errors: vec![status_row_error(line.line, &s)],
                ..Default::default()
            },
        };
        report.add(1, result, reader.position().byte());
    }
    report.finish(g.json, args.errors.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_mapping_refuses_unknown_and_needs_the_key() {
        let path = Path::new("x.csv");
        let ok = csv::StringRecord::from(vec!["\u{feff}Name", "id_number"]);
        let cols = Columns::from_header(&ok, PERSON_COLUMNS, path).unwrap();
        let line = Line {
            line: 2,
            record: csv::StringRecord::from(vec!["张三", "330106198002290011"]),
        };
        assert_eq!(cols.get(&line, "id_number"), "330106198002290011");
        assert_eq!(cols.get(&line, "card_no"), "");
        let typo = csv::StringRecord::from(vec!["id_number", "nmae"]);
        let e = Columns::from_header(&typo, PERSON_COLUMNS, path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nmae"), "{e}");
        let keyless = csv::StringRecord::from(vec!["name"]);
        assert!(Columns::from_header(&keyless, PERSON_COLUMNS, path).is_err());
    }

    #[test]
    fn node_refusals_become_row_errors_with_their_field() {
        let e = status_row_error(
            7,
            &Status::invalid_argument("invalid agreement_to: before agreement_from"),
        );
        assert_eq!(
            (e.row, e.field.as_str(), e.reason.as_str()),
            (7, "agreement_to", "before agreement_from")
        );
        let e = status_row_error(8, &Status::failed_precondition("nope"));
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("", "FAILED_PRECONDITION: nope")
        );
    }

    #[test]
    fn institution_rows_name_the_bad_column() {
        let header = csv::StringRecord::from(INSTITUTION_COLUMNS.to_vec());
        let cols = Columns::from_header(&header, INSTITUTION_COLUMNS, Path::new("i.csv")).unwrap();
        let line = Line {
            line: 3,
            record: csv::StringRecord::from(vec![
                "P1",
                "药房",
                "pharmacy",
                "",
                "paused",
                "2026-01-01",
                "",
            ]),
        };
        let e = institution_of(&line, &cols).unwrap_err();
        assert_eq!((e.row, e.field.as_str()), (3, "agreement_status"));
    }
}

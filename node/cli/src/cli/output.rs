//! How the command-line clients print AdminService answers: each wire type describes
//! itself once as a list of named fields ([`Record`]), and that one list yields the
//! `--json` object, the vertical table of a single record and the columns of a list
//! table. prost types do not derive `Serialize`; describing fields by hand also lets
//! enums print as their stable names and policy documents as JSON rather than strings.

use std::fmt::Display;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
use serde_json::{Map, Value, json};
use yidi_common::{proto, types};

/// One printed value.
#[derive(Debug, Clone)]
pub enum Field {
    /// Left-aligned text; a JSON string.
    Text(String),
    /// A decimal string (money, ratio): right-aligned, still a JSON string so that no
    /// JSON reader turns yuan into floating point.
    Num(String),
    /// A count: right-aligned, a JSON number.
    Int(u64),
    Bool(bool),
    List(Vec<String>),
    /// A nested document (a policy): printed below the table, embedded in JSON.
    Doc(Value),
    /// Nested records (an outbox's targets): a sub-table below the table, a JSON array.
    Records(Nested),
}

/// Records nested in another, kept with the columns to show them under.
#[derive(Debug, Clone)]
pub struct Nested {
    columns: &'static [&'static str],
    rows: Vec<Vec<(&'static str, Field)>>,
}

/// Nests a list of records as one field of their parent.
fn nested<R: Record>(items: &[R]) -> Field {
    Field::Records(Nested {
        columns: R::LIST_COLUMNS,
        rows: items.iter().map(Record::fields).collect(),
    })
}

fn object(fields: Vec<(&'static str, Field)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_json()))
            .collect(),
    )
}

/// A table of `columns` picked out of each row's fields.
fn rows_table(columns: &[&str], rows: &[Vec<(&'static str, Field)>]) -> Table {
    let mut t = table();
    t.set_header(columns.iter().copied());
    for fields in rows {
        t.add_row(columns.iter().map(|col| {
            fields
                .iter()
                .find(|(k, _)| k == col)
                .map_or_else(|| comfy_table::Cell::new(""), |(_, v)| v.cell())
        }));
    }
    t
}

impl Field {
    fn to_json(&self) -> Value {
        match self {
            Field::Text(s) | Field::Num(s) => Value::String(s.clone()),
            Field::Int(n) => json!(n),
            Field::Bool(b) => json!(b),
            Field::List(v) => json!(v),
            Field::Doc(v) => v.clone(),
            Field::Records(n) => n.rows.iter().cloned().map(object).collect(),
        }
    }

    fn cell(&self) -> comfy_table::Cell {
        let (text, right) = match self {
            Field::Text(s) => (s.clone(), false),
            Field::Num(s) => (s.clone(), true),
            Field::Int(n) => (n.to_string(), true),
            Field::Bool(b) => (if *b { "yes" } else { "no" }.to_owned(), false),
            Field::List(v) => (v.join(", "), false),
            Field::Doc(v) => (v.to_string(), false),
            Field::Records(n) => (format!("{} rows", n.rows.len()), false),
        };
        let cell = comfy_table::Cell::new(text);
        if right {
            cell.set_alignment(CellAlignment::Right)
        } else {
            cell
        }
    }
}

/// A wire type the CLI prints.
pub trait Record {
    /// Key of the array when a list of these is printed as JSON, e.g. `persons`.
    const PLURAL: &'static str;
    /// Columns of a list table: a subset of [`Record::fields`] that fits a terminal.
    const LIST_COLUMNS: &'static [&'static str];
    /// Every field in display order.
    fn fields(&self) -> Vec<(&'static str, Field)>;
}

/// A text field.
#[must_use]
pub fn text(s: &str) -> Field {
    Field::Text(s.to_owned())
}

/// An amount or other number given as text, right-aligned in tables.
#[must_use]
pub fn num(s: &str) -> Field {
    Field::Num(s.to_owned())
}

/// A proto enum as its stable name ("employee", "level3"); UNSPECIFIED prints empty.
pub fn name<T: Display>(parsed: yidi_common::Result<T>) -> Field {
    Field::Text(parsed.map(|v| v.to_string()).unwrap_or_default())
}

/// Prints records as a table with a count footer, or as `{"<plural>": [...]}`.
pub fn print_rows<R: Record + Clone>(items: &[R], as_json: bool) {
    if as_json {
        return print_json(&serde_json::json!({
            R::PLURAL: items.iter().map(to_json).collect::<Vec<_>>(),
        }));
    }
    print_list(
        &Listing {
            items: items.to_vec(),
            next_page_token: String::new(),
            total: None,
        },
        false,
    );
}

impl Record for proto::Person {
    const PLURAL: &'static str = "persons";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "id_number",
        "name",
        "sex",
        "insurance_type",
        "person_type",
        "civil_servant",
        "status",
        "account_balance",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let f = self.fields.clone().unwrap_or_default();
        vec![
            ("id_number", text(&self.id_number)),
            ("name", Field::Text(f.name)),
            ("sex", text(&self.sex)),
            ("birth_date", text(&self.birth_date)),
            ("card_no", Field::Text(f.card_no)),
            (
                "insurance_type",
                name(types::InsuranceType::from_proto(f.insurance_type, "")),
            ),
            (
                "person_type",
                name(types::PersonType::from_proto(f.person_type, "")),
            ),
            ("civil_servant", Field::Bool(f.civil_servant)),
            (
                "status",
                name(types::PersonStatus::from_proto(f.status, "")),
            ),
            ("account_balance", Field::Num(f.account_balance)),
            ("enrolled_since", Field::Text(f.enrolled_since)),
            ("home_region", text(&self.home_region)),
            ("created_at", text(&self.created_at)),
            ("updated_at", text(&self.updated_at)),
        ]
    }
}

impl Record for proto::Filing {
    const PLURAL: &'static str = "filings";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "filing_id",
        "id_number",
        "filing_type",
        "treatment_region",
        "valid_from",
        "valid_to",
        "status",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("filing_id", text(&self.filing_id)),
            ("id_number", text(&self.id_number)),
            (
                "filing_type",
                name(types::FilingType::from_proto(self.filing_type, "")),
            ),
            ("treatment_region", text(&self.treatment_region)),
            ("institutions", Field::List(self.institutions.clone())),
            ("valid_from", text(&self.valid_from)),
            ("valid_to", text(&self.valid_to)),
            (
                "status",
                name(types::FilingStatus::from_proto(self.status, "")),
            ),
            ("note", text(&self.note)),
            ("applied_at", text(&self.applied_at)),
            ("decided_at", text(&self.decided_at)),
        ]
    }
}

impl Record for proto::PolicyVersion {
    const PLURAL: &'static str = "policies";
    const LIST_COLUMNS: &'static [&'static str] = &[
        "region",
        "insurance_type",
        "version",
        "effective_from",
        "published_at",
        "note",
    ];
    fn fields(&self) -> Vec<(&'static str, Field)> {
        // The document is canonical JSON on the wire; embed it as JSON, and fall back to
        // the raw text rather than hide a document this client cannot parse.
        let policy = serde_json::from_str(&self.policy_json)
            .map_or_else(|_| text(&self.policy_json), Field::Doc);
        vec![
            ("region", text(&self.region)),
            (
                "insurance_type",
                name(types::InsuranceType::from_proto(self.insurance_type, "")),
            ),
            ("version", Field::Int(u64::from(self.version))),
            ("effective_from", text(&self.effective_from)),
            ("digest", text(&self.digest)),
            ("published_at", text(&self.published_at)),
            ("note", text(&self.note)),
            ("policy", policy),
        ]
    }
}

impl Record for proto::CatalogueItem {
    const PLURAL: &'static str = "items";
    const LIST_COLUMNS: &'static [&'static str] = super::import::CATALOGUE_COLUMNS;
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("code", text(&self.code)),
            ("name", text(&self.name)),
            (
                "category",
                name(types::ItemCategory::from_proto(self.category, "")),
            ),
            // Upper-case, as the catalogue documents print the class (甲/乙/丙 = A/B/C).
            (
                "class",
                Field::Text(
                    types::CatalogueClass::from_proto(self.class, "")
                        .map(|c| c.as_str().to_ascii_uppercase())
                        .unwrap_or_default(),
                ),
            ),
            (
                "first_selfpay_ratio",
                Field::Num(self.first_selfpay_ratio.clone()),
            ),
            ("price_cap", Field::Num(self.price_cap.clone())),
            ("unit", text(&self.unit)),
            ("valid_from", text(&self.valid_from)),
            ("valid_to", text(&self.valid_to)),
            ("free_of_charge", Field::Bool(self.free_of_charge)),
        ]
    }
}

impl Record for proto::Institution {
    const PLURAL: &'static str = "institutions";
    const LIST_COLUMNS: &'static [&'static str] = super::import::INSTITUTION_COLUMNS;
    fn fields(&self) -> Vec<(&'static str, Field)> {
        vec![
            ("code", text(&self.code)),
            ("name", text(&self.name)),
            (
                "kind",
                name(types::InstitutionKind::from_proto(self.kind, "")),
            ),
            (
                "level",
                name(types::HospitalLevel::from_proto(self.level, "")),
            ),
            (
                "agreement_status",
                name(types::AgreementStatus::from_proto(
                    self.agreement_status,
                    "",
                )),
            ),
            ("agreement_from", text(&self.agreement_from)),
            ("agreement_to", text(&self.agreement_to)),
        ]
    }
}

/// Implements [`Record`] for a message whose fields print as they are: each field is
/// named with its kind — `text`, `num` (decimal string, right-aligned), `int`, `bool` or
/// `records` (a nested list) — in display order.
macro_rules! flat_record {
    (@text $v:expr) => { Field::Text($v.clone()) };
    (@num $v:expr) => { Field::Num($v.clone()) };
    (@int $v:expr) => { Field::Int(u64::from($v)) };
    (@bool $v:expr) => { Field::Bool($v) };
    (@records $v:expr) => { nested(&$v) };
    ($ty:path, $plural:literal, [$($col:literal),* $(,)?], { $($kind:ident $field:ident),* $(,)? }) => {
        impl Record for $ty {
            const PLURAL: &'static str = $plural;
            const LIST_COLUMNS: &'static [&'static str] = &[$($col),*];
            fn fields(&self) -> Vec<(&'static str, Field)> {
                vec![$((stringify!($field), flat_record!(@$kind self.$field))),*]
            }
        }
    };
}

flat_record!(proto::NodeInfo, "nodes", ["region", "name", "version"], {
    text region, text name, text version, int schema_version, int persons, int institutions,
    int catalogue_items, int policies, text started_at,
});

flat_record!(proto::OutboxStatus, "outboxes", ["depth", "oldest"], {
    int depth, text oldest, records targets, records exposure, records items,
});

flat_record!(proto::OutboxTarget, "targets", ["region", "depth", "oldest"], {
    text region, int depth, text oldest,
});

flat_record!(proto::ProvisionalExposure, "exposure", ["region", "amount", "limit"], {
    text region, num amount, num limit,
});

flat_record!(
    proto::OutboxItem,
    "items",
    ["kind", "target_region", "ref_id", "created_at", "attempts", "last_error"],
    { text kind, text target_region, text ref_id, text created_at, int attempts, text last_error }
);

flat_record!(
    proto::Deduction,
    "deductions",
    ["deduction_id", "settlement_id", "institution_code", "home_region", "amount", "period", "reason"],
    {
        text deduction_id, text settlement_id, text institution_code, text home_region, num amount,
        text reason, text created_at, text period,
    }
);

flat_record!(
    proto::ReserveMovement,
    "movements",
    ["entry_id", "home_region", "treatment_region", "kind", "amount", "balance", "alarm"],
    {
        text entry_id, text home_region, text treatment_region, text kind, num amount, num balance,
        bool alarm, text created_at,
    }
);

flat_record!(
    proto::ReserveBalance,
    "reserves",
    ["home_region", "treatment_region", "balance", "alarm_threshold", "alarm"],
    { text home_region, text treatment_region, num balance, num alarm_threshold, bool alarm }
);

flat_record!(
    proto::HospitalStatementResponse,
    "statements",
    ["institution_code", "period", "records", "fund_pay_sumamt", "deductions", "payable"],
    {
        text institution_code, text period, int records, num medfee_sumamt, num fund_pay_sumamt,
        num acct_pay, num deductions, num payable, num cross_region_fund, num local_fund,
    }
);

flat_record!(
    proto::LedgerPosition,
    "positions",
    ["counterparty", "receivable_count", "receivable_sum", "payable_count", "payable_sum", "net", "cleared"],
    {
        text counterparty, int receivable_count, num receivable_sum, int payable_count,
        num payable_sum, num net, int cleared, bool cross_province,
    }
);

flat_record!(proto::GetLedgerResponse, "ledgers", ["period", "net"], {
    text period, num net, records positions,
});

flat_record!(
    proto::ClearingRound,
    "rounds",
    ["round_id", "period", "state", "records", "statement_digest", "confirmed_by"],
    { text round_id, text period, text state, text statement_digest, text confirmed_by, int records }
);

/// The JSON object of one record.
pub fn to_json<R: Record>(record: &R) -> Value {
    object(record.fields())
}

/// A table with the house style: compact UTF-8 borders, wrapped to the terminal.
pub fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// Writes a line to stdout. When the reader has gone away (`yidi … | head`), stops
/// quietly with exit code 0 instead of panicking as `println!` would: the output was cut
/// short by the reader's choice, not by a failure.
pub fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints a JSON value, pretty, on stdout.
pub fn print_json(v: &Value) {
    emit(format_args!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    ));
}

/// Prints one record: a field/value table (nested documents and records follow it), or
/// JSON.
pub fn print_one<R: Record>(record: &R, as_json: bool) {
    if as_json {
        return print_json(&to_json(record));
    }
    let mut t = table();
    t.set_header(["field", "value"]);
    let mut below = Vec::new();
    for (k, v) in record.fields() {
        match v {
            Field::Doc(_) | Field::Records(_) => below.push((k, v)),
            other => {
                t.add_row(vec![comfy_table::Cell::new(k), other.cell()]);
            }
        }
    }
    emit(format_args!("{t}"));
    for (k, v) in below {
        match v {
            Field::Records(n) if n.rows.is_empty() => emit(format_args!("{k}: none")),
            Field::Records(n) => emit(format_args!("{k}:\n{}", rows_table(n.columns, &n.rows))),
            other => {
                emit(format_args!("{k}:"));
                print_json(&other.to_json());
            }
        }
    }
}

/// What a list call returned after paging.
#[derive(Debug)]
pub struct Listing<R> {
    pub items: Vec<R>,
    /// Token to continue after the last printed item; empty when the list is complete.
    pub next_page_token: String,
    /// Total matching the filters, for the calls that report it.
    pub total: Option<u64>,
}

/// Prints a list: a table of [`Record::LIST_COLUMNS`] with a footer line, or JSON
/// `{"<plural>": [...], "next_page_token": "...", "total": n}`.
pub fn print_list<R: Record>(list: &Listing<R>, as_json: bool) {
    if as_json {
        let mut obj = Map::new();
        obj.insert(
            R::PLURAL.to_owned(),
            list.items.iter().map(to_json).collect(),
        );
        obj.insert("next_page_token".to_owned(), json!(list.next_page_token));
        if let Some(total) = list.total {
            obj.insert("total".to_owned(), json!(total));
        }
        return print_json(&Value::Object(obj));
    }
    let rows: Vec<_> = list.items.iter().map(Record::fields).collect();
    emit(format_args!("{}", rows_table(R::LIST_COLUMNS, &rows)));
    let mut footer = format!("{} {}", list.items.len(), R::PLURAL);
    if let Some(total) = list.total {
        footer.push_str(&format!(" of {total}"));
    }
    if !list.next_page_token.is_empty() {
        footer.push_str(&format!(
            "; more with --page-token {} (or --all)",
            list.next_page_token
        ));
    }
    emit(format_args!("{footer}"));
}

/// The canonical upper-case name of a gRPC status code, as grpcurl and the gRPC spec
/// print it (`INVALID_ARGUMENT`), so operators can search for it.
#[must_use]
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// True when a call failed because the connection to the node broke (the node died or
/// restarted mid-call), not because the node answered: tonic reports that as UNKNOWN
/// "transport error", whose source is the transport's error.
#[must_use]
pub fn is_connection_lost(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unknown
        && std::iter::successors(std::error::Error::source(status), |e| e.source())
            .any(|e| e.is::<tonic::transport::Error>())
}

/// `CODE: message` for a status, the form the CLI prints after `error: `. A lost
/// connection is shown as the UNAVAILABLE it is, with its innermost cause.
#[must_use]
pub fn status_line(status: &tonic::Status) -> String {
    if is_connection_lost(status) {
        let cause = std::iter::successors(std::error::Error::source(status), |e| e.source())
            .last()
            .map_or_else(String::new, |e| format!(": {e}"));
        return format!("UNAVAILABLE: lost the connection to the node{cause}");
    }
    format!("{}: {}", code_name(status.code()), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_json_uses_stable_names_and_keeps_money_as_strings() {
        let p = proto::Person {
            id_number: "11010519491231002X".into(),
            fields: Some(proto::PersonFields {
                name: "张三".into(),
                insurance_type: types::InsuranceType::Employee.to_proto(),
                person_type: types::PersonType::Retired.to_proto(),
                status: types::PersonStatus::Active.to_proto(),
                account_balance: "1234.50".into(),
                civil_servant: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_json(&p);
        assert_eq!(v["insurance_type"], "employee");
        assert_eq!(v["person_type"], "retired");
        assert_eq!(v["account_balance"], "1234.50");
        assert_eq!(v["civil_servant"], true);
    }

    fn list_columns_are_fields<R: Record + Default>() {
        let names: Vec<_> = R::default().fields().into_iter().map(|(k, _)| k).collect();
        for col in R::LIST_COLUMNS {
            assert!(
                names.contains(col),
                "{}: list column {col} is not a field",
                R::PLURAL
            );
        }
    }

    #[test]
    fn every_list_column_is_a_field() {
        list_columns_are_fields::<proto::Person>();
        list_columns_are_fields::<proto::Filing>();
        list_columns_are_fields::<proto::PolicyVersion>();
        list_columns_are_fields::<proto::CatalogueItem>();
        list_columns_are_fields::<proto::Institution>();
        list_columns_are_fields::<proto::NodeInfo>();
        list_columns_are_fields::<proto::OutboxStatus>();
        list_columns_are_fields::<proto::OutboxTarget>();
        list_columns_are_fields::<proto::OutboxItem>();
        list_columns_are_fields::<proto::ProvisionalExposure>();
        list_columns_are_fields::<proto::Deduction>();
        list_columns_are_fields::<proto::ReserveMovement>();
        list_columns_are_fields::<proto::ReserveBalance>();
        list_columns_are_fields::<proto::HospitalStatementResponse>();
        list_columns_are_fields::<proto::LedgerPosition>();
        list_columns_are_fields::<proto::GetLedgerResponse>();
        list_columns_are_fields::<proto::ClearingRound>();
    }

    #[test]
    fn nested_records_become_json_arrays() {
        let status = proto::OutboxStatus {
            depth: 2,
            targets: vec![proto::OutboxTarget {
                region: "330200".into(),
                depth: 2,
                oldest: "t".into(),
            }],
            ..Default::default()
        };
        let v = to_json(&status);
        assert_eq!(v["targets"][0]["region"], "330200");
        assert_eq!(v["items"], json!([]));
    }

    #[test]
    fn policy_document_is_embedded_as_json() {
        let p = proto::PolicyVersion {
            policy_json: r#"{"a":1}"#.into(),
            ..Default::default()
        };
        assert_eq!(to_json(&p)["policy"]["a"], 1);
    }

    #[test]
    fn status_lines_use_grpc_code_names() {
        let s = tonic::Status::invalid_argument("invalid id_number: bad");
        assert_eq!(status_line(&s), "INVALID_ARGUMENT: invalid id_number: bad");
    }
}

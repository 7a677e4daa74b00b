//! The size limits of every request a node or the coordinator serves: the longest value
//! each string field may hold and the most elements each repeated field may have. One
//! table, keyed by the field's name on the wire, applied at the entry of every RPC
//! before anything is parsed or stored, so an oversized value is refused with
//! INVALID_ARGUMENT naming the field, the limit and the actual length, and nothing is
//! written. Where the NHSA interface (医保信息平台接口) defines the field, its length is
//! used; docs/integrator.md lists every limit.
//!
//! The check walks the request's wire encoding with the protocol's descriptor set
//! (`proto::FILE_DESCRIPTOR_SET`), so a field added to the protocol is covered as soon as
//! the table names it; a test fails while any string or repeated field of a request is
//! missing from the table.

use std::{collections::HashMap, fmt::Write as _, sync::LazyLock};

use prost::Message;
use yidi_common::proto;

use crate::error::{Error, Result};

// ------------------------------------------------------------------ lengths (characters)

/// Client-chosen request ids. NHSA's `msgid` is 30; 64 leaves room for a UUID (36) with
/// a prefix.
pub const REQUEST_ID: usize = 64;
/// Institution and catalogue codes: the node's code rule (1–32 of `[A-Za-z0-9._-]`);
/// NHSA `fixmedins_code` is 30, `med_list_codg` 50.
pub const CODE: usize = 32;
/// Fee line numbers: the node's rule (1–32); NHSA `feedetl_sn` is 30.
pub const LINE_NO: usize = 32;
/// Region (admin-division) codes: NHSA `admvs` 6.
pub const REGION: usize = 6;
/// Resident ID numbers, as NHSA `certno` (50); the ID number itself is 18.
pub const ID_NUMBER: usize = 50;
/// Card numbers, as NHSA `mdtrt_cert_no` (50); a card number itself is 9–20.
pub const CARD_NO: usize = 50;
/// Ids this network issues for visits, settlements, claims, filings, deductions: NHSA
/// `mdtrt_id` / `setl_id` 30.
pub const RECORD_ID: usize = 30;
/// Ids of ledger entries, clearing rounds and reserve movements.
pub const ENTRY_ID: usize = 64;
/// The hospital's own visit number: the node's rule (1–64); NHSA `ipt_otp_no` is 30.
pub const EXTERNAL_VISIT_NO: usize = 64;
/// Diagnosis codes: NHSA `dise_codg` 30.
pub const DIAGNOSIS_CODE: usize = 30;
/// RFC 3339 timestamps (`2026-03-10T09:00:00.123456789+08:00` is 35).
pub const TIMESTAMP: usize = 40;
/// `YYYY-MM-DD` dates.
pub const DATE: usize = 10;
/// `YYYY-MM` clearing periods.
pub const PERIOD: usize = 7;
/// Decimal strings (amounts, quantities, prices, ratios): NHSA `16,2` to `16,6`
/// numbers, written out with sign and point.
pub const NUMBER: usize = 24;
/// Words of a fixed vocabulary (kinds, sides, states, classes, funds…).
pub const WORD: usize = 32;
/// Person names: NHSA `psn_name` 50.
pub const PERSON_NAME: usize = 50;
/// Names of catalogue items and institutions: NHSA `hilist_name` / `fixmedins_name` 200.
pub const NAME: usize = 200;
/// Units of catalogue items.
pub const UNIT: usize = 16;
/// Free text from people (cancellation reasons, notes, deduction reasons): NHSA `memo`
/// 500. Peers forward these unchanged, so the peer limit is the same.
pub const NOTE: usize = 500;
/// Prose the benefit engine writes (trace lines, line reasons, fund descriptions),
/// forwarded by a treatment node to the home node.
pub const ENGINE_TEXT: usize = 2_000;
/// SHA-256 digests in hex.
pub const DIGEST: usize = 64;
/// Page tokens and list cursors (the last key of the previous page).
pub const PAGE_TOKEN: usize = 128;
/// A benefit policy document (JSON).
pub const POLICY_JSON: usize = 256 * 1024;
/// An archive's manifest (JSON, a few hundred bytes per table).
pub const ARCHIVE_MANIFEST: usize = 64 * 1024;
/// A piece of an archive file sent to the node (`clearing::archive::CHUNK_BYTES`).
pub const ARCHIVE_CHUNK: usize = 1 << 20;

// ------------------------------------------------------------------ counts

/// Fee lines in one UploadFees (and line numbers in one UndoFees).
pub const FEE_LINES: usize = 2_000;
/// Rows in one import batch (ImportPersons, ImportCatalogue).
pub const IMPORT_ROWS: usize = 10_000;
/// Institutions a filing names.
pub const FILING_INSTITUTIONS: usize = 100;
/// Entries of one ReconcileDetail.
pub const RECONCILE_ENTRIES: usize = 100_000;
/// Claims in one CommitClaims: what a treatment node gathers for one home node.
pub const COMMIT_BATCH: usize = 256;
/// Provinces named in one directory request.
pub const PROVINCES: usize = 64;
/// Lists one node or the coordinator sends another (a claim's lines and trace, a
/// statement's rows, record ids to exclude); the request size limit bounds them first.
pub const PEER_LIST: usize = 1_000_000;

/// The longest value of each string field, by field name; `Message.field` entries
/// override the plain name for that message.
const STRINGS: &[(&str, usize)] = &[
    ("request_id", REQUEST_ID),
    ("original_request_id", REQUEST_ID),
    ("institution_code", CODE),
    ("code", CODE),
    ("item_code", CODE),
    ("institutions", CODE),
    ("line_no", LINE_NO),
    ("line_nos", LINE_NO),
    ("home_region", REGION),
    ("card_region", REGION),
    ("treatment_region", REGION),
    ("counterparty", REGION),
    ("region", REGION),
    ("province", REGION),
    ("provinces", REGION),
    ("peer_region", REGION),
    ("from_region", REGION),
    ("to_region", REGION),
    ("payer", REGION),
    ("payee", REGION),
    ("debtor", REGION),
    ("creditor", REGION),
    ("id_number", ID_NUMBER),
    // ListAudit: an ID number or the hash of one.
    ("person", DIGEST),
    ("id_number_hash", DIGEST),
    ("card_no", CARD_NO),
    ("visit_id", RECORD_ID),
    ("settlement_id", RECORD_ID),
    ("claim_id", RECORD_ID),
    ("reversal_id", RECORD_ID),
    ("filing_id", RECORD_ID),
    ("entry_id", ENTRY_ID),
    ("entry_ids", ENTRY_ID),
    ("round_id", ENTRY_ID),
    ("after", ENTRY_ID),
    ("external_visit_no", EXTERNAL_VISIT_NO),
    ("diagnosis_code", DIAGNOSIS_CODE),
    ("admitted_at", TIMESTAMP),
    ("discharged_at", TIMESTAMP),
    ("settled_at", TIMESTAMP),
    ("reversed_at", TIMESTAMP),
    ("created_at", TIMESTAMP),
    ("from", TIMESTAMP),
    ("to", TIMESTAMP),
    ("service_date", DATE),
    ("visit_date", DATE),
    ("settle_date", DATE),
    ("valid_from", DATE),
    ("valid_to", DATE),
    ("from_date", DATE),
    ("to_date", DATE),
    ("on_date", DATE),
    ("effective_from", DATE),
    ("enrolled_since", DATE),
    ("agreement_from", DATE),
    ("agreement_to", DATE),
    ("period", PERIOD),
    ("quantity", NUMBER),
    ("unit_price", NUMBER),
    ("amount", NUMBER),
    ("account_balance", NUMBER),
    ("alarm_threshold", NUMBER),
    ("balance", NUMBER),
    ("price_cap", NUMBER),
    ("first_selfpay_ratio", NUMBER),
    ("pool_ratio", NUMBER),
    ("medfee_sumamt", NUMBER),
    ("fulamt_ownpay_amt", NUMBER),
    ("overlmt_selfpay", NUMBER),
    ("preselfpay_amt", NUMBER),
    ("inscp_scp_amt", NUMBER),
    ("act_pay_dedc", NUMBER),
    ("hifp_pay", NUMBER),
    ("hifmi_pay", NUMBER),
    ("hifob_pay", NUMBER),
    ("cvlserv_pay", NUMBER),
    ("maf_pay", NUMBER),
    ("fund_pay_sumamt", NUMBER),
    ("hosp_part_amt", NUMBER),
    ("psn_part_amt", NUMBER),
    ("acct_pay", NUMBER),
    ("psn_cash_pay", NUMBER),
    ("receivable", NUMBER),
    ("payable", NUMBER),
    ("net", NUMBER),
    ("kind", WORD),
    ("KindSum.sum", NUMBER),
    ("side", WORD),
    ("action", WORD),
    ("category", WORD),
    ("class", WORD),
    ("insurance_type", WORD),
    ("person_type", WORD),
    ("civil_servant", WORD),
    ("status", WORD),
    // ReportPositions: which side of the province boundary a round clears.
    ("scope", WORD),
    ("free_of_charge", WORD),
    ("fund", WORD),
    ("name", PERSON_NAME),
    ("CatalogueItem.name", NAME),
    ("CatalogueRow.name", NAME),
    ("Institution.name", NAME),
    ("item_name", NAME),
    ("unit", UNIT),
    ("reason", NOTE),
    ("note", NOTE),
    ("reference", NOTE),
    ("LineSplit.reason", ENGINE_TEXT),
    ("description", ENGINE_TEXT),
    ("trace", ENGINE_TEXT),
    ("clearing_account", NAME),
    ("digest", DIGEST),
    ("statement_digest", DIGEST),
    ("page_token", PAGE_TOKEN),
    ("policy_json", POLICY_JSON),
    ("sha256", DIGEST),
    ("manifest", ARCHIVE_MANIFEST),
    ("ArchiveChunk.data", ARCHIVE_CHUNK),
];

/// The most elements of each repeated field, by field name (`Message.field` overrides).
const COUNTS: &[(&str, usize)] = &[
    ("UploadFeesRequest.lines", FEE_LINES),
    ("line_nos", FEE_LINES),
    ("rows", IMPORT_ROWS),
    ("institutions", FILING_INSTITUTIONS),
    ("entries", RECONCILE_ENTRIES),
    ("CommitClaimsRequest.claims", COMMIT_BATCH),
    ("lines", PEER_LIST),
    ("trace", PEER_LIST),
    ("funds", PEER_LIST),
    ("entry_ids", PEER_LIST),
    ("nets", PEER_LIST),
    ("instructions", PEER_LIST),
    ("gross", PEER_LIST),
    // A pair's records by ledger kind: a handful of kinds.
    ("kinds", PEER_LIST),
    ("reserves", PEER_LIST),
    // Provinces of the country (34), with room to spare.
    ("known", PROVINCES),
    ("provinces", PROVINCES),
];

/// Repeated fields whose elements the handler checks one by one, so that an element
/// over a limit is reported as that element's error (an import row's) and the others
/// still count: only their number is checked with the request.
const ONE_BY_ONE: &[&str] = &[
    "ImportPersonsRequest.rows",
    "ImportCatalogueRequest.rows",
    "CommitClaimsRequest.claims",
];

/// A request message of the protocol (or an element checked one by one), by its full
/// name in the descriptor set.
pub trait Limited: Message {
    /// `yidi.v1.<Message>`.
    const NAME: &'static str;
}

macro_rules! limited {
    ($($t:ident),+ $(,)?) => {
        $(impl Limited for proto::$t {
            const NAME: &'static str = concat!("yidi.v1.", stringify!($t));
        })+
        /// Every request type of every service, by full name (the coverage test's list).
        pub const REQUESTS: &[&str] = &[$(concat!("yidi.v1.", stringify!($t))),+];
    };
}

limited!(
    PersonRow,
    CatalogueRow,
    AdjustmentRequest,
    ArchiveChunk,
    ArchiveChunkRequest,
    ArchivePeriodRequest,
    RestoreArchiveRequest,
    ApplyFilingRequest,
    CancelSettlementRequest,
    CancelVisitRequest,
    CheckEligibilityRequest,
    ClaimStatusRequest,
    CloseVisitRequest,
    CommitClaimRequest,
    CommitClaimsRequest,
    ConfirmClearingRequest,
    CorrectTransferRequest,
    CreatePersonRequest,
    ExcludeClaimsRequest,
    GetCatalogueItemRequest,
    GetDirectoryRequest,
    GetFilingRequest,
    GetInstitutionRequest,
    GetLedgerRequest,
    GetNodeInfoRequest,
    GetOutboxRequest,
    GetPersonRequest,
    GetPolicyRequest,
    GetSettlementRequest,
    HospitalStatementRequest,
    IdentifyRequest,
    ImportCatalogueRequest,
    ImportPersonsRequest,
    ListAuditRequest,
    ListCatalogueRequest,
    ListClaimIdsRequest,
    ListClearingRoundsRequest,
    ListDeductionsRequest,
    ListFilingsRequest,
    ListInstitutionsRequest,
    ListPersonsRequest,
    ListPoliciesRequest,
    ListReservesRequest,
    ListRoundsRequest,
    ListSettlementsRequest,
    LookupPersonRequest,
    MarkClearedRequest,
    OpenRoundRequest,
    OpenVisitRequest,
    PeerGetPolicyRequest,
    PeriodDigestRequest,
    PublishPolicyRequest,
    ReconcileDetailRequest,
    ReconcileTotalsRequest,
    RecordDeductionRequest,
    RecordReserveRequest,
    RecordTransferRequest,
    ReleaseRoundRequest,
    ReopenVisitRequest,
    ReportPositionsRequest,
    ReverseClaimRequest,
    ReverseRequestRequest,
    ReviewFilingRequest,
    RoundRequest,
    SettleRequest,
    StatementRequest,
    UndoFeesRequest,
    UpdatePersonRequest,
    UpdateVisitRequest,
    UploadFeesRequest,
    UpsertCatalogueItemRequest,
    UpsertInstitutionRequest,
);

/// Refuses `value` of `field` longer than `max` characters.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    // A value cannot have more characters than bytes: only long values are counted.
    if value.len() > max {
        let chars = value.chars().count();
        if chars > max {
            return Err(too_long(field, max, chars));
        }
    }
    Ok(())
}

fn too_long(field: &str, max: usize, chars: usize) -> Error {
    Error::invalid(
        field,
        format!("is {chars} characters long; at most {max} are accepted"),
    )
}

/// Checks every string and repeated field of a request against the table.
pub fn check<M: Limited>(msg: &M) -> Result<()> {
    let bytes = msg.encode_to_vec();
    let protocol = &*PROTOCOL;
    match protocol.by_name.get(M::NAME) {
        Some(&m) => walk(
            &protocol.messages,
            &protocol.messages[m],
            &bytes,
            &mut Vec::new(),
        ),
        None => Err(Error::Internal(format!("no descriptor for {}", M::NAME))),
    }
}

// ------------------------------------------------------------------ the walk

#[derive(Debug)]
enum Kind {
    Text {
        max: usize,
    },
    /// The message type, by index into [`Protocol::messages`].
    Message {
        index: usize,
    },
    Other,
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    /// Elements checked by the handler (see [`ONE_BY_ONE`]), not here.
    one_by_one: bool,
    /// `Some(max)` for a repeated field.
    max_count: Option<usize>,
}

#[derive(Debug, Default)]
struct Schema {
    /// By field number (numbers are small and dense).
    fields: Vec<Option<Field>>,
}

impl Schema {
    fn field(&self, number: u32) -> Option<&Field> {
        self.fields
            .get(usize::try_from(number).ok()?)
            .and_then(Option::as_ref)
    }
}

/// Every message of the protocol with its fields' limits.
#[derive(Debug)]
struct Protocol {
    /// Index into `messages` by full name (`yidi.v1.X`).
    by_name: HashMap<String, usize>,
    messages: Vec<Schema>,
}

static PROTOCOL: LazyLock<Protocol> = LazyLock::new(|| build(&mut Vec::new()));

fn lookup(table: &[(&str, usize)], message: &str, field: &str) -> Option<usize> {
    let qualified = format!("{message}.{field}");
    table
        .iter()
        .find(|(k, _)| *k == qualified)
        .or_else(|| table.iter().find(|(k, _)| *k == field))
        .map(|(_, v)| *v)
}

/// Builds the schema from the descriptor set; fields the tables do not name are pushed
/// to `unnamed` (the coverage test) and get the strictest limit that still decodes
/// (`WORD` characters, no elements beyond `FEE_LINES`).
fn build(unnamed: &mut Vec<String>) -> Protocol {
    use prost_types::field_descriptor_proto::{Label, Type};
    let fds = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let all: Vec<(String, &prost_types::DescriptorProto)> = fds
        .file
        .iter()
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(|m| (format!("{}.{}", file.package(), m.name()), m))
        })
        .collect();
    let by_name: HashMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), i))
        .collect();
    let mut messages = Vec::with_capacity(all.len());
    for (full, m) in &all {
        let mut schema = Schema::default();
        for f in &m.field {
            let repeated = f.label() == Label::Repeated;
            let kind = match f.r#type() {
                Type::String | Type::Bytes => Kind::Text {
                    max: lookup(STRINGS, m.name(), f.name()).unwrap_or_else(|| {
                        unnamed.push(format!("{full}.{} (length)", f.name()));
                        WORD
                    }),
                },
                Type::Message => {
                    match by_name.get(f.type_name().trim_start_matches('.')) {
                        Some(&index) => Kind::Message { index },
                        // A type from outside the protocol (none today): not walked.
                        None => Kind::Other,
                    }
                }
                _ => Kind::Other,
            };
            let max_count = repeated.then(|| {
                lookup(COUNTS, m.name(), f.name()).unwrap_or_else(|| {
                    unnamed.push(format!("{full}.{} (count)", f.name()));
                    FEE_LINES
                })
            });
            let number = usize::try_from(f.number()).unwrap_or_default();
            if schema.fields.len() <= number {
                schema.fields.resize_with(number + 1, || None);
            }
            schema.fields[number] = Some(Field {
                name: f.name().to_owned(),
                kind,
                max_count,
                one_by_one: ONE_BY_ONE.contains(&format!("{}.{}", m.name(), f.name()).as_str()),
            });
        }
        messages.push(schema);
    }
    Protocol { by_name, messages }
}

/// Reads a varint at `*at`; `None` when the bytes end inside it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Where the walk is: the field names (and element indexes) from the request down.
type Path<'s> = Vec<(&'s str, Option<usize>)>;

/// The path as an error names it, e.g. `lines[3].item_code`; built only for an error.
fn render(path: &Path<'_>) -> String {
    let mut out = String::new();
    for (k, (name, index)) in path.iter().enumerate() {
        if k > 0 {
            out.push('.');
        }
        out.push_str(name);
        if let Some(i) = index {
            let _ = write!(out, "[{i}]");
        }
    }
    out
}

/// Walks one encoded message of `schema`; `path` leads to it (empty at the request).
fn walk<'s>(
    all: &'s [Schema],
    schema: &'s Schema,
    bytes: &[u8],
    path: &mut Path<'s>,
) -> Result<()> {
    let malformed = || Error::Internal("a request re-encoded by prost does not parse".into());
    // Elements seen of each repeated field (few fields: a list beats a map).
    let mut counts: Vec<(u32, usize)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at).ok_or_else(malformed)?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed())?;
        match key & 7 {
            0 => {
                varint(bytes, &mut at).ok_or_else(malformed)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at).ok_or_else(malformed)?)
                    .map_err(|_| malformed())?;
                let end = at.checked_add(len).ok_or_else(malformed)?;
                let body = bytes.get(at..end).ok_or_else(malformed)?;
                at = end;
                let Some(field) = schema.field(number) else {
                    continue;
                };
                let index =
                    field
                        .max_count
                        .map(|_| match counts.iter_mut().find(|(n, _)| *n == number) {
                            Some((_, c)) => {
                                *c += 1;
                                *c - 1
                            }
                            None => {
                                counts.push((number, 1));
                                0
                            }
                        });
                match &field.kind {
                    Kind::Text { max } => {
                        if body.len() > *max {
                            let chars = String::from_utf8_lossy(body).chars().count();
                            if chars > *max {
                                path.push((&field.name, index));
                                return Err(too_long(&render(path), *max, chars));
                            }
                        }
                    }
                    Kind::Message { .. } if field.one_by_one => {}
                    Kind::Message { index: inner } => {
                        path.push((&field.name, index));
                        walk(all, &all[*inner], body, path)?;
                        path.pop();
                    }
                    // Packed repeated numbers: bounded by the message size limit.
                    Kind::Other => {}
                }
            }
            _ => return Err(malformed()),
        }
    }
    for (number, n) in counts {
        if let Some(Field {
            name,
            max_count: Some(max),
            ..
        }) = schema.field(number)
            && n > *max
        {
            path.push((name, None));
            return Err(Error::invalid(
                render(path),
                format!("has {n} elements; at most {max} are accepted in one request"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every message a request can contain, by full name.
    fn reachable() -> HashSet<String> {
        let names: HashMap<usize, &String> =
            PROTOCOL.by_name.iter().map(|(n, i)| (*i, n)).collect();
        let mut seen = HashSet::new();
        let mut todo: Vec<usize> = REQUESTS.iter().map(|s| PROTOCOL.by_name[*s]).collect();
        while let Some(m) = todo.pop() {
            if !seen.insert(names[&m].clone()) {
                continue;
            }
            for f in PROTOCOL.messages[m].fields.iter().flatten() {
                if let Kind::Message { index } = &f.kind {
                    todo.push(*index);
                }
            }
        }
        seen
    }

    #[test]
    fn every_request_field_has_a_named_limit() {
        let mut unnamed = Vec::new();
        build(&mut unnamed);
        let reachable = reachable();
        let missing: Vec<&String> = unnamed
            .iter()
            .filter(|f| {
                // `yidi.v1.X.field (length)` → `yidi.v1.X`
                let message = f.rsplit_once('.').map(|(m, _)| m).unwrap_or_default();
                reachable.contains(message)
            })
            .collect();
        assert!(missing.is_empty(), "fields without a limit: {missing:#?}");
    }

    #[test]
    fn every_service_method_takes_a_listed_request() {
        let fds = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        for file in &fds.file {
            for s in &file.service {
                for m in &s.method {
                    let input = m.input_type().trim_start_matches('.');
                    assert!(
                        REQUESTS.contains(&input),
                        "{}.{} takes {input}, which `limited!` does not list",
                        s.name(),
                        m.name()
                    );
                }
            }
        }
    }

    #[test]
    fn a_long_field_is_named_with_its_limit_and_length() {
        let req = proto::OpenVisitRequest {
            request_id: "r-1".into(),
            diagnosis_code: "E".repeat(1 << 20),
            ..Default::default()
        };
        let e = check(&req).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid diagnosis_code: is 1048576 characters long; at most 30 are accepted"
        );
        // Characters, not bytes: 30 Han characters (90 bytes) fit, 31 do not.
        let mut req = proto::CancelSettlementRequest {
            reason: "因".repeat(NOTE),
            ..Default::default()
        };
        check(&req).unwrap();
        req.reason.push('因');
        assert_eq!(
            check(&req).unwrap_err().to_string(),
            "invalid reason: is 501 characters long; at most 500 are accepted"
        );
    }

    #[test]
    fn nested_and_repeated_fields_are_named_by_path() {
        let line = |code: &str| proto::FeeLine {
            line_no: "1".into(),
            item_code: code.into(),
            ..Default::default()
        };
        let mut req = proto::UploadFeesRequest {
            lines: vec![line("A"), line("B"), line(&"C".repeat(33))],
            ..Default::default()
        };
        assert_eq!(
            check(&req).unwrap_err().to_string(),
            "invalid lines[2].item_code: is 33 characters long; at most 32 are accepted"
        );
        req.lines = vec![line("A"); FEE_LINES + 1];
        assert_eq!(
            check(&req).unwrap_err().to_string(),
            "invalid lines: has 2001 elements; at most 2000 are accepted in one request"
        );
        req.lines.pop();
        check(&req).unwrap();
        let claim = proto::CommitClaimRequest {
            split: Some(proto::Split {
                trace: vec!["x".repeat(ENGINE_TEXT + 1)],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            check(&claim).unwrap_err().to_string(),
            "invalid split.trace[0]: is 2001 characters long; at most 2000 are accepted"
        );
    }

    #[test]
    fn import_rows_are_counted_with_the_request_and_checked_one_by_one() {
        let row = |name: &str| proto::PersonRow {
            row: 2,
            name: name.into(),
            ..Default::default()
        };
        let mut req = proto::ImportPersonsRequest {
            request_id: "imp-1".into(),
            rows: vec![row("张三"), row(&"长".repeat(51))],
        };
        check(&req).unwrap();
        assert_eq!(
            check(&req.rows[1]).unwrap_err().to_string(),
            "invalid name: is 51 characters long; at most 50 are accepted"
        );
        req.rows = vec![row("张三"); IMPORT_ROWS + 1];
        assert_eq!(
            check(&req).unwrap_err().to_string(),
            "invalid rows: has 10001 elements; at most 10000 are accepted in one request"
        );
    }

    #[test]
    fn check_len_counts_characters() {
        check_len("note", &"医".repeat(3), 3).unwrap();
        assert_eq!(
            check_len("note", "abcd", 3).unwrap_err().to_string(),
            "invalid note: is 4 characters long; at most 3 are accepted"
        );
    }
}

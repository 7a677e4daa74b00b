//! AdminService: the agency's operators administer their node's own data. Every write is
//! validated completely before it is sent to the writer, runs exactly once per request id,
//! and answers only after it is durable.

use rusqlite::Connection;
use tonic::{Request, Response, Status};
use yidi_common::{
    card,
    digest::sha256_hex,
    idnum::IdNumber,
    money::{self, Sign},
    period::{self, parse_date, parse_date_opt},
    policy::Policy,
    proto::{self, admin_service_server::AdminService},
    region::RegionCode,
    types::{
        AgreementStatus, CatalogueClass, FilingStatus, FilingType, HospitalLevel, InstitutionKind,
        InsuranceType, ItemCategory, PersonStatus,
    },
};

use crate::{
    Error, Result,
    context::{State, page_size},
    idempotency::{self, RequestKey, payload_hash},
    records::{
        filing_to_proto, parse_bool, person_from_fields, person_from_row, person_to_proto,
        repeated_reason, row_error, validate_text,
    },
    store::{
        SCHEMA_VERSION, Upsert,
        catalogue::{self, CatalogueRec},
        filings::{self, FilingRec},
        institutions::{self, InstitutionRec},
        outbox,
        persons::{self, PersonRec},
        policies::{self, PolicyRec},
        settlements,
    },
};

/// Idempotency scope of operator requests.
const SCOPE: &str = "admin";
/// Largest batch a bulk import call accepts.
const MAX_IMPORT_BATCH: usize = crate::limits::IMPORT_ROWS;

/// The AdminService implementation.
pub struct AdminSvc {
    state: State,
}

impl AdminSvc {
    #[must_use]
    pub fn new(state: State) -> Self {
        Self { state }
    }

    /// Runs a write exactly once for `key` and answers after the durable commit.
    async fn once<R, F>(&self, key: RequestKey, effect: F) -> Result<Response<R>, Status>
    where
        R: prost::Message + Default + Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let out = self
            .state
            .store
            .write_as(crate::store::JobKind::Admin, move |conn| {
                idempotency::once(conn, &key, effect)
            })
            .await?;
        Ok(Response::new(out))
    }

    /// Like `once` for bulk imports, marking a replayed batch so that a re-run import
    /// can say it wrote nothing.
    async fn once_import<F>(
        &self,
        key: RequestKey,
        effect: F,
    ) -> Result<Response<proto::ImportResult>, Status>
    where
        F: FnOnce(&Connection) -> Result<proto::ImportResult> + Send + 'static,
    {
        let out = self
            .state
            .store
            .write_as(crate::store::JobKind::Admin, move |conn| {
                if let Some(mut earlier) = idempotency::replay::<proto::ImportResult>(conn, &key)? {
                    earlier.replayed = true;
                    return Ok(earlier);
                }
                idempotency::once(conn, &key, effect)
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn read<R, F>(&self, f: F) -> Result<Response<R>, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        Ok(Response::new(self.state.store.read(f).await?))
    }
}

// ------------------------------------------------------------------ validation

/// Institution and catalogue codes: 1–32 characters of `[A-Za-z0-9._-]`.
fn validate_code(s: &str, field: &str) -> Result<String> {
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1–32 characters of A-Z a-z 0-9 . _ - (got {})",
                yidi_common::error::quoted(s)
            ),
        ));
    }
    Ok(s.to_owned())
}

fn check_date_order(
    from: chrono::NaiveDate,
    to: Option<chrono::NaiveDate>,
    field_to: &str,
    field_from: &str,
) -> Result<()> {
    match to {
        Some(to) if to < from => Err(Error::invalid(
            field_to,
            format!("{to} is before {field_from} {from}"),
        )),
        _ => Ok(()),
    }
}

fn policy_to_proto(region: RegionCode, p: &PolicyRec) -> proto::PolicyVersion {
    proto::PolicyVersion {
        region: region.to_string(),
        insurance_type: p.insurance_type.to_proto(),
        version: p.version,
        effective_from: p.effective_from.to_string(),
        policy_json: p.policy_json.clone(),
        digest: p.digest.clone(),
        published_at: p.published_at.clone(),
        note: p.note.clone(),
        unchanged: false,
    }
}

/// Catalogue fields shared by the single-item and the CSV paths.
struct CatalogueKinds {
    category: ItemCategory,
    class: CatalogueClass,
    free_of_charge: bool,
}

fn build_catalogue(i: &proto::CatalogueItem, kinds: CatalogueKinds) -> Result<CatalogueRec> {
    // The same rule as `yidi quote`'s lines: class B states its ratio, A and C have none.
    let ratio =
        yidi_common::engine::input::class_ratio(kinds.class, Some(i.first_selfpay_ratio.as_str()))?;
    let unit = i.unit.trim();
    crate::limits::check_len("unit", unit, crate::limits::UNIT)?;
    let valid_from = parse_date(i.valid_from.trim(), "valid_from")?;
    let valid_to = parse_date_opt(i.valid_to.trim(), "valid_to")?;
    check_date_order(valid_from, valid_to, "valid_to", "valid_from")?;
    Ok(CatalogueRec {
        code: validate_code(i.code.trim(), "code")?,
        name: validate_text(&i.name, "name", crate::limits::NAME)?,
        category: kinds.category,
        class: kinds.class,
        first_selfpay_ratio: ratio,
        price_cap_fen: money::parse_opt(i.price_cap.trim(), "price_cap", Sign::Positive)?
            .map(money::to_fen),
        unit: unit.to_owned(),
        valid_from,
        valid_to,
        free_of_charge: kinds.free_of_charge,
    })
}

fn catalogue_from_proto(i: Option<&proto::CatalogueItem>) -> Result<CatalogueRec> {
    let i = i.ok_or_else(|| Error::invalid("item", "missing"))?;
    let kinds = CatalogueKinds {
        category: ItemCategory::from_proto(i.category, "item.category")?,
        class: CatalogueClass::from_proto(i.class, "item.class")?,
        free_of_charge: i.free_of_charge,
    };
    build_catalogue(i, kinds)
}

fn catalogue_from_row(r: &proto::CatalogueRow) -> Result<CatalogueRec> {
    let kinds = CatalogueKinds {
        category: ItemCategory::parse(&r.category, "category")?,
        class: CatalogueClass::parse(&r.class, "class")?,
        free_of_charge: parse_bool(&r.free_of_charge, "free_of_charge")?,
    };
    let item = proto::CatalogueItem {
        code: r.code.clone(),
        name: r.name.clone(),
        category: 0,
        class: 0,
        first_selfpay_ratio: r.first_selfpay_ratio.clone(),
        price_cap: r.price_cap.clone(),
        unit: r.unit.clone(),
        valid_from: r.valid_from.clone(),
        valid_to: r.valid_to.clone(),
        free_of_charge: false,
    };
    build_catalogue(&item, kinds)
}

fn catalogue_to_proto(c: &CatalogueRec) -> proto::CatalogueItem {
    proto::CatalogueItem {
        code: c.code.clone(),
        name: c.name.clone(),
        category: c.category.to_proto(),
        class: c.class.to_proto(),
        first_selfpay_ratio: money::format_ratio(c.first_selfpay_ratio),
        price_cap: money::format_opt(c.price_cap_fen.map(money::from_fen)),
        unit: c.unit.clone(),
        valid_from: c.valid_from.to_string(),
        valid_to: c.valid_to.map(|d| d.to_string()).unwrap_or_default(),
        free_of_charge: c.free_of_charge,
    }
}

fn institution_from_proto(i: Option<&proto::Institution>) -> Result<InstitutionRec> {
    let i = i.ok_or_else(|| Error::invalid("institution", "missing"))?;
    let kind = InstitutionKind::from_proto(i.kind, "institution.kind")?;
    let level = match (kind, i.level) {
        (InstitutionKind::Pharmacy, 0) => HospitalLevel::Ungraded,
        (_, l) => HospitalLevel::from_proto(l, "institution.level")?,
    };
    if kind == InstitutionKind::Pharmacy && level != HospitalLevel::Ungraded {
        return Err(Error::invalid(
            "institution.level",
            "a pharmacy has no hospital level; use UNGRADED",
        ));
    }
    let agreement_from = parse_date(&i.agreement_from, "institution.agreement_from")?;
    let agreement_to = parse_date_opt(&i.agreement_to, "institution.agreement_to")?;
    check_date_order(
        agreement_from,
        agreement_to,
        "institution.agreement_to",
        "agreement_from",
    )?;
    Ok(InstitutionRec {
        code: validate_code(&i.code, "institution.code")?,
        name: validate_text(&i.name, "institution.name", crate::limits::NAME)?,
        kind,
        level,
        agreement_status: AgreementStatus::from_proto(
            i.agreement_status,
            "institution.agreement_status",
        )?,
        agreement_from,
        agreement_to,
    })
}

fn institution_to_proto(i: &InstitutionRec) -> proto::Institution {
    proto::Institution {
        code: i.code.clone(),
        name: i.name.clone(),
        kind: i.kind.to_proto(),
        level: i.level.to_proto(),
        agreement_status: i.agreement_status.to_proto(),
        agreement_from: i.agreement_from.to_string(),
        agreement_to: i.agreement_to.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// Refuses, in place, every row whose key (`key` of the raw row) an earlier row of the
/// same request has: otherwise the last row would silently win and every later import
/// of the file would write both rows again.
fn refuse_repeats<R, T>(
    rows: &[R],
    parsed: &mut [(u64, Result<T>)],
    field: &'static str,
    what: &str,
    key: impl Fn(&R) -> String,
) {
    let mut first: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (raw, (row, rec)) in rows.iter().zip(parsed.iter_mut()) {
        let k = key(raw);
        if k.is_empty() {
            continue;
        }
        match first.get(&k) {
            Some(&line) => *rec = Err(Error::invalid(field, repeated_reason(&k, line, what))),
            None => {
                first.insert(k, *row);
            }
        }
    }
}

fn tally(result: &mut proto::ImportResult, u: Upsert) {
    match u {
        Upsert::Inserted => result.inserted += 1,
        Upsert::Updated => result.updated += 1,
        Upsert::Unchanged => result.unchanged += 1,
    }
}

fn check_batch(len: usize) -> Result<()> {
    if len > MAX_IMPORT_BATCH {
        return Err(Error::invalid(
            "rows",
            format!("{len} rows in one batch; send at most {MAX_IMPORT_BATCH}"),
        ));
    }
    Ok(())
}

fn not_found(what: &str, key: &str) -> Error {
    Error::NotFound(format!(
        "no {what} {} here",
        yidi_common::error::quoted(key)
    ))
}

// ------------------------------------------------------------------ the service

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn create_person(
        &self,
        req: Request<proto::CreatePersonRequest>,
    ) -> Result<Response<proto::Person>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "CreatePerson", payload)?;
        let rec = person_from_fields(&req.id_number, req.fields.as_ref(), &self.state.clock)?;
        let region = self.state.region;
        self.once(key, move |conn| {
            persons::insert(conn, &rec, &period::now_rfc3339())?;
            let stored = persons::get(conn, &rec.id_number)?
                .ok_or_else(|| not_found("person", &rec.id_number))?;
            Ok(person_to_proto(region, &stored))
        })
        .await
    }

    async fn update_person(
        &self,
        req: Request<proto::UpdatePersonRequest>,
    ) -> Result<Response<proto::Person>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "UpdatePerson", payload)?;
        let rec = person_from_fields(&req.id_number, req.fields.as_ref(), &self.state.clock)?;
        let region = self.state.region;
        self.once(key, move |conn| {
            persons::update(conn, &rec, &period::now_rfc3339())?;
            let stored = persons::get(conn, &rec.id_number)?
                .ok_or_else(|| not_found("person", &rec.id_number))?;
            Ok(person_to_proto(region, &stored))
        })
        .await
    }

    async fn get_person(
        &self,
        req: Request<proto::GetPersonRequest>,
    ) -> Result<Response<proto::Person>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let region = self.state.region;
        match (req.id_number.is_empty(), req.card_no.is_empty()) {
            (false, true) => {
                let id = IdNumber::parse(&req.id_number, "id_number")?;
                self.read(move |conn| {
                    let p = persons::get(conn, id.as_str())?
                        .ok_or_else(|| not_found("person with id_number", id.as_str()))?;
                    Ok(person_to_proto(region, &p))
                })
                .await
            }
            (true, false) => {
                let card = card::parse(&req.card_no, "card_no")?;
                self.read(move |conn| {
                    let p = persons::get_by_card(conn, &card)?
                        .ok_or_else(|| not_found("person with card_no", &card))?;
                    Ok(person_to_proto(region, &p))
                })
                .await
            }
            _ => {
                Err(Error::invalid("id_number", "give exactly one of id_number or card_no").into())
            }
        }
    }

    async fn list_persons(
        &self,
        req: Request<proto::ListPersonsRequest>,
    ) -> Result<Response<proto::ListPersonsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let page = req.page.unwrap_or_default();
        let filter = persons::ListFilter {
            insurance_type: (req.insurance_type != 0)
                .then(|| InsuranceType::from_proto(req.insurance_type, "insurance_type"))
                .transpose()?,
            status: (req.status != 0)
                .then(|| PersonStatus::from_proto(req.status, "status"))
                .transpose()?,
        };
        let limit = page_size(page.page_size);
        let region = self.state.region;
        self.read(move |conn| {
            let (rows, total) = persons::list(conn, &filter, &page.page_token, limit)?;
            let next_page_token = if rows.len() == limit as usize {
                rows.last()
                    .map(|p| p.rec.id_number.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListPersonsResponse {
                persons: rows.iter().map(|p| person_to_proto(region, p)).collect(),
                next_page_token,
                total,
            })
        })
        .await
    }

    async fn import_persons(
        &self,
        req: Request<proto::ImportPersonsRequest>,
    ) -> Result<Response<proto::ImportResult>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "ImportPersons", payload)?;
        check_batch(req.rows.len())?;
        let mut parsed: Vec<(u64, Result<PersonRec>)> = req
            .rows
            .iter()
            .map(|r| {
                (
                    r.row,
                    crate::limits::check(r).and_then(|()| person_from_row(r, &self.state.clock)),
                )
            })
            .collect();
        refuse_repeats(&req.rows, &mut parsed, "id_number", "person", |r| {
            r.id_number.trim().to_ascii_uppercase()
        });
        self.once_import(key, move |conn| {
            let now = period::now_rfc3339();
            let mut result = proto::ImportResult::default();
            for (row, rec) in parsed {
                let rec = match rec {
                    Ok(rec) => rec,
                    Err(e) => {
                        result.errors.push(row_error(row, e));
                        continue;
                    }
                };
                match persons::import(conn, &rec, &now)? {
                    persons::Imported::Done(u) => tally(&mut result, u),
                    persons::Imported::CardTaken => result.errors.push(row_error(
                        row,
                        Error::invalid(
                            "card_no",
                            format!(
                                "{} already belongs to another person",
                                rec.card_no.as_deref().unwrap_or_default()
                            ),
                        ),
                    )),
                }
            }
            Ok(result)
        })
        .await
    }

    async fn apply_filing(
        &self,
        req: Request<proto::ApplyFilingRequest>,
    ) -> Result<Response<proto::Filing>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "ApplyFiling", payload)?;
        let id = IdNumber::parse(&req.id_number, "id_number")?;
        let filing_type = FilingType::from_proto(req.filing_type, "filing_type")?;
        if filing_type == FilingType::Temporary {
            return Err(Error::invalid(
                "filing_type",
                "temporary care needs no filing; choose the filing type that applies",
            )
            .into());
        }
        let treatment = RegionCode::parse_city(&req.treatment_region, "treatment_region")?;
        if treatment == self.state.region {
            return Err(Error::invalid(
                "treatment_region",
                "must be another city than the home region",
            )
            .into());
        }
        if req.institutions.len() > 3 {
            return Err(Error::invalid(
                "institutions",
                format!("at most three may be named, got {}", req.institutions.len()),
            )
            .into());
        }
        let mut institutions = Vec::with_capacity(req.institutions.len());
        for (i, code) in req.institutions.iter().enumerate() {
            let code = validate_code(code, &format!("institutions[{i}]"))?;
            if institutions.contains(&code) {
                return Err(Error::invalid(
                    format!("institutions[{i}]"),
                    format!("{code} is named twice"),
                )
                .into());
            }
            institutions.push(code);
        }
        let valid_from = parse_date(&req.valid_from, "valid_from")?;
        // A filing starting in the future would be judged (and approved) against a
        // date the node has not reached; one is applied for when the care begins.
        self.state.clock.not_future_day(valid_from, "valid_from")?;
        let valid_to = parse_date_opt(&req.valid_to, "valid_to")?;
        check_date_order(valid_from, valid_to, "valid_to", "valid_from")?;
        let note = req.note.trim().to_owned();
        crate::limits::check_len("note", &note, crate::limits::NOTE)?;
        let region = self.state.region;
        self.once(key, move |conn| {
            let person = persons::get(conn, id.as_str())?
                .ok_or_else(|| not_found("person with id_number", id.as_str()))?;
            if person.rec.status != PersonStatus::Active {
                return Err(Error::FailedPrecondition(format!(
                    "person {} is {}; only active enrolments can file for cross-region care",
                    id.as_str(),
                    person.rec.status
                )));
            }
            let rec = FilingRec {
                filing_id: String::new(),
                id_number: id.as_str().to_owned(),
                filing_type,
                treatment_region: treatment.to_string(),
                institutions,
                valid_from,
                valid_to,
                status: FilingStatus::Applied,
                note,
                applied_at: period::now_rfc3339(),
                decided_at: None,
            };
            Ok(filing_to_proto(&filings::insert_new(
                conn,
                region.as_str(),
                rec,
            )?))
        })
        .await
    }

    async fn approve_filing(
        &self,
        req: Request<proto::ReviewFilingRequest>,
    ) -> Result<Response<proto::Filing>, Status> {
        crate::limits::check(req.get_ref())?;
        self.review(
            req.into_inner(),
            "ApproveFiling",
            FilingStatus::Applied,
            FilingStatus::Approved,
        )
        .await
    }

    async fn reject_filing(
        &self,
        req: Request<proto::ReviewFilingRequest>,
    ) -> Result<Response<proto::Filing>, Status> {
        crate::limits::check(req.get_ref())?;
        self.review(
            req.into_inner(),
            "RejectFiling",
            FilingStatus::Applied,
            FilingStatus::Rejected,
        )
        .await
    }

    async fn revoke_filing(
        &self,
        req: Request<proto::ReviewFilingRequest>,
    ) -> Result<Response<proto::Filing>, Status> {
        crate::limits::check(req.get_ref())?;
        self.review(
            req.into_inner(),
            "RevokeFiling",
            FilingStatus::Approved,
            FilingStatus::Revoked,
        )
        .await
    }

    async fn get_filing(
        &self,
        req: Request<proto::GetFilingRequest>,
    ) -> Result<Response<proto::Filing>, Status> {
        crate::limits::check(req.get_ref())?;
        let id = req.into_inner().filing_id;
        if id.is_empty() {
            return Err(Error::invalid("filing_id", "missing").into());
        }
        self.read(move |conn| {
            Ok(filing_to_proto(
                &filings::get(conn, &id)?.ok_or_else(|| not_found("filing", &id))?,
            ))
        })
        .await
    }

    async fn list_filings(
        &self,
        req: Request<proto::ListFilingsRequest>,
    ) -> Result<Response<proto::ListFilingsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let page = req.page.unwrap_or_default();
        let filter = filings::ListFilter {
            id_number: (!req.id_number.is_empty())
                .then(|| {
                    IdNumber::parse(&req.id_number, "id_number").map(|i| i.as_str().to_owned())
                })
                .transpose()?,
            status: (req.status != 0)
                .then(|| FilingStatus::from_proto(req.status, "status"))
                .transpose()?,
            treatment_region: (!req.treatment_region.is_empty())
                .then(|| {
                    RegionCode::parse(&req.treatment_region, "treatment_region")
                        .map(|r| r.to_string())
                })
                .transpose()?,
        };
        let limit = page_size(page.page_size);
        self.read(move |conn| {
            let rows = filings::list(conn, &filter, &page.page_token, limit)?;
            let next_page_token = if rows.len() == limit as usize {
                rows.last().map(|f| f.filing_id.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListFilingsResponse {
                filings: rows.iter().map(filing_to_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn publish_policy(
        &self,
        req: Request<proto::PublishPolicyRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "PublishPolicy", payload)?;
        let policy = Policy::from_json(&req.policy_json)
            .map_err(|e| Error::from(e.in_field("policy_json.")))?;
        policy
            .validate()
            .map_err(|e| Error::from(e.in_field("policy_json.")))?;
        // The document is self-contained; the request's copies of its key fields are
        // optional and, when given, must agree so that an operator's typo cannot publish
        // a policy under the wrong scheme or date.
        if policy.region != self.state.region.as_str() {
            return Err(Error::invalid(
                "policy_json.region",
                format!(
                    "the policy is for region {}, this node is {}",
                    policy.region, self.state.region
                ),
            )
            .into());
        }
        let insurance_type = policy.insurance_type;
        if req.insurance_type != 0
            && InsuranceType::from_proto(req.insurance_type, "insurance_type")? != insurance_type
        {
            return Err(Error::invalid(
                "insurance_type",
                format!("the policy document is for {insurance_type} insurance"),
            )
            .into());
        }
        let effective_from = policy.effective_from;
        if !req.effective_from.is_empty()
            && parse_date(&req.effective_from, "effective_from")? != effective_from
        {
            return Err(Error::invalid(
                "effective_from",
                format!("the policy document takes effect on {effective_from}"),
            )
            .into());
        }
        let policy_json = policy.to_canonical_json();
        let rec = PolicyRec {
            insurance_type,
            version: 0,
            effective_from,
            digest: sha256_hex(policy_json.as_bytes()),
            policy_json,
            published_at: period::now_rfc3339(),
            note: req.note.trim().to_owned(),
        };
        let region = self.state.region;
        self.once(key, move |conn| {
            let published = policies::list(conn, Some(insurance_type))?;
            // Re-publishing the latest version's very document and date (a deployment
            // script run twice) answers with that version instead of minting an
            // identical new one; the note alone does not make a new version.
            if let Some(latest) = published.iter().max_by_key(|p| p.version)
                && latest.digest == rec.digest
                && latest.effective_from == effective_from
            {
                return Ok(proto::PolicyVersion {
                    unchanged: true,
                    ..policy_to_proto(region, latest)
                });
            }
            if let Some(latest) = published.into_iter().max_by_key(|p| p.effective_from)
                && latest.effective_from > effective_from {
                    return Err(Error::FailedPrecondition(format!(
                        "version {} is already effective from {}; a new version cannot take effect earlier ({effective_from})",
                        latest.version, latest.effective_from
                    )));
                }
            Ok(policy_to_proto(region, &policies::publish(conn, rec)?))
        })
        .await
    }

    async fn list_policies(
        &self,
        req: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let it = (req.insurance_type != 0)
            .then(|| InsuranceType::from_proto(req.insurance_type, "insurance_type"))
            .transpose()?;
        let region = self.state.region;
        self.read(move |conn| {
            Ok(proto::ListPoliciesResponse {
                policies: policies::list(conn, it)?
                    .iter()
                    .map(|p| policy_to_proto(region, p))
                    .collect(),
            })
        })
        .await
    }

    async fn get_policy(
        &self,
        req: Request<proto::GetPolicyRequest>,
    ) -> Result<Response<proto::PolicyVersion>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let it = InsuranceType::from_proto(req.insurance_type, "insurance_type")?;
        let region = self.state.region;
        if req.version > 0 {
            let v = req.version;
            return self
                .read(move |conn| {
                    let p = policies::get(conn, it, v)?
                        .ok_or_else(|| Error::NotFound(format!("no {it} policy version {v}")))?;
                    Ok(policy_to_proto(region, &p))
                })
                .await;
        }
        let date = parse_date_opt(&req.on_date, "on_date")?.unwrap_or_else(period::today);
        self.read(move |conn| {
            let p = policies::in_force(conn, it, date)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "no {it} policy is in force on {date}; publish one first"
                ))
            })?;
            Ok(policy_to_proto(region, &p))
        })
        .await
    }

    async fn upsert_catalogue_item(
        &self,
        req: Request<proto::UpsertCatalogueItemRequest>,
    ) -> Result<Response<proto::CatalogueItem>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "UpsertCatalogueItem", payload)?;
        let rec = catalogue_from_proto(req.item.as_ref()).map_err(|e| match e {
            Error::Invalid { field, reason } if !field.starts_with("item.") => Error::Invalid {
                field: format!("item.{field}"),
                reason,
            },
            other => other,
        })?;
        self.once(key, move |conn| {
            catalogue::upsert(conn, &rec)?;
            Ok(catalogue_to_proto(&rec))
        })
        .await
    }

    async fn get_catalogue_item(
        &self,
        req: Request<proto::GetCatalogueItemRequest>,
    ) -> Result<Response<proto::CatalogueItem>, Status> {
        crate::limits::check(req.get_ref())?;
        let code = validate_code(&req.into_inner().code, "code")?;
        self.read(move |conn| {
            Ok(catalogue_to_proto(
                &catalogue::get(conn, &code)?.ok_or_else(|| not_found("catalogue item", &code))?,
            ))
        })
        .await
    }

    async fn list_catalogue(
        &self,
        req: Request<proto::ListCatalogueRequest>,
    ) -> Result<Response<proto::ListCatalogueResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let page = req.page.unwrap_or_default();
        let class = (req.class != 0)
            .then(|| CatalogueClass::from_proto(req.class, "class"))
            .transpose()?;
        let limit = page_size(page.page_size);
        self.read(move |conn| {
            let (rows, total) = catalogue::list(conn, class, &page.page_token, limit)?;
            let next_page_token = if rows.len() == limit as usize {
                rows.last().map(|c| c.code.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListCatalogueResponse {
                items: rows.iter().map(catalogue_to_proto).collect(),
                next_page_token,
                total,
            })
        })
        .await
    }

    async fn import_catalogue(
        &self,
        req: Request<proto::ImportCatalogueRequest>,
    ) -> Result<Response<proto::ImportResult>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "ImportCatalogue", payload)?;
        check_batch(req.rows.len())?;
        let mut parsed: Vec<(u64, Result<CatalogueRec>)> = req
            .rows
            .iter()
            .map(|r| {
                (
                    r.row,
                    crate::limits::check(r).and_then(|()| catalogue_from_row(r)),
                )
            })
            .collect();
        refuse_repeats(&req.rows, &mut parsed, "code", "catalogue item", |r| {
            r.code.trim().to_owned()
        });
        self.once_import(key, move |conn| {
            let mut result = proto::ImportResult::default();
            for (row, rec) in parsed {
                match rec {
                    Ok(rec) => tally(&mut result, catalogue::upsert(conn, &rec)?),
                    Err(e) => result.errors.push(row_error(row, e)),
                }
            }
            Ok(result)
        })
        .await
    }

    async fn upsert_institution(
        &self,
        req: Request<proto::UpsertInstitutionRequest>,
    ) -> Result<Response<proto::Institution>, Status> {
        crate::limits::check(req.get_ref())?;
        let mut req = req.into_inner();
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, "UpsertInstitution", payload)?;
        let rec = institution_from_proto(req.institution.as_ref())?;
        self.once(key, move |conn| {
            institutions::upsert(conn, &rec)?;
            Ok(institution_to_proto(&rec))
        })
        .await
    }

    async fn get_institution(
        &self,
        req: Request<proto::GetInstitutionRequest>,
    ) -> Result<Response<proto::Institution>, Status> {
        crate::limits::check(req.get_ref())?;
        let code = validate_code(&req.into_inner().code, "code")?;
        self.read(move |conn| {
            Ok(institution_to_proto(
                &institutions::get(conn, &code)?.ok_or_else(|| not_found("institution", &code))?,
            ))
        })
        .await
    }

    async fn list_institutions(
        &self,
        req: Request<proto::ListInstitutionsRequest>,
    ) -> Result<Response<proto::ListInstitutionsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let page = req.into_inner().page.unwrap_or_default();
        let limit = page_size(page.page_size);
        self.read(move |conn| {
            let rows = institutions::list(conn, &page.page_token, limit)?;
            let next_page_token = if rows.len() == limit as usize {
                rows.last().map(|i| i.code.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(proto::ListInstitutionsResponse {
                institutions: rows.iter().map(institution_to_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn get_node_info(
        &self,
        _req: Request<proto::GetNodeInfoRequest>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        let mut info = proto::NodeInfo {
            region: self.state.region.to_string(),
            name: self.state.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: SCHEMA_VERSION,
            started_at: self.state.started_at.clone(),
            ..Default::default()
        };
        let counts = self
            .state
            .store
            .read(|conn| {
                let count = |table: &str| -> Result<u64> {
                    Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
                };
                Ok([
                    count("persons")?,
                    count("institutions")?,
                    count("catalogue")?,
                    count("policies")?,
                ])
            })
            .await?;
        [
            info.persons,
            info.institutions,
            info.catalogue_items,
            info.policies,
        ] = counts;
        Ok(Response::new(info))
    }

    async fn get_outbox(
        &self,
        req: Request<proto::GetOutboxRequest>,
    ) -> Result<Response<proto::OutboxStatus>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            self.outbox_status(req.into_inner().list).await?,
        ))
    }

    async fn record_deduction(
        &self,
        req: Request<proto::RecordDeductionRequest>,
    ) -> Result<Response<proto::Deduction>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::record_deduction(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_deductions(
        &self,
        req: Request<proto::ListDeductionsRequest>,
    ) -> Result<Response<proto::ListDeductionsResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::list_deductions(&self.state, req.into_inner()).await?,
        ))
    }

    async fn record_reserve(
        &self,
        req: Request<proto::RecordReserveRequest>,
    ) -> Result<Response<proto::ReserveMovement>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::record_reserve(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_reserves(
        &self,
        _req: Request<proto::ListReservesRequest>,
    ) -> Result<Response<proto::ListReservesResponse>, Status> {
        Ok(Response::new(
            super::funds::list_reserves(&self.state).await?,
        ))
    }

    async fn hospital_statement(
        &self,
        req: Request<proto::HospitalStatementRequest>,
    ) -> Result<Response<proto::HospitalStatementResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::hospital_statement(&self.state, req.into_inner()).await?,
        ))
    }

    async fn get_ledger(
        &self,
        req: Request<proto::GetLedgerRequest>,
    ) -> Result<Response<proto::GetLedgerResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::get_ledger(&self.state, req.into_inner()).await?,
        ))
    }

    async fn confirm_clearing(
        &self,
        req: Request<proto::ConfirmClearingRequest>,
    ) -> Result<Response<proto::ClearingRound>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::funds::confirm_clearing(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_clearing_rounds(
        &self,
        _req: Request<proto::ListClearingRoundsRequest>,
    ) -> Result<Response<proto::ListClearingRoundsResponse>, Status> {
        Ok(Response::new(
            super::funds::list_clearing_rounds(&self.state).await?,
        ))
    }

    async fn list_audit(
        &self,
        req: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::audit::list_audit(&self.state, req.into_inner()).await?,
        ))
    }

    async fn export_archive(
        &self,
        req: Request<proto::ArchivePeriodRequest>,
    ) -> Result<Response<proto::ArchiveStatus>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::export(&self.state, req.into_inner()).await?,
        ))
    }

    async fn read_archive(
        &self,
        req: Request<proto::ArchiveChunkRequest>,
    ) -> Result<Response<proto::ArchiveChunk>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::read(&self.state, req.into_inner()).await?,
        ))
    }

    async fn purge_archive(
        &self,
        req: Request<proto::ArchivePeriodRequest>,
    ) -> Result<Response<proto::ArchiveStatus>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::purge(&self.state, req.into_inner()).await?,
        ))
    }

    async fn write_archive(
        &self,
        req: Request<proto::ArchiveChunk>,
    ) -> Result<Response<proto::ArchiveChunk>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::write(&self.state, req.into_inner()).await?,
        ))
    }

    async fn restore_archive(
        &self,
        req: Request<proto::RestoreArchiveRequest>,
    ) -> Result<Response<proto::ArchiveStatus>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::restore(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_archives(
        &self,
        req: Request<proto::ArchivePeriodRequest>,
    ) -> Result<Response<proto::ListArchivesResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        Ok(Response::new(
            super::archive::list(&self.state, req.into_inner()).await?,
        ))
    }
}

impl AdminSvc {
    async fn outbox_status(&self, list: u32) -> Result<proto::OutboxStatus> {
        let list = list.min(1000);
        let (depth, oldest, per, items, exposure) = self
            .state
            .store
            .read(move |conn| {
                let outbox::Stats {
                    depth,
                    oldest,
                    targets: per,
                    ..
                } = outbox::stats(conn)?;
                let items = if list > 0 {
                    outbox::due(conn, i64::MAX, list)?
                } else {
                    Vec::new()
                };
                let exposure = settlements::provisional_exposure_by_region(conn)?;
                Ok((depth, oldest, per, items, exposure))
            })
            .await?;
        Ok(proto::OutboxStatus {
            depth,
            oldest: oldest.unwrap_or_default(),
            targets: per
                .into_iter()
                .map(|t| proto::OutboxTarget {
                    region: t.region,
                    depth: t.depth,
                    oldest: t.oldest,
                })
                .collect(),
            items: items
                .into_iter()
                .map(|i| proto::OutboxItem {
                    kind: i.kind.to_string(),
                    target_region: i.target_region,
                    ref_id: i.ref_id,
                    created_at: i.created_at,
                    attempts: i.attempts,
                    last_error: i.last_error,
                })
                .collect(),
            exposure: exposure
                .into_iter()
                .map(|(region, fen)| proto::ProvisionalExposure {
                    region,
                    amount: money::format(money::from_fen(fen)),
                    limit: String::new(),
                })
                .collect(),
        })
    }

    async fn review(
        &self,
        mut req: proto::ReviewFilingRequest,
        method: &'static str,
        from: FilingStatus,
        to: FilingStatus,
    ) -> Result<Response<proto::Filing>, Status> {
        let payload = payload_hash(&mut req, |r| &mut r.request_id);
        let key = RequestKey::new(SCOPE, &req.request_id, method, payload)?;
        if req.filing_id.is_empty() {
            return Err(Error::invalid("filing_id", "missing").into());
        }
        let note = req.note.trim().to_owned();
        self.once(key, move |conn| {
            Ok(filing_to_proto(&filings::transition(
                conn,
                &req.filing_id,
                from,
                to,
                &note,
                &period::now_rfc3339(),
            )?))
        })
        .await
    }
}

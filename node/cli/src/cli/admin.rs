//! `yidi admin …`: the agency operator's client of a node's AdminService, one
//! subcommand per RPC. Answers print as tables, or as JSON with `--json`; a refused
//! call prints `error: <CODE>: <message>` on stderr and exits 1. Bulk CSV imports live
//! in [`super::import`].

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use tonic::{Request, Status, transport::Channel};
use yidi_common::{
    period,
    proto::{self, admin_service_client::AdminServiceClient},
    types::{
        AgreementStatus, CatalogueClass, FilingStatus, FilingType, HospitalLevel, InstitutionKind,
        InsuranceType, ItemCategory, PersonStatus, PersonType,
    },
};

use super::{
    flags::{ClientFlags, NodeFlag},
    import,
    output::{self, Listing},
};

/// The connected client every subcommand uses.
pub type Client = AdminServiceClient<Channel>;

/// Flags of `yidi admin`. The global flags (flags.rs) may appear before or after the
/// subcommand; an admin call's deadline may also come from YIDI_ADMIN_TIMEOUT.
#[derive(Debug, Args)]
#[command(mut_arg("timeout", |arg| arg.env("YIDI_ADMIN_TIMEOUT")))]
pub struct AdminArgs {
    #[command(flatten)]
    pub node: NodeFlag,
    #[command(flatten)]
    pub client: ClientFlags,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print a login link for this node's web console (docs/console.md), signed with
    /// your operator key: valid for a few minutes, signs in once.
    ConsoleLogin(super::console_login::ConsoleLoginArgs),
    /// Insured persons and their enrolment (参保人员).
    #[command(subcommand)]
    Person(PersonCommand),
    /// Cross-region filings (异地就医备案).
    #[command(subcommand)]
    Filing(FilingCommand),
    /// Benefit policy versions (待遇政策).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The local catalogue and price caps (三项目录).
    #[command(subcommand)]
    Catalogue(CatalogueCommand),
    /// Designated hospitals and pharmacies (定点机构).
    #[command(subcommand)]
    Institution(InstitutionCommand),
    /// Show the node's region, version and record counts.
    Info,
    /// Show the outbox of pushes queued for unreachable home nodes and the exposure of
    /// provisional settlements.
    Outbox {
        /// Also list up to this many queued items, oldest first.
        #[arg(long, default_value_t = 20)]
        list: u32,
    },
    /// Funds and clearing: deduction, reserve, statement, ledger, clearing.
    #[command(flatten)]
    Funds(FundsCommand),
    /// The audit log: every read of this node's person data by a peer node and every
    /// claim a peer committed or reversed here (newest first).
    Audit(super::audit::AuditArgs),
    /// Archives of closed and cleared periods: export, verify, purge, restore, list
    /// (docs/admin.md "Archives").
    #[command(subcommand)]
    Archive(super::archive::ArchiveCommand),
}

/// Builds a clap value parser from a yidi-common `parse(&str, field)` function, so that
/// flags accept exactly the names (and Chinese aliases) the CSV files and the wire use,
/// and clap's error names the flag and lists the allowed values.
pub fn domain<T: 'static>(
    parse: fn(&str, &str) -> yidi_common::Result<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| {
        parse(s, "value").map_err(|e| match e {
            yidi_common::Error::Invalid { reason, .. } => reason,
            other => other.to_string(),
        })
    }
}

/// Paging of list subcommands.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Print at most this many items.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print every item, fetching page after page (ignores --limit).
    #[arg(long)]
    pub all: bool,
    /// Continue after a previous listing (its footer prints the token).
    #[arg(long)]
    pub page_token: Option<String>,
}

/// The node's maximum page size.
const MAX_PAGE: u32 = 1000;

/// One page as a list RPC returns it.
pub struct Page<R> {
    pub items: Vec<R>,
    pub next_page_token: String,
    pub total: Option<u64>,
}

/// Fetches pages until `--limit` items (or, with `--all`, every item) are collected.
pub async fn collect<R, F, Fut>(paging: &PageArgs, mut fetch: F) -> Result<Listing<R>, Status>
where
    F: FnMut(proto::PageRequest) -> Fut,
    Fut: Future<Output = Result<Page<R>, Status>>,
{
    let mut items = Vec::new();
    let mut token = paging.page_token.clone().unwrap_or_default();
    let mut total = None;
    loop {
        let wanted = if paging.all {
            MAX_PAGE
        } else {
            let left = u32::try_from(paging.limit as usize - items.len()).unwrap_or(0);
            left.min(MAX_PAGE)
        };
        let page = fetch(proto::PageRequest {
            page_size: wanted,
            page_token: token,
        })
        .await?;
        total = total.or(page.total);
        items.extend(page.items);
        token = page.next_page_token;
        let full = !paging.all && items.len() >= paging.limit as usize;
        if token.is_empty() || full {
            return Ok(Listing {
                items,
                next_page_token: token,
                total,
            });
        }
    }
}

// ---------------------------------------------------------------- persons

#[derive(Debug, Subcommand)]
pub enum PersonCommand {
    /// Enrol a new insured person of this region.
    Create {
        /// Resident ID number (18 characters, GB 11643 check digit).
        id_number: String,
        #[command(flatten)]
        fields: PersonFieldArgs,
    },
    /// Change an enrolled person: only the given flags change, the rest is kept.
    Update {
        /// Resident ID number of the person.
        id_number: String,
        #[command(flatten)]
        fields: PersonFieldArgs,
    },
    /// Show one person, by ID number or by card number.
    Get {
        /// Resident ID number.
        #[arg(required_unless_present = "card_no", conflicts_with = "card_no")]
        id_number: Option<String>,
        /// Look the person up by social security card number instead.
        #[arg(long)]
        card_no: Option<String>,
    },
    /// List persons, ordered by ID number.
    List {
        /// Only this insurance type: employee | resident.
        #[arg(long, value_parser = domain(InsuranceType::parse))]
        insurance_type: Option<InsuranceType>,
        /// Only this status: active | suspended | terminated | deceased.
        #[arg(long, value_parser = domain(PersonStatus::parse))]
        status: Option<PersonStatus>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Bulk import persons from a CSV file (see docs/admin.md for the columns).
    Import(import::ImportArgs),
}

/// Enrolment fields of `person create` / `person update`.
#[derive(Debug, Clone, Args)]
pub struct PersonFieldArgs {
    /// Full name (required on create).
    #[arg(long)]
    pub name: Option<String>,
    /// Social security card number, 9–20 letters and digits ("" removes it).
    #[arg(long)]
    pub card_no: Option<String>,
    /// employee | resident (职工 | 居民); required on create.
    #[arg(long, value_parser = domain(InsuranceType::parse))]
    pub insurance_type: Option<InsuranceType>,
    /// in_service | retired | resident_adult | resident_minor | resident_elderly;
    /// required on create.
    #[arg(long, value_parser = domain(PersonType::parse))]
    pub person_type: Option<PersonType>,
    /// Eligible for the civil-servant subsidy (公务员医疗补助): true | false.
    #[arg(long)]
    pub civil_servant: Option<bool>,
    /// active | suspended | terminated | deceased (create default: active).
    #[arg(long, value_parser = domain(PersonStatus::parse))]
    pub status: Option<PersonStatus>,
    /// Personal account balance in yuan, e.g. 1234.50 (create default: 0.00).
    #[arg(long)]
    pub account_balance: Option<String>,
    /// Date the enrolment started, YYYY-MM-DD (create default: today).
    #[arg(long)]
    pub enrolled_since: Option<String>,
}

impl PersonFieldArgs {
    /// Overlays the given flags on `f`.
    fn apply(self, f: &mut proto::PersonFields) {
        set(&mut f.name, self.name);
        set(&mut f.card_no, self.card_no);
        set(
            &mut f.insurance_type,
            self.insurance_type.map(InsuranceType::to_proto),
        );
        set(
            &mut f.person_type,
            self.person_type.map(PersonType::to_proto),
        );
        set(&mut f.civil_servant, self.civil_servant);
        set(&mut f.status, self.status.map(PersonStatus::to_proto));
        set(&mut f.account_balance, self.account_balance);
        set(&mut f.enrolled_since, self.enrolled_since);
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Fails naming the flag when a value a new record needs was not given.
fn require<T>(value: Option<&T>, flag: &str, what: &str) -> anyhow::Result<()> {
    if value.is_none() {
        bail!("{flag} is required when creating {what}");
    }
    Ok(())
}

async fn person(client: &mut Client, g: &Globals, cmd: PersonCommand) -> anyhow::Result<i32> {
    match cmd {
        PersonCommand::Create { id_number, fields } => {
            let what = "a person";
            require(fields.name.as_ref(), "--name", what)?;
            require(fields.insurance_type.as_ref(), "--insurance-type", what)?;
            require(fields.person_type.as_ref(), "--person-type", what)?;
            let mut f = proto::PersonFields {
                status: PersonStatus::Active.to_proto(),
                account_balance: "0.00".to_owned(),
                enrolled_since: period::today().to_string(),
                ..Default::default()
            };
            fields.apply(&mut f);
            let req = proto::CreatePersonRequest {
                request_id: g.request_id(),
                id_number,
                fields: Some(f),
            };
            g.one(client.create_person(req).await?.into_inner())
        }
        PersonCommand::Update { id_number, fields } => {
            // UpdatePerson replaces every mutable field; read first so that the operator
            // only names what changes.
            let get = proto::GetPersonRequest {
                id_number: id_number.clone(),
                card_no: String::new(),
            };
            let mut f = client
                .get_person(get)
                .await?
                .into_inner()
                .fields
                .unwrap_or_default();
            fields.apply(&mut f);
            let req = proto::UpdatePersonRequest {
                request_id: g.request_id(),
                id_number,
                fields: Some(f),
            };
            g.one(client.update_person(req).await?.into_inner())
        }
        PersonCommand::Get { id_number, card_no } => {
            let req = proto::GetPersonRequest {
                id_number: id_number.unwrap_or_default(),
                card_no: card_no.unwrap_or_default(),
            };
            g.one(client.get_person(req).await?.into_inner())
        }
        PersonCommand::List {
            insurance_type,
            status,
            page,
        } => {
            let list = collect(&page, |p| {
                let mut c = client.clone();
                let req = proto::ListPersonsRequest {
                    page: Some(p),
                    insurance_type: insurance_type.map_or(0, InsuranceType::to_proto),
                    status: status.map_or(0, PersonStatus::to_proto),
                };
                async move {
                    let r = c.list_persons(req).await?.into_inner();
                    Ok(Page {
                        items: r.persons,
                        next_page_token: r.next_page_token,
                        total: Some(r.total),
                    })
                }
            })
            .await?;
            g.list(&list)
        }
        PersonCommand::Import(args) => import::run(client, g, import::Target::Persons, args).await,
    }
}

// ---------------------------------------------------------------- filings

#[derive(Debug, Subcommand)]
pub enum FilingCommand {
    /// Record a person's application for cross-region care.
    Apply {
        /// Resident ID number of the applicant (a person of this region).
        id_number: String,
        /// resettled_retiree | long_term_resident | posted_worker | referral | emergency.
        #[arg(long = "type", value_parser = domain(FilingType::parse))]
        filing_type: FilingType,
        /// Region where the person will be treated, e.g. 330200 (not this region).
        #[arg(long)]
        treatment_region: String,
        /// A designated institution code there (repeat, at most 3; long-term filings).
        #[arg(long = "institution")]
        institutions: Vec<String>,
        /// First day of validity, YYYY-MM-DD (default: today).
        #[arg(long)]
        valid_from: Option<String>,
        /// Last day of validity, inclusive; omit for an open-ended long-term filing.
        #[arg(long)]
        valid_to: Option<String>,
        /// Supporting note: diagnosis for a referral, address for resettlement, ...
        #[arg(long, default_value = "", hide_default_value = true)]
        note: String,
    },
    /// Approve an applied filing.
    Approve(ReviewArgs),
    /// Reject an applied filing.
    Reject(ReviewArgs),
    /// Revoke an approved filing.
    Revoke(ReviewArgs),
    /// Show one filing.
    Get {
        /// Filing id, e.g. 330100-F-000042.
        filing_id: String,
    },
    /// List filings, newest first.
    List {
        /// Only this person's filings.
        #[arg(long)]
        id_number: Option<String>,
        /// Only this status: applied | approved | rejected | revoked.
        #[arg(long, value_parser = domain(FilingStatus::parse))]
        status: Option<FilingStatus>,
        /// Only filings for this treatment region.
        #[arg(long)]
        treatment_region: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Arguments of a filing review.
#[derive(Debug, Clone, Args)]
pub struct ReviewArgs {
    /// Filing id, e.g. 330100-F-000042.
    pub filing_id: String,
    /// Reviewer's note, kept with the decision.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub note: String,
}

async fn filing(client: &mut Client, g: &Globals, cmd: FilingCommand) -> anyhow::Result<i32> {
    let review = |r: ReviewArgs| proto::ReviewFilingRequest {
        request_id: g.request_id(),
        filing_id: r.filing_id,
        note: r.note,
    };
    let answer = match cmd {
        FilingCommand::Apply {
            id_number,
            filing_type,
            treatment_region,
            institutions,
            valid_from,
            valid_to,
            note,
        } => {
            let req = proto::ApplyFilingRequest {
                request_id: g.request_id(),
                id_number,
                filing_type: filing_type.to_proto(),
                treatment_region,
                institutions,
                valid_from: valid_from.unwrap_or_else(|| period::today().to_string()),
                valid_to: valid_to.unwrap_or_default(),
                note,
            };
            client.apply_filing(req).await?
        }
        FilingCommand::Approve(r) => client.approve_filing(review(r)).await?,
        FilingCommand::Reject(r) => client.reject_filing(review(r)).await?,
        FilingCommand::Revoke(r) => client.revoke_filing(review(r)).await?,
        FilingCommand::Get { filing_id } => {
            client
                .get_filing(proto::GetFilingRequest { filing_id })
                .await?
        }
        FilingCommand::List {
            id_number,
            status,
            treatment_region,
            page,
        } => {
            let list = collect(&page, |p| {
                let mut c = client.clone();
                let req = proto::ListFilingsRequest {
                    page: Some(p),
                    id_number: id_number.clone().unwrap_or_default(),
                    status: status.map_or(0, FilingStatus::to_proto),
                    treatment_region: treatment_region.clone().unwrap_or_default(),
                };
                async move {
                    let r = c.list_filings(req).await?.into_inner();
                    Ok(Page {
                        items: r.filings,
                        next_page_token: r.next_page_token,
                        total: None,
                    })
                }
            })
            .await?;
            return g.list(&list);
        }
    };
    g.one(answer.into_inner())
}

// ---------------------------------------------------------------- policies

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Publish a new policy version from a TOML or JSON file (by extension).
    Publish {
        /// The policy document (schema: deploy/policy.sample.toml). It names its own
        /// region, insurance type and effective date.
        file: PathBuf,
        /// Cross-check: employee | resident; refused if the document says otherwise.
        #[arg(long, value_parser = domain(InsuranceType::parse))]
        insurance_type: Option<InsuranceType>,
        /// Cross-check: first day in force, YYYY-MM-DD; refused if the document says
        /// otherwise.
        #[arg(long)]
        effective_from: Option<String>,
        /// Note kept with the version (e.g. the decree number).
        #[arg(long, default_value = "", hide_default_value = true)]
        note: String,
    },
    /// List published versions.
    List {
        /// Only this insurance type: employee | resident.
        #[arg(long, value_parser = domain(InsuranceType::parse))]
        insurance_type: Option<InsuranceType>,
    },
    /// Show the version in force on a date (or a given version) with its document.
    Get {
        /// employee | resident.
        #[arg(long, value_parser = domain(InsuranceType::parse))]
        insurance_type: InsuranceType,
        /// The date to look up, YYYY-MM-DD (default: today, UTC+8).
        #[arg(long, conflicts_with = "version")]
        on: Option<String>,
        /// A version number instead of a date.
        #[arg(long)]
        version: Option<u32>,
    },
}

/// Converts TOML to JSON generically, so the CLI does not depend on the policy model
/// (the node validates the document). Dates become their TOML text.
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        // Passed through so that the node's validation names the field: the policy
        // schema refuses bare numbers for amounts and ratios (they would go through a
        // binary float), and that message is more useful than a client-side refusal.
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Reads a policy file as JSON text: `.toml` is converted, `.json` is checked.
pub fn read_policy(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy file {}", file.display()))?;
    let doc = match file.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let v: toml::Value = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", file.display()))?;
            toml_to_json(v)
        }
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", file.display()))?,
        _ => bail!("policy file {} must end in .toml or .json", file.display()),
    };
    Ok(doc.to_string())
}

async fn policy(client: &mut Client, g: &Globals, cmd: PolicyCommand) -> anyhow::Result<i32> {
    let answer = match cmd {
        PolicyCommand::Publish {
            file,
            insurance_type,
            effective_from,
            note,
        } => {
            let req = proto::PublishPolicyRequest {
                request_id: g.request_id(),
                insurance_type: insurance_type.map_or(0, InsuranceType::to_proto),
                effective_from: effective_from.unwrap_or_default(),
                policy_json: read_policy(&file)?,
                note,
            };
            let answer = client.publish_policy(req).await?.into_inner();
            return Ok(print_published(&answer, g.json));
        }
        PolicyCommand::List { insurance_type } => {
            let req = proto::ListPoliciesRequest {
                insurance_type: insurance_type.map_or(0, InsuranceType::to_proto),
            };
            let policies = client.list_policies(req).await?.into_inner().policies;
            return g.list(&listing(policies));
        }
        PolicyCommand::Get {
            insurance_type,
            on,
            version,
        } => {
            let req = proto::GetPolicyRequest {
                insurance_type: insurance_type.to_proto(),
                on_date: on.unwrap_or_default(),
                version: version.unwrap_or(0),
            };
            client.get_policy(req).await?
        }
    };
    g.one(answer.into_inner())
}

/// `policy publish` answers in one line (the document is what the operator just sent,
/// and a script publishing every city's policies should not print them all); `--json`
/// gives the whole version with `unchanged`.
fn print_published(answer: &proto::PolicyVersion, as_json: bool) -> i32 {
    if as_json {
        let mut v = output::to_json(answer);
        v["unchanged"] = Value::Bool(answer.unchanged);
        output::print_json(&v);
        return 0;
    }
    let what = format!(
        "{} {} policy effective from {}",
        answer.region,
        InsuranceType::from_proto(answer.insurance_type, "insurance_type")
            .map_or_else(|_| "?".to_owned(), |t| t.to_string()),
        answer.effective_from
    );
    if answer.unchanged {
        output::emit(format_args!(
            "unchanged, version {}: {what} is already the latest version",
            answer.version
        ));
    } else {
        output::emit(format_args!(
            "published version {}: {what} (digest {})",
            answer.version, answer.digest
        ));
    }
    0
}

// ---------------------------------------------------------------- catalogue

#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Create an item, or change the given fields of an existing one.
    Upsert {
        /// Local item code, 1–32 of A-Z a-z 0-9 . _ -.
        code: String,
        #[command(flatten)]
        fields: CatalogueFieldArgs,
    },
    /// Show one item.
    Get {
        /// Item code.
        code: String,
    },
    /// List items, ordered by code.
    List {
        /// Only this class: A | B | C (甲 | 乙 | 丙).
        #[arg(long, value_parser = domain(CatalogueClass::parse))]
        class: Option<CatalogueClass>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Bulk import items from a CSV file (see docs/admin.md for the columns).
    Import(import::ImportArgs),
}

/// Fields of `catalogue upsert`.
#[derive(Debug, Clone, Args)]
pub struct CatalogueFieldArgs {
    /// Item name, e.g. 阿莫西林胶囊 (required for a new item).
    #[arg(long)]
    pub name: Option<String>,
    /// drug | service | material (required for a new item).
    #[arg(long, value_parser = domain(ItemCategory::parse))]
    pub category: Option<ItemCategory>,
    /// A | B | C (甲 | 乙 | 丙; required for a new item).
    #[arg(long, value_parser = domain(CatalogueClass::parse))]
    pub class: Option<CatalogueClass>,
    /// First self-pay ratio of a class-B item, e.g. 0.10 (0 if it has none): required
    /// for class B; class A and C items have none.
    #[arg(long)]
    pub first_selfpay_ratio: Option<String>,
    /// Price cap per unit in yuan; "" removes the cap.
    #[arg(long)]
    pub price_cap: Option<String>,
    /// Unit, e.g. 盒, 次, 个.
    #[arg(long)]
    pub unit: Option<String>,
    /// First day valid, YYYY-MM-DD (new item default: today).
    #[arg(long)]
    pub valid_from: Option<String>,
    /// Last day valid, inclusive; "" for open-ended.
    #[arg(long)]
    pub valid_to: Option<String>,
    /// Whether the item may be billed at 0.00 (new item default: false).
    #[arg(long)]
    pub free_of_charge: Option<bool>,
}

impl CatalogueFieldArgs {
    fn apply(self, item: &mut proto::CatalogueItem) {
        set(&mut item.name, self.name);
        set(
            &mut item.category,
            self.category.map(ItemCategory::to_proto),
        );
        set(&mut item.class, self.class.map(CatalogueClass::to_proto));
        set(&mut item.first_selfpay_ratio, self.first_selfpay_ratio);
        set(&mut item.price_cap, self.price_cap);
        set(&mut item.unit, self.unit);
        set(&mut item.valid_from, self.valid_from);
        set(&mut item.valid_to, self.valid_to);
        set(&mut item.free_of_charge, self.free_of_charge);
    }
}

/// The record an upsert starts from: the stored one, or `None` if there is none yet.
async fn existing<T>(
    lookup: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<Option<T>, Status> {
    match lookup.await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

async fn catalogue(client: &mut Client, g: &Globals, cmd: CatalogueCommand) -> anyhow::Result<i32> {
    match cmd {
        CatalogueCommand::Upsert { code, fields } => {
            let get = proto::GetCatalogueItemRequest { code: code.clone() };
            let mut item = match existing(client.clone().get_catalogue_item(get)).await? {
                Some(item) => item,
                None => {
                    let what = format!("catalogue item {code}");
                    require(fields.name.as_ref(), "--name", &what)?;
                    require(fields.category.as_ref(), "--category", &what)?;
                    require(fields.class.as_ref(), "--class", &what)?;
                    proto::CatalogueItem {
                        code,
                        valid_from: period::today().to_string(),
                        ..Default::default()
                    }
                }
            };
            fields.apply(&mut item);
            let req = proto::UpsertCatalogueItemRequest {
                request_id: g.request_id(),
                item: Some(item),
            };
            g.one(client.upsert_catalogue_item(req).await?.into_inner())
        }
        CatalogueCommand::Get { code } => {
            let req = proto::GetCatalogueItemRequest { code };
            g.one(client.get_catalogue_item(req).await?.into_inner())
        }
        CatalogueCommand::List { class, page } => {
            let list = collect(&page, |p| {
                let mut c = client.clone();
                let req = proto::ListCatalogueRequest {
                    page: Some(p),
                    class: class.map_or(0, CatalogueClass::to_proto),
                };
                async move {
                    let r = c.list_catalogue(req).await?.into_inner();
                    Ok(Page {
                        items: r.items,
                        next_page_token: r.next_page_token,
                        total: Some(r.total),
                    })
                }
            })
            .await?;
            g.list(&list)
        }
        CatalogueCommand::Import(args) => {
            import::run(client, g, import::Target::Catalogue, args).await
        }
    }
}

// ---------------------------------------------------------------- institutions

#[derive(Debug, Subcommand)]
pub enum InstitutionCommand {
    /// Register an institution, or change the given fields of an existing one.
    Upsert {
        /// Institution code, 1–32 of A-Z a-z 0-9 . _ -, e.g. H33010001.
        code: String,
        #[command(flatten)]
        fields: InstitutionFieldArgs,
    },
    /// Show one institution.
    Get {
        /// Institution code.
        code: String,
    },
    /// List institutions, ordered by code.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Upsert every institution of a CSV file, one call per row (see docs/admin.md).
    Import(import::ImportArgs),
}

/// Fields of `institution upsert`.
#[derive(Debug, Clone, Args)]
pub struct InstitutionFieldArgs {
    /// Name, e.g. 浙江大学医学院附属第一医院 (required for a new institution).
    #[arg(long)]
    pub name: Option<String>,
    /// hospital | pharmacy (required for a new institution).
    #[arg(long, value_parser = domain(InstitutionKind::parse))]
    pub kind: Option<InstitutionKind>,
    /// level1 | level2 | level3 | ungraded (also 1 | 2 | 3; new default: ungraded).
    #[arg(long, value_parser = domain(HospitalLevel::parse))]
    pub level: Option<HospitalLevel>,
    /// active | suspended | terminated (new default: active).
    #[arg(long, value_parser = domain(AgreementStatus::parse))]
    pub agreement_status: Option<AgreementStatus>,
    /// First day of the designation agreement, YYYY-MM-DD (new default: today).
    #[arg(long)]
    pub agreement_from: Option<String>,
    /// Last day of the agreement, inclusive; "" for open-ended.
    #[arg(long)]
    pub agreement_to: Option<String>,
}

impl InstitutionFieldArgs {
    fn apply(self, inst: &mut proto::Institution) {
        set(&mut inst.name, self.name);
        set(&mut inst.kind, self.kind.map(InstitutionKind::to_proto));
        set(&mut inst.level, self.level.map(HospitalLevel::to_proto));
        set(
            &mut inst.agreement_status,
            self.agreement_status.map(AgreementStatus::to_proto),
        );
        set(&mut inst.agreement_from, self.agreement_from);
        set(&mut inst.agreement_to, self.agreement_to);
    }
}

async fn institution(
    client: &mut Client,
    g: &Globals,
    cmd: InstitutionCommand,
) -> anyhow::Result<i32> {
    match cmd {
        InstitutionCommand::Upsert { code, fields } => {
            let get = proto::GetInstitutionRequest { code: code.clone() };
            let mut inst = match existing(client.clone().get_institution(get)).await? {
                Some(inst) => inst,
                None => {
                    let what = format!("institution {code}");
                    require(fields.name.as_ref(), "--name", &what)?;
                    require(fields.kind.as_ref(), "--kind", &what)?;
                    proto::Institution {
                        code,
                        level: HospitalLevel::Ungraded.to_proto(),
                        agreement_status: AgreementStatus::Active.to_proto(),
                        agreement_from: period::today().to_string(),
                        ..Default::default()
                    }
                }
            };
            fields.apply(&mut inst);
            let req = proto::UpsertInstitutionRequest {
                request_id: g.request_id(),
                institution: Some(inst),
            };
            g.one(client.upsert_institution(req).await?.into_inner())
        }
        InstitutionCommand::Get { code } => {
            let req = proto::GetInstitutionRequest { code };
            g.one(client.get_institution(req).await?.into_inner())
        }
        InstitutionCommand::List { page } => {
            let list = collect(&page, |p| {
                let mut c = client.clone();
                let req = proto::ListInstitutionsRequest { page: Some(p) };
                async move {
                    let r = c.list_institutions(req).await?.into_inner();
                    Ok(Page {
                        items: r.institutions,
                        next_page_token: r.next_page_token,
                        total: None,
                    })
                }
            })
            .await?;
            g.list(&list)
        }
        InstitutionCommand::Import(args) => import::run_institutions(client, g, args).await,
    }
}

// ---------------------------------------------------------------- funds and clearing

/// The node's side of funds and clearing (issue 5's AdminService calls); flattened into
/// `yidi admin` so that they read like the other commands.
#[derive(Debug, Subcommand)]
pub enum FundsCommand {
    /// Audit deductions (审核扣款) on claims treated here.
    #[command(subcommand)]
    Deduction(DeductionCommand),
    /// Reserve funds (储备金) held with other regions.
    #[command(subcommand)]
    Reserve(ReserveCommand),
    /// What the agency pays an institution for a period (按月结算).
    Statement {
        /// Institution code, e.g. H33010001.
        institution_code: String,
        /// Clearing period, YYYY-MM.
        #[arg(long)]
        period: String,
    },
    /// This node's ledger positions toward every counterparty for a period (台账).
    Ledger {
        /// Clearing period, YYYY-MM.
        #[arg(long)]
        period: String,
    },
    /// Clearing rounds as this node sees them; confirm a statement.
    #[command(subcommand)]
    Clearing(ClearingCommand),
}

#[derive(Debug, Subcommand)]
pub enum DeductionCommand {
    /// Deduct an amount found unreasonable from a settled claim treated here.
    Record {
        /// The settlement the deduction applies to.
        settlement_id: String,
        /// Amount in yuan, > 0, at most the fund share not yet deducted.
        #[arg(long)]
        amount: String,
        /// Why, for the institution and the home region.
        #[arg(long)]
        reason: String,
    },
    /// List deductions.
    List {
        /// Only deductions on this settlement.
        #[arg(long)]
        settlement_id: Option<String>,
        /// Only deductions of this institution.
        #[arg(long)]
        institution: Option<String>,
        /// Only deductions of this clearing period, YYYY-MM.
        #[arg(long)]
        period: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReserveCommand {
    /// Record a reserve movement toward another region.
    Record {
        /// The other region of the reserve, e.g. 330200.
        #[arg(long)]
        counterparty: String,
        /// topup: this node (home region) prepays; use: this node (treatment region)
        /// draws on the reserve.
        #[arg(long, value_parser = ["topup", "use"])]
        kind: String,
        /// Amount in yuan, > 0.
        #[arg(long)]
        amount: String,
        /// Alarm when the balance falls below this amount.
        #[arg(long, default_value = "", hide_default_value = true)]
        alarm_threshold: String,
        /// Note kept with the movement.
        #[arg(long, default_value = "", hide_default_value = true)]
        note: String,
    },
    /// Show every reserve balance this node knows.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClearingCommand {
    /// Confirm a clearing statement after checking it.
    Confirm {
        /// The round id.
        round_id: String,
        /// The statement digest that was checked (from `yidi clearing statement`).
        #[arg(long)]
        digest: String,
        /// Note kept with the confirmation.
        #[arg(long, default_value = "", hide_default_value = true)]
        note: String,
    },
    /// List the clearing rounds this node took part in.
    List,
}

fn listing<R>(items: Vec<R>) -> Listing<R> {
    Listing {
        items,
        next_page_token: String::new(),
        total: None,
    }
}

async fn funds(client: &mut Client, g: &Globals, cmd: FundsCommand) -> anyhow::Result<i32> {
    match cmd {
        FundsCommand::Deduction(DeductionCommand::Record {
            settlement_id,
            amount,
            reason,
        }) => {
            let req = proto::RecordDeductionRequest {
                request_id: g.request_id(),
                settlement_id,
                amount,
                reason,
            };
            g.one(client.record_deduction(req).await?.into_inner())
        }
        FundsCommand::Deduction(DeductionCommand::List {
            settlement_id,
            institution,
            period,
        }) => {
            let req = proto::ListDeductionsRequest {
                settlement_id: settlement_id.unwrap_or_default(),
                institution_code: institution.unwrap_or_default(),
                period: period.unwrap_or_default(),
            };
            g.list(&listing(
                client.list_deductions(req).await?.into_inner().deductions,
            ))
        }
        FundsCommand::Reserve(ReserveCommand::Record {
            counterparty,
            kind,
            amount,
            alarm_threshold,
            note,
        }) => {
            let req = proto::RecordReserveRequest {
                request_id: g.request_id(),
                counterparty,
                kind,
                amount,
                alarm_threshold,
                note,
            };
            g.one(client.record_reserve(req).await?.into_inner())
        }
        FundsCommand::Reserve(ReserveCommand::List) => {
            let reserves = client
                .list_reserves(proto::ListReservesRequest {})
                .await?
                .into_inner()
                .reserves;
            g.list(&listing(reserves))
        }
        FundsCommand::Statement {
            institution_code,
            period,
        } => {
            let req = proto::HospitalStatementRequest {
                institution_code,
                period,
            };
            g.one(client.hospital_statement(req).await?.into_inner())
        }
        FundsCommand::Ledger { period } => g.one(
            client
                .get_ledger(proto::GetLedgerRequest { period })
                .await?
                .into_inner(),
        ),
        FundsCommand::Clearing(ClearingCommand::Confirm {
            round_id,
            digest,
            note,
        }) => {
            let req = proto::ConfirmClearingRequest {
                request_id: g.request_id(),
                round_id,
                statement_digest: digest,
                note,
            };
            g.one(client.confirm_clearing(req).await?.into_inner())
        }
        FundsCommand::Clearing(ClearingCommand::List) => {
            let rounds = client
                .list_clearing_rounds(proto::ListClearingRoundsRequest {})
                .await?;
            g.list(&listing(rounds.into_inner().rounds))
        }
    }
}

// ---------------------------------------------------------------- running

/// The global flags every subcommand needs.
#[derive(Debug, Clone)]
pub struct Globals {
    pub json: bool,
    pub request_id: Option<String>,
}

impl Globals {
    /// `--request-id`, or a fresh UUID so that every invocation is its own request.
    #[must_use]
    pub fn request_id(&self) -> String {
        self.request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }

    fn one<R: output::Record>(&self, record: R) -> anyhow::Result<i32> {
        output::print_one(&record, self.json);
        Ok(0)
    }

    fn list<R: output::Record>(&self, list: &Listing<R>) -> anyhow::Result<i32> {
        output::print_list(list, self.json);
        Ok(0)
    }
}

/// A channel to the node's gRPC address, shared by every command-line client: mutual
/// TLS when `tls` names the files, plain text otherwise; fails fast (UNAVAILABLE,
/// before anything is sent) when nothing listens there. With `deadline`, every call on
/// the channel fails with DEADLINE_EXCEEDED when it takes longer.
pub async fn channel(
    node: &str,
    tls: &yidi_node::tls::ClientArgs,
    deadline: Option<Duration>,
) -> anyhow::Result<Channel> {
    let tls_config = tls.config()?;
    let plain = tls_config.is_none();
    let mut endpoint = tls
        .endpoint_with(node, tls_config)
        .with_context(|| {
            format!("--node {node:?} is not a valid URL (expected e.g. http://127.0.0.1:7101)")
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if plain && yidi_node::tls::wants_tls(&endpoint).await {
        return Err(Status::unavailable(format!(
            "the node at {node} requires TLS: pass --ca, --cert and --key (or YIDI_CA, YIDI_CERT, YIDI_KEY); \
             `yidi certs operator` or `yidi certs hospital` issues them (docs/security.md)"
        ))
        .into());
    }
    if let Some(d) = deadline {
        endpoint = endpoint.timeout(d);
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot reach the node at {node}: {e} (is `yidi node` running there?)"
        ))
    })?;
    Ok(channel)
}

async fn execute(args: AdminArgs) -> anyhow::Result<i32> {
    let g = Globals {
        json: args.client.json,
        request_id: args.client.request_id,
    };
    let deadline = Duration::from_secs(args.client.timeout);
    let mut client =
        AdminServiceClient::new(channel(&args.node.node, &args.client.tls, Some(deadline)).await?);
    match args.command {
        // Printed by `run` before any connection: a link needs no server.
        AdminCommand::ConsoleLogin(_) => Ok(0),
        AdminCommand::Person(cmd) => person(&mut client, &g, cmd).await,
        AdminCommand::Filing(cmd) => filing(&mut client, &g, cmd).await,
        AdminCommand::Policy(cmd) => policy(&mut client, &g, cmd).await,
        AdminCommand::Catalogue(cmd) => catalogue(&mut client, &g, cmd).await,
        AdminCommand::Institution(cmd) => institution(&mut client, &g, cmd).await,
        AdminCommand::Info => {
            let info = client
                .get_node_info(Request::new(proto::GetNodeInfoRequest {}))
                .await?;
            g.one(info.into_inner())
        }
        AdminCommand::Outbox { list } => {
            let outbox = client.get_outbox(proto::GetOutboxRequest { list }).await?;
            g.one(outbox.into_inner())
        }
        AdminCommand::Funds(cmd) => funds(&mut client, &g, cmd).await,
        AdminCommand::Audit(args) => super::audit::run(&mut client, &g, args).await,
        AdminCommand::Archive(cmd) => super::archive::run(&mut client, &g, cmd).await,
    }
}

/// Runs `yidi admin …`. Exits the process itself with the documented codes (0 done,
/// 1 refused or failed, 2 an import finished with rejected rows), because the caller's
/// generic error printing cannot show a gRPC status as `error: <CODE>: <message>`.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::ConsoleLogin(c) = &args.command {
        let target = super::console_login::Target::Node;
        match super::console_login::link(
            args.client.tls.cert.as_ref(),
            args.client.tls.key.as_ref(),
            c,
            target,
        ) {
            Ok(link) => println!("{link}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    if let AdminCommand::Archive(cmd) = &args.command
        && let Some(code) = super::archive::offline(cmd, args.client.json)
    {
        if code != 0 {
            std::process::exit(code);
        }
        return Ok(());
    }
    let code = match execute(args).await {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<Status>() {
                // The status comes first so that scripts can match `error: <CODE>:`;
                // what the CLI was doing (e.g. which import batch) follows as notes.
                Some(status) => {
                    eprintln!("error: {}", output::status_line(status));
                    for context in e.chain().take_while(|c| !c.is::<Status>()) {
                        eprintln!("note: {context}");
                    }
                }
                None => eprintln!("error: {e:#}"),
            }
            1
        }
    };
    if code != 0 {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_policies_become_json() {
        let v: toml::Value = toml::from_str(
            "name = \"x\"\n[deductible]\nlevel3 = \"800.00\"\nratio = 0.5\nsince = 2026-01-01\n[[tiers]]\nupto = 1\n",
        )
        .unwrap();
        let j = toml_to_json(v);
        assert_eq!(j["deductible"]["level3"], "800.00");
        assert_eq!(j["deductible"]["since"], "2026-01-01");
        assert_eq!(j["tiers"][0]["upto"], 1);
    }

    #[test]
    fn enum_flags_accept_stable_names_and_aliases() {
        let p = domain(InsuranceType::parse);
        assert_eq!(p("employee").unwrap(), InsuranceType::Employee);
        assert_eq!(p("居民").unwrap(), InsuranceType::Resident);
        assert!(p("boss").unwrap_err().contains("employee, resident"));
    }
}

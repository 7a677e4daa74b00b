//! `yidi demo --national`: two provinces and the national level on loopback, in this
//! process — Zhejiang (330000: Hangzhou 330100, Ningbo 330200) and Jiangsu (320000:
//! Nanjing 320100, Suzhou 320500), a coordinator per province and the national
//! coordinator (000000), every party over mutual TLS with the demo's certificates; the
//! nodes find each other through the federation directory, with no peers file.
//! Loads a policy, a hospital, a catalogue and a few filed persons per city through the
//! real AdminService; drives visits of every city's people in every other city through
//! the real HospitalService (across the province boundary and within it, with a
//! cancellation and a 冲正 of cross-province claims); runs each province's round (its own
//! cities' pairs) and then the national round (province against province, through the
//! provincial coordinators); prints every statement and `CHECK … ok` lines: Σ net = 0 at
//! each level, each province's cities summing to its national position, every node's
//! ledger equal to its rows of both statements, every round settled and cleared.
//!
//! Each run starts from empty stores under `<data-dir>/national`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rust_decimal::Decimal;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use yidi_common::{
    idnum,
    money::{self, Sign},
    netting::statement_digest,
    policy::Policy,
    proto::{
        self, admin_service_client::AdminServiceClient,
        coordinator_service_client::CoordinatorServiceClient,
        hospital_service_client::HospitalServiceClient,
    },
    region::{NATIONAL, RegionCode},
};
use yidi_node::{
    config::NodeConfig,
    coordinator::CoordinatorConfig,
    directory,
    identity::{Identity, Role},
};

use super::{DemoArgs, bind, channel, pki::Pki, stopped, url};

/// A city of the national demo.
struct City {
    region: &'static str,
    name: &'static str,
    /// Its level-3 hospital.
    hospital: &'static str,
    employee_policy: &'static str,
}

/// A province: its coordinator's code and its cities.
struct Province {
    code: &'static str,
    name: &'static str,
    cities: [City; 2],
}

const PROVINCES: [Province; 2] = [
    Province {
        code: "330000",
        name: "浙江 Zhejiang",
        cities: [
            City {
                region: "330100",
                name: "杭州 Hangzhou",
                hospital: "H33010001",
                employee_policy: include_str!("../../../../deploy/policies/330100-employee.toml"),
            },
            City {
                region: "330200",
                name: "宁波 Ningbo",
                hospital: "H33020001",
                employee_policy: include_str!("../../../../deploy/policies/330200-employee.toml"),
            },
        ],
    },
    Province {
        code: "320000",
        name: "江苏 Jiangsu",
        cities: [
            City {
                region: "320100",
                name: "南京 Nanjing",
                hospital: "H32010001",
                employee_policy: include_str!("../../../../deploy/policies/320100-employee.toml"),
            },
            City {
                region: "320500",
                name: "苏州 Suzhou",
                hospital: "H32050001",
                employee_policy: include_str!("../../../../deploy/policies/320500-employee.toml"),
            },
        ],
    },
];

/// How often every party refreshes the federation directory: the demo starts all of
/// them at once, so the documents reach every node within a few refreshes.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(1);

/// Persons per city; each is treated once in one of the other three cities.
const PERSONS: u16 = 9;

fn cities() -> impl Iterator<Item = (&'static Province, &'static City)> {
    PROVINCES
        .iter()
        .flat_map(|p| p.cities.iter().map(move |c| (p, c)))
}

/// Where everything lives: the national coordinator on the base port, the provinces'
/// coordinators on the next two, the four nodes after them.
struct Layout {
    dir: PathBuf,
    national: SocketAddr,
    provinces: [SocketAddr; 2],
    nodes: [SocketAddr; 4],
}

impl Layout {
    fn new(dir: PathBuf, base: u16) -> Self {
        let at = |k: u16| SocketAddr::from(([127, 0, 0, 1], base + k));
        Self {
            dir,
            national: at(0),
            provinces: [at(1), at(2)],
            nodes: [at(3), at(4), at(5), at(6)],
        }
    }

    fn province_addr(&self, code: &str) -> SocketAddr {
        if code == PROVINCES[0].code {
            self.provinces[0]
        } else {
            self.provinces[1]
        }
    }
}

/// The files the parties are configured with (see [`configure_federation`]).
struct FederationFiles {
    /// Each province's directory file: its cities and where the national level is.
    directories: [PathBuf; 2],
    /// The national level's directory file: the provinces' coordinators.
    national_directory: PathBuf,
    /// Each province's participants: its nodes.
    participants: [PathBuf; 2],
    /// The national coordinator's participants: the provinces' coordinators.
    national: PathBuf,
}

fn peer_entry(region: &str, name: &str, addr: SocketAddr) -> String {
    format!(
        "\n[[peer]]\nregion = \"{region}\"\nname = \"{name}\"\naddress = \"{}\"\n",
        url(addr)
    )
}

/// The one place the federation's topology is configured: who each node can reach and
/// who each coordinator clears with. Nodes keep no peers file: each follows its
/// province's coordinator, which publishes its cities in the federation directory and
/// relays the other province's through the national coordinator (docs/national.md).
/// The participants files say who each coordinator clears with.
fn configure_federation(layout: &Layout) -> anyhow::Result<FederationFiles> {
    let head = "# Written by `yidi demo --national` at every start.\n";
    let files = FederationFiles {
        directories: [
            layout.dir.join("directory-330000.toml"),
            layout.dir.join("directory-320000.toml"),
        ],
        national_directory: layout.dir.join("directory-national.toml"),
        participants: [
            layout.dir.join("participants-330000.toml"),
            layout.dir.join("participants-320000.toml"),
        ],
        national: layout.dir.join("participants-national.toml"),
    };
    let national = url(layout.national);
    for (k, p) in PROVINCES.iter().enumerate() {
        let addrs: Vec<String> = (0..p.cities.len())
            .map(|j| url(layout.nodes[k * 2 + j]))
            .collect();
        let lines: Vec<(&str, &str, &str)> = p
            .cities
            .iter()
            .zip(&addrs)
            .map(|(c, a)| (c.region, c.name, a.as_str()))
            .collect();
        let text = directory::for_cities(Some(&url(layout.provinces[k])), Some(&national), &lines);
        std::fs::write(&files.directories[k], format!("{head}{text}"))?;
        let mut text = String::from(head);
        for (j, c) in p.cities.iter().enumerate() {
            text.push_str(&peer_entry(c.region, c.name, layout.nodes[k * 2 + j]));
        }
        std::fs::write(&files.participants[k], text)?;
    }
    let provinces = directory::DirectoryFile {
        province: PROVINCES
            .iter()
            .zip(layout.provinces)
            .map(|(p, addr)| directory::ProvinceLine {
                province: p.code.to_owned(),
                name: p.name.to_owned(),
                coordinator: url(addr),
            })
            .collect(),
        ..Default::default()
    };
    std::fs::write(
        &files.national_directory,
        format!("{head}{}", provinces.to_toml()),
    )?;
    let mut text = String::from(head);
    for (p, addr) in PROVINCES.iter().zip(layout.provinces) {
        text.push_str(&peer_entry(p.code, p.name, addr));
    }
    std::fs::write(&files.national, text)?;
    Ok(files)
}

/// Waits until every node holds both provinces' directory documents (its cache file,
/// written when a refresh brought something new, lists the provinces it holds), so that
/// the first cross-province visit finds its home node.
async fn wait_for_directory(layout: &Layout) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    for (_, c) in cities() {
        let cache = layout.dir.join(c.region).join(directory::CACHE_FILE);
        while !holds_every_province(&cache) {
            if Instant::now() > until {
                bail!(
                    "node {} has not received the federation directory of both provinces within 30 s (see {})",
                    c.region,
                    cache.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Whether a node's directory cache holds a document of every demo province.
fn holds_every_province(cache: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(cache) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let held: Vec<&str> = v["directories"]
        .as_array()
        .map(|d| d.iter().filter_map(|e| e["province"].as_str()).collect())
        .unwrap_or_default();
    PROVINCES.iter().all(|p| held.contains(&p.code))
}

/// Prepares `dir` (wiped: a national run always starts from empty stores; only a
/// directory the demo created is wiped).
fn prepare(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(super::MARKER);
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !marker.exists() {
            bail!(
                "{} exists and was not created by `yidi demo` (no {} file); choose another --data-dir",
                dir.display(),
                super::MARKER
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &marker,
        "This directory belongs to `yidi demo --national`; every run wipes it.\n",
    )?;
    Ok(())
}

// ------------------------------------------------------------------ pure checks

fn dec(s: &str) -> Decimal {
    money::parse(s, "amount", Sign::Any).unwrap_or_default()
}

/// Σ net of a statement.
fn sum_net(s: &proto::Statement) -> Decimal {
    s.nets.iter().map(|n| dec(&n.net)).sum()
}

/// A region's net in a statement (0 when it has no row).
fn net_of(s: &proto::Statement, region: &str) -> Decimal {
    s.nets
        .iter()
        .find(|n| n.region == region)
        .map_or(Decimal::ZERO, |n| dec(&n.net))
}

/// What the instructions pay into and out of the clearing account.
fn paid(s: &proto::Statement) -> (Decimal, Decimal) {
    let into = s
        .instructions
        .iter()
        .filter(|i| i.to_region == s.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    let out = s
        .instructions
        .iter()
        .filter(|i| i.from_region == s.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    (into, out)
}

/// A ledger's net toward counterparties across (`cross`) or within the province.
fn ledger_net(l: &proto::GetLedgerResponse, cross: bool) -> Decimal {
    l.positions
        .iter()
        .filter(|p| p.cross_province == cross)
        .map(|p| dec(&p.net))
        .sum()
}

/// Σ of the province's cities' nets in its statement of a national round.
fn cities_net(s: &proto::Statement) -> Decimal {
    s.nets
        .iter()
        .filter(|n| n.region != NATIONAL.as_str())
        .map(|n| dec(&n.net))
        .sum()
}

/// An outpatient bill of the demo: one class A line and one class B line, varied by
/// the person's number.
fn bill(region: &str, k: u16) -> Vec<proto::FeeLine> {
    let a = money::from_fen(80_000 + i64::from(k) * 13_750);
    let b = money::from_fen(12_000 + i64::from(k) * 2_500);
    [("1", "A", a), ("2", "B", b)]
        .into_iter()
        .map(|(no, class, amount)| proto::FeeLine {
            line_no: no.into(),
            item_code: format!("{region}-{class}"),
            quantity: "1".into(),
            unit_price: money::format(amount),
            amount: money::format(amount),
            service_date: String::new(),
        })
        .collect()
}

// ------------------------------------------------------------------ parties

/// Clients of the demo, each with its party's certificate.
struct Clients {
    pki: Pki,
    layout: Layout,
}

impl Clients {
    fn admin(&self, i: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
        let (_, c) = cities().nth(i).context("city")?;
        let tls = self.pki.client(&Identity::Operator {
            region: RegionCode::parse_city(c.region, "region")?,
            role: Role::Admin,
        })?;
        Ok(AdminServiceClient::new(channel(
            self.layout.nodes[i],
            &tls,
        )?))
    }

    fn hospital(&self, i: usize) -> anyhow::Result<HospitalServiceClient<Channel>> {
        let (_, c) = cities().nth(i).context("city")?;
        let tls = self.pki.client(&Identity::Institution {
            region: RegionCode::parse_city(c.region, "region")?,
            code: c.hospital.to_owned(),
        })?;
        Ok(HospitalServiceClient::new(channel(
            self.layout.nodes[i],
            &tls,
        )?))
    }

    fn coordinator(&self, code: &str) -> anyhow::Result<CoordinatorServiceClient<Channel>> {
        let region = RegionCode::parse(code, "region")?;
        let addr = if region.is_national() {
            self.layout.national
        } else {
            self.layout.province_addr(code)
        };
        let tls = self.pki.client(&Identity::Operator {
            region,
            role: Role::Clearing,
        })?;
        Ok(CoordinatorServiceClient::new(channel(addr, &tls)?).max_decoding_message_size(64 << 20))
    }
}

async fn start(
    clients: &Clients,
    files: &FederationFiles,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<(String, tokio::task::JoinHandle<yidi_node::Result<()>>)>> {
    let layout = &clients.layout;
    let mut tasks = Vec::new();
    let mut listeners: Vec<TcpListener> = Vec::new();
    for a in layout.nodes {
        listeners.push(bind(a.port(), "a node").await?);
    }
    for ((p, c), l) in cities().zip(listeners) {
        let region = RegionCode::parse_city(c.region, "region")?;
        let mut cfg = NodeConfig::new(region, c.name, layout.dir.join(c.region));
        cfg.security = clients.pki.server(&Identity::Node { region })?;
        cfg.listen = l.local_addr()?;
        cfg.directory = vec![url(layout.province_addr(p.code))];
        cfg.directory_refresh = DIRECTORY_REFRESH;
        cfg.coordinator = Some(url(layout.province_addr(p.code)));
        cfg.drain = Duration::from_secs(5);
        tasks.push((
            format!("node {}", c.region),
            tokio::spawn(yidi_node::server::serve(l, stopped(stop.clone()), cfg)),
        ));
    }
    let coordinators = [
        (
            PROVINCES[0].code,
            layout.provinces[0],
            &files.participants[0],
            &files.directories[0],
        ),
        (
            PROVINCES[1].code,
            layout.provinces[1],
            &files.participants[1],
            &files.directories[1],
        ),
        (
            NATIONAL.as_str(),
            layout.national,
            &files.national,
            &files.national_directory,
        ),
    ];
    for (code, addr, participants, directory_file) in coordinators {
        let l = bind(addr.port(), "a coordinator").await?;
        let region = RegionCode::parse(code, "region")?;
        let mut cc = CoordinatorConfig::new(region, layout.dir.join(code), participants.clone());
        cc.listen = addr;
        cc.security = clients
            .pki
            .server(&Identity::Coordinator { province: region })?;
        cc.drain = Duration::from_secs(5);
        cc.run_interval = Duration::from_secs(1);
        cc.directory_file = Some(directory_file.clone());
        cc.directory_refresh = DIRECTORY_REFRESH;
        tasks.push((
            format!("coordinator {code}"),
            tokio::spawn(yidi_node::coordinator::serve(l, stopped(stop.clone()), cc)),
        ));
    }
    Ok(tasks)
}

/// Loads one city: its employee policy, its level-3 hospital, two catalogue items and
/// [`PERSONS`] employees, each filed for the city it will be treated in.
async fn load_city(clients: &Clients, i: usize) -> anyhow::Result<Vec<(String, usize)>> {
    let (_, c) = cities().nth(i).context("city")?;
    let mut admin = clients.admin(i)?;
    let policy = Policy::from_toml(c.employee_policy)
        .with_context(|| format!("{}: the demo policy", c.region))?;
    admin
        .publish_policy(proto::PublishPolicyRequest {
            request_id: format!("natdemo-policy-{}", c.region),
            policy_json: policy.to_canonical_json(),
            note: "yidi demo --national".into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("{}: publishing the policy", c.region))?;
    admin
        .upsert_institution(proto::UpsertInstitutionRequest {
            request_id: format!("natdemo-inst-{}", c.hospital),
            institution: Some(proto::Institution {
                code: c.hospital.into(),
                name: format!("{} 三级医院", c.name),
                kind: proto::InstitutionKind::Hospital as i32,
                level: proto::HospitalLevel::HospitalLevel3 as i32,
                agreement_status: proto::AgreementStatus::Active as i32,
                agreement_from: "2024-01-01".into(),
                agreement_to: String::new(),
            }),
        })
        .await
        .with_context(|| format!("{}: registering {}", c.region, c.hospital))?;
    for (class, ratio) in [
        (proto::CatalogueClass::A, "0"),
        (proto::CatalogueClass::B, "0.10"),
    ] {
        let code = format!(
            "{}-{}",
            c.region,
            if class == proto::CatalogueClass::A {
                "A"
            } else {
                "B"
            }
        );
        admin
            .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
                request_id: format!("natdemo-item-{code}"),
                item: Some(proto::CatalogueItem {
                    code: code.clone(),
                    name: format!("{code} 药品"),
                    category: proto::ItemCategory::Drug as i32,
                    class: class as i32,
                    first_selfpay_ratio: ratio.into(),
                    price_cap: String::new(),
                    unit: "盒".into(),
                    valid_from: "2024-01-01".into(),
                    valid_to: String::new(),
                    free_of_charge: false,
                }),
            })
            .await
            .with_context(|| format!("{}: catalogue item {code}", c.region))?;
    }
    let others: Vec<usize> = (0..4).filter(|j| *j != i).collect();
    let birth = chrono::NaiveDate::from_ymd_opt(1968, 6, 1).context("date")?;
    let mut out = Vec::new();
    for k in 0..PERSONS {
        let id = idnum::make(&format!("{}02", &c.region[..4]), birth, 100 + k);
        admin
            .create_person(proto::CreatePersonRequest {
                request_id: format!("natdemo-person-{id}"),
                id_number: id.clone(),
                fields: Some(proto::PersonFields {
                    name: format!("参保人{}{k}", &c.region[..4]),
                    card_no: format!("N{}", &id[6..]),
                    insurance_type: proto::InsuranceType::Employee as i32,
                    person_type: proto::PersonType::InService as i32,
                    civil_servant: false,
                    status: proto::PersonStatus::Active as i32,
                    account_balance: "0.00".into(),
                    enrolled_since: "2020-01-01".into(),
                }),
            })
            .await
            .with_context(|| format!("{}: person {id}", c.region))?;
        let treatment = others[usize::from(k) % others.len()];
        let (_, t) = cities().nth(treatment).context("city")?;
        let f = admin
            .apply_filing(proto::ApplyFilingRequest {
                request_id: format!("natdemo-filing-{id}"),
                id_number: id.clone(),
                filing_type: proto::FilingType::LongTermResident as i32,
                treatment_region: t.region.into(),
                institutions: Vec::new(),
                valid_from: "2026-01-01".into(),
                valid_to: String::new(),
                note: String::new(),
            })
            .await
            .with_context(|| format!("{}: filing of {id}", c.region))?
            .into_inner();
        admin
            .approve_filing(proto::ReviewFilingRequest {
                request_id: format!("natdemo-approve-{}", f.filing_id),
                filing_id: f.filing_id,
                note: "同意备案".into(),
            })
            .await
            .with_context(|| format!("{}: approving the filing of {id}", c.region))?;
        out.push((id, treatment));
    }
    Ok(out)
}

/// One visit of `id` (insured in city `home`) at city `treatment`'s hospital: open,
/// bill, settle. Returns the settlement.
async fn visit(
    clients: &Clients,
    home: usize,
    treatment: usize,
    id: &str,
    k: u16,
) -> anyhow::Result<proto::Settlement> {
    let (_, h) = cities().nth(home).context("city")?;
    let (_, t) = cities().nth(treatment).context("city")?;
    let mut desk = clients.hospital(treatment)?;
    let tag = format!("{id}-{}", t.region);
    let v = desk
        .open_visit(proto::OpenVisitRequest {
            request_id: format!("natdemo-open-{tag}"),
            institution_code: t.hospital.into(),
            id_number: id.into(),
            home_region: h.region.into(),
            visit_kind: proto::VisitKind::Outpatient as i32,
            external_visit_no: format!("MZ-{tag}"),
            admitted_at: yidi_common::period::now_rfc3339(),
            diagnosis_code: "J06.9".into(),
        })
        .await
        .with_context(|| format!("{tag}: open visit"))?
        .into_inner();
    desk.upload_fees(proto::UploadFeesRequest {
        request_id: format!("natdemo-fees-{tag}"),
        institution_code: t.hospital.into(),
        visit_id: v.visit_id.clone(),
        lines: bill(t.region, k),
    })
    .await
    .with_context(|| format!("{tag}: fees"))?;
    Ok(desk
        .settle(proto::SettleRequest {
            request_id: format!("natdemo-settle-{tag}"),
            institution_code: t.hospital.into(),
            visit_id: v.visit_id,
            use_account: false,
        })
        .await
        .with_context(|| format!("{tag}: settle"))?
        .into_inner())
}

/// Waits until every node's outbox is delivered.
async fn drained(clients: &Clients) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    for i in 0..4 {
        let mut admin = clients.admin(i)?;
        loop {
            let s = admin
                .get_outbox(proto::GetOutboxRequest { list: 0 })
                .await?
                .into_inner();
            if s.depth == 0 {
                break;
            }
            if Instant::now() > until {
                bail!("outbox of node {i} not delivered within 60 s: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Opens a round of `period` at `code`, runs it to CONFIRMED, records every
/// instruction's transfer and runs it until every participant marked it cleared.
async fn clear(
    clients: &Clients,
    code: &str,
    period: &str,
) -> anyhow::Result<(proto::Round, proto::Statement)> {
    let mut c = clients.coordinator(code)?;
    let opened = c
        .open_round(proto::OpenRoundRequest {
            request_id: format!("natdemo-open-{code}-{period}"),
            period: period.into(),
            early: true,
            allow_empty: true,
        })
        .await
        .with_context(|| format!("{code}: opening the round of {period}"))?
        .into_inner();
    let id = opened.round_id;
    let run = |c: &mut CoordinatorServiceClient<Channel>| {
        let req = proto::RoundRequest {
            round_id: id.clone(),
            ..Default::default()
        };
        let mut c = c.clone();
        async move { c.run_round(req).await.map(tonic::Response::into_inner) }
    };
    let until = Instant::now() + Duration::from_secs(120);
    let mut r = run(&mut c).await?;
    while r.state != "CONFIRMED" && r.state != "SETTLED" {
        if Instant::now() > until || r.state == "DISPUTED" || r.state == "ABORTED" {
            bail!("{code}: round {id} is {} ({})", r.state, r.note);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        r = run(&mut c).await?;
    }
    let statement = c
        .get_statement(proto::RoundRequest {
            round_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for i in &statement.instructions {
        r = c
            .record_transfer(proto::RecordTransferRequest {
                request_id: format!("natdemo-xfer-{id}-{}-{}", i.from_region, i.to_region),
                round_id: id.clone(),
                from_region: i.from_region.clone(),
                to_region: i.to_region.clone(),
                amount: i.amount.clone(),
                reference: format!("DEMO-{}-{}-{}", id, i.from_region, i.to_region),
            })
            .await?
            .into_inner();
    }
    while !(r.state == "SETTLED" && r.missing.is_empty()) {
        if Instant::now() > until {
            bail!(
                "{code}: round {id} not cleared everywhere ({}: {:?})",
                r.state,
                r.missing
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        r = run(&mut c).await?;
    }
    Ok((r, statement))
}

fn print_statement(title: &str, s: &proto::Statement, gross: bool) {
    println!(
        "\n{title} — round {} ({}), clearing account {}",
        s.round_id, s.period, s.clearing_account
    );
    let mut t = crate::cli::output::table();
    t.set_header(["region", "receivable", "payable", "net"]);
    for n in &s.nets {
        t.add_row([&n.region, &n.receivable, &n.payable, &n.net]);
    }
    println!("{t}");
    let mut t = crate::cli::output::table();
    t.set_header(["#", "from", "to", "amount"]);
    for (k, i) in s.instructions.iter().enumerate() {
        t.add_row([
            (k + 1).to_string(),
            i.from_region.clone(),
            i.to_region.clone(),
            i.amount.clone(),
        ]);
    }
    println!("{t}");
    if gross {
        let mut t = crate::cli::output::table();
        t.set_header(["owes", "to", "amount", "records"]);
        for g in &s.gross {
            t.add_row([
                g.debtor.clone(),
                g.creditor.clone(),
                g.amount.clone(),
                g.count.to_string(),
            ]);
        }
        println!("cross-province gross, per city and counterparty province\n{t}");
    }
}

/// Prints one CHECK line; returns whether it held.
fn check(ok: bool, line: String) -> bool {
    println!("CHECK {line} {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// `yidi demo --national`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = args.data_dir.join("national");
    prepare(&dir)?;
    let layout = Layout::new(dir.clone(), args.base_port);
    let files = configure_federation(&layout)?;
    let clients = Clients {
        pki: tokio::task::block_in_place(|| Pki::open(&dir))?,
        layout,
    };
    println!(
        "yidi demo --national: Zhejiang 330000 (Hangzhou 330100, Ningbo 330200), Jiangsu 320000 (Nanjing 320100, Suzhou 320500), national coordinator 000000"
    );
    // Every certificate before anything serves: issuing is blocking file work.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for i in 0..4 {
            clients.admin(i)?;
            clients.hospital(i)?;
        }
        for code in ["330000", "320000", "000000"] {
            clients.coordinator(code)?;
        }
        Ok(())
    })?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks = start(&clients, &files, &rx).await?;
    let outcome = drive(&clients).await;
    if matches!(outcome, Ok(true)) && !args.once {
        println!(
            "\nthe federation keeps running until Ctrl-C: the national coordinator on {}, Zhejiang's on {}, Jiangsu's on {}, the nodes on {} (certificates under {})",
            url(clients.layout.national),
            url(clients.layout.provinces[0]),
            url(clients.layout.provinces[1]),
            clients
                .layout
                .nodes
                .iter()
                .map(|a| url(*a))
                .collect::<Vec<_>>()
                .join(", "),
            dir.join("certs").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(true);
    for (name, t) in tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(Ok(()))) => {}
            other => tracing::warn!(party = %name, "stopped with {other:?}"),
        }
    }
    let passed = outcome?;
    println!(
        "\nyidi demo --national: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !passed {
        bail!("a CHECK failed (see above)");
    }
    Ok(())
}

/// Loads, settles, clears and checks; Ok(false) when a check failed.
async fn drive(clients: &Clients) -> anyhow::Result<bool> {
    // Wait until every party answers.
    let until = Instant::now() + Duration::from_secs(30);
    for i in 0..4 {
        let mut a = clients.admin(i)?;
        while a.get_node_info(proto::GetNodeInfoRequest {}).await.is_err() {
            if Instant::now() > until {
                bail!("node {i} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_for_directory(&clients.layout).await?;
    println!(
        "every node found all four cities in the federation directory (each province's coordinator publishes its cities; the national coordinator relays them)"
    );
    let mut people = Vec::new();
    for i in 0..4 {
        people.push(load_city(clients, i).await?);
    }
    println!(
        "loaded 4 cities: a policy, a level-3 hospital, 2 catalogue items and {PERSONS} filed employees each"
    );

    let mut settled = Vec::new();
    for (home, persons) in people.iter().enumerate() {
        for (k, (id, treatment)) in persons.iter().enumerate() {
            let k = u16::try_from(k).unwrap_or_default();
            let s = visit(clients, home, *treatment, id, k).await?;
            if s.state != "settled" {
                bail!("{id} at {treatment}: {} ({})", s.state, s.note);
            }
            settled.push((home, *treatment, s));
        }
    }
    let cross = settled.iter().filter(|(_, _, s)| s.cross_province).count();
    println!(
        "settled {} visits through HospitalService: {cross} across the province boundary, {} within a province",
        settled.len(),
        settled.len() - cross
    );
    // A cancellation and a 冲正 of cross-province claims.
    let mut crossing = settled.iter().filter(|(_, _, s)| s.cross_province);
    let (_, t1, s1) = crossing.next().context("a cross-province claim")?;
    let (_, t2, s2) = crossing.next().context("a second cross-province claim")?;
    let (_, tc1) = cities().nth(*t1).context("city")?;
    let (_, tc2) = cities().nth(*t2).context("city")?;
    let cancelled = clients
        .hospital(*t1)?
        .cancel_settlement(proto::CancelSettlementRequest {
            request_id: format!("natdemo-cancel-{}", s1.settlement_id),
            institution_code: tc1.hospital.into(),
            settlement_id: s1.settlement_id.clone(),
            reason: "患者要求撤销".into(),
        })
        .await?
        .into_inner();
    let reversed = clients
        .hospital(*t2)?
        .reverse_request(proto::ReverseRequestRequest {
            request_id: format!("natdemo-reverse-{}", s2.settlement_id),
            institution_code: tc2.hospital.into(),
            original_request_id: format!("natdemo-settle-{}-{}", s2.id_number, tc2.region),
        })
        .await?
        .into_inner();
    println!(
        "cancelled {} (reversal {}), 冲正 of {}: {}",
        s1.settlement_id, cancelled.settlement_id, s2.settlement_id, reversed.outcome
    );
    drained(clients).await?;
    let period = settled
        .first()
        .map(|(_, _, s)| s.period.clone())
        .context("no settlement")?;

    // Level 1: each province clears its own cities' pairs.
    let mut ok = true;
    let mut provincial = Vec::new();
    for p in &PROVINCES {
        let (r, s) = clear(clients, p.code, &period).await?;
        print_statement(
            &format!("provincial statement {} {}", p.code, p.name),
            &s,
            false,
        );
        ok &= check(
            sum_net(&s).is_zero() && statement_digest(&s) == s.digest,
            format!(
                "provincial {} round {}: Σ net = {} digest verified",
                p.code,
                r.round_id,
                money::format(sum_net(&s))
            ),
        );
        ok &= check(
            r.cleared.len() == 2,
            format!(
                "provincial {} round {} SETTLED cleared={}/2",
                p.code,
                r.round_id,
                r.cleared.len()
            ),
        );
        provincial.push(s);
    }
    // Level 2: the national round, province against province.
    let (nr, ns) = clear(clients, NATIONAL.as_str(), &period).await?;
    print_statement("national statement 000000", &ns, false);
    let (into, out) = paid(&ns);
    ok &= check(
        sum_net(&ns).is_zero() && into == out && statement_digest(&ns) == ns.digest,
        format!(
            "national round {}: Σ net = {} paid in {} = paid out {} digest verified",
            nr.round_id,
            money::format(sum_net(&ns)),
            money::format(into),
            money::format(out)
        ),
    );
    ok &= check(
        nr.cleared.len() == 2,
        format!(
            "national round {} SETTLED cleared={}/2",
            nr.round_id,
            nr.cleared.len()
        ),
    );
    for (k, p) in PROVINCES.iter().enumerate() {
        let ps = clients
            .coordinator(p.code)?
            .get_statement(proto::RoundRequest {
                round_id: nr.round_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        print_statement(
            &format!(
                "{} {}: the national round through the provincial account",
                p.code, p.name
            ),
            &ps,
            true,
        );
        ok &= check(
            cities_net(&ps) == net_of(&ns, p.code) && sum_net(&ps).is_zero(),
            format!(
                "{} cities' cross-province nets sum to its national net {} (Σ with 000000 = {})",
                p.code,
                money::format(net_of(&ns, p.code)),
                money::format(sum_net(&ps))
            ),
        );
        for (j, c) in p.cities.iter().enumerate() {
            let ledger = clients
                .admin(k * 2 + j)?
                .get_ledger(proto::GetLedgerRequest {
                    period: period.clone(),
                })
                .await?
                .into_inner();
            let (within, across) = (ledger_net(&ledger, false), ledger_net(&ledger, true));
            ok &= check(
                within == net_of(&provincial[k], c.region),
                format!(
                    "ledger {} within-province net={} provincial statement={}",
                    c.region,
                    money::format(within),
                    money::format(net_of(&provincial[k], c.region))
                ),
            );
            ok &= check(
                across == net_of(&ps, c.region),
                format!(
                    "ledger {} cross-province net={} national-round statement={}",
                    c.region,
                    money::format(across),
                    money::format(net_of(&ps, c.region))
                ),
            );
        }
    }
    Ok(ok)
}

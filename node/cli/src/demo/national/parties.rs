//! The parties of the national demo: starting them, loading each city, driving visits
//! across cities and provinces, and running a clearing round.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use yidi_common::{
    idnum,
    money::{self},
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
    identity::{Identity, Role},
};

use super::super::{bind, channel, pki::Pki, stopped, url};

use super::*;

/// An outpatient bill of the demo: one class A line and one class B line, varied by
/// the person's number.
pub(super) fn bill(region: &str, k: u16) -> Vec<proto::FeeLine> {
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
pub(super) struct Clients {
    pub(super) pki: Pki,
    pub(super) layout: Layout,
}

impl Clients {
    pub(super) fn admin(&self, i: usize) -> anyhow::Result<AdminServiceClient<Channel>> {
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

    pub(super) fn hospital(&self, i: usize) -> anyhow::Result<HospitalServiceClient<Channel>> {
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

    pub(super) fn coordinator(
        &self,
        code: &str,
    ) -> anyhow::Result<CoordinatorServiceClient<Channel>> {
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

pub(super) async fn start(
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
pub(super) async fn load_city(clients: &Clients, i: usize) -> anyhow::Result<Vec<(String, usize)>> {
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
pub(super) async fn visit(
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
pub(super) async fn drained(clients: &Clients) -> anyhow::Result<()> {
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
pub(super) async fn clear(
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

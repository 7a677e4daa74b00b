//! Test data through the real admin API: policies from `deploy/policies`, institutions,
//! catalogue items, persons and filings with exactly the values a test asserts on.

use chrono::NaiveDate;
use yidi_common::{idnum, policy::Policy, proto};

use crate::harness::TestNode;

fn rid(prefix: &str, key: &str) -> String {
    format!("{prefix}-{key}")
}

/// Publishes the node's deployed employee and resident policies.
pub async fn publish_policies(node: &TestNode) {
    let mut admin = node.admin().await;
    for kind in ["employee", "resident"] {
        let path = format!(
            "{}/../deploy/policies/{}-{kind}.toml",
            env!("CARGO_MANIFEST_DIR"),
            node.region
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let json = Policy::from_toml(&text)
            .expect("deployed policy")
            .to_canonical_json();
        admin
            .publish_policy(proto::PublishPolicyRequest {
                request_id: rid("policy", kind),
                policy_json: json,
                ..Default::default()
            })
            .await
            .expect("publish policy");
    }
}

/// Registers an institution with an active agreement since 2024.
pub async fn institution(
    node: &TestNode,
    code: &str,
    kind: proto::InstitutionKind,
    level: proto::HospitalLevel,
) {
    node.admin()
        .await
        .upsert_institution(proto::UpsertInstitutionRequest {
            request_id: rid("inst", code),
            institution: Some(proto::Institution {
                code: code.into(),
                name: format!("{code} test institution"),
                kind: kind as i32,
                level: level as i32,
                agreement_status: proto::AgreementStatus::Active as i32,
                agreement_from: "2024-01-01".into(),
                agreement_to: String::new(),
            }),
        })
        .await
        .expect("upsert institution");
}

/// Adds a catalogue item valid since 2024.
pub async fn item(
    node: &TestNode,
    code: &str,
    class: proto::CatalogueClass,
    ratio: &str,
    cap: &str,
) {
    node.admin()
        .await
        .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
            request_id: rid("item", code),
            item: Some(proto::CatalogueItem {
                code: code.into(),
                name: format!("{code} item"),
                category: proto::ItemCategory::Drug as i32,
                class: class as i32,
                first_selfpay_ratio: ratio.into(),
                price_cap: cap.into(),
                unit: "unit".into(),
                valid_from: "2024-01-01".into(),
                valid_to: String::new(),
                free_of_charge: false,
            }),
        })
        .await
        .expect("upsert catalogue item");
}

/// A valid ID number registered in `region`'s district `01`, born on `birth`.
#[must_use]
pub fn id_number(region: &str, birth: &str, seq: u16) -> String {
    let district = format!("{}{}", &region[..4], "02");
    idnum::make(
        &district,
        birth.parse::<NaiveDate>().expect("birth date"),
        seq,
    )
}

/// Enrols a person; returns the ID number.
pub async fn person(
    node: &TestNode,
    id_number: &str,
    insurance: proto::InsuranceType,
    person_type: proto::PersonType,
    balance: &str,
    civil_servant: bool,
) -> String {
    node.admin()
        .await
        .create_person(proto::CreatePersonRequest {
            request_id: rid("person", id_number),
            id_number: id_number.into(),
            fields: Some(proto::PersonFields {
                name: format!("测试{}", &id_number[14..]),
                card_no: format!("C{}", &id_number[6..]),
                insurance_type: insurance as i32,
                person_type: person_type as i32,
                civil_servant,
                status: proto::PersonStatus::Active as i32,
                account_balance: balance.into(),
                enrolled_since: "2020-01-01".into(),
            }),
        })
        .await
        .expect("create person");
    id_number.to_owned()
}

/// Applies for and approves a filing; returns its id.
pub async fn filing(
    node: &TestNode,
    id_number: &str,
    filing_type: proto::FilingType,
    treatment: &str,
    institutions: &[&str],
    valid_from: &str,
) -> String {
    let mut admin = node.admin().await;
    let f = admin
        .apply_filing(proto::ApplyFilingRequest {
            request_id: rid(
                "filing",
                &format!("{id_number}-{treatment}-{}", filing_type as i32),
            ),
            id_number: id_number.into(),
            filing_type: filing_type as i32,
            treatment_region: treatment.into(),
            institutions: institutions.iter().map(|s| (*s).to_owned()).collect(),
            valid_from: valid_from.into(),
            valid_to: String::new(),
            note: String::new(),
        })
        .await
        .expect("apply filing")
        .into_inner();
    admin
        .approve_filing(proto::ReviewFilingRequest {
            request_id: rid("approve", &f.filing_id),
            filing_id: f.filing_id.clone(),
            note: String::new(),
        })
        .await
        .expect("approve filing");
    f.filing_id
}

/// Like [`filing`], with an end date (inclusive): an expired filing for tests of
/// settlement after its validity.
pub async fn filing_until(
    node: &TestNode,
    id_number: &str,
    filing_type: proto::FilingType,
    treatment: &str,
    institutions: &[&str],
    valid_from: &str,
    valid_to: &str,
) -> String {
    let mut admin = node.admin().await;
    let f = admin
        .apply_filing(proto::ApplyFilingRequest {
            request_id: rid(
                "filing",
                &format!("{id_number}-{treatment}-{}-{valid_to}", filing_type as i32),
            ),
            id_number: id_number.into(),
            filing_type: filing_type as i32,
            treatment_region: treatment.into(),
            institutions: institutions.iter().map(|s| (*s).to_owned()).collect(),
            valid_from: valid_from.into(),
            valid_to: valid_to.into(),
            note: String::new(),
        })
        .await
        .expect("apply filing")
        .into_inner();
    admin
        .approve_filing(proto::ReviewFilingRequest {
            request_id: rid("approve", &f.filing_id),
            filing_id: f.filing_id.clone(),
            note: String::new(),
        })
        .await
        .expect("approve filing");
    f.filing_id
}

/// Registers an institution with the given agreement status and period (`to` may be
/// empty): for tests of institutions that may not settle.
pub async fn institution_with_agreement(
    node: &TestNode,
    code: &str,
    kind: proto::InstitutionKind,
    level: proto::HospitalLevel,
    status: proto::AgreementStatus,
    from: &str,
    to: &str,
) {
    node.admin()
        .await
        .upsert_institution(proto::UpsertInstitutionRequest {
            request_id: rid("inst", &format!("{code}-{}-{from}-{to}", status as i32)),
            institution: Some(proto::Institution {
                code: code.into(),
                name: format!("{code} test institution"),
                kind: kind as i32,
                level: level as i32,
                agreement_status: status as i32,
                agreement_from: from.into(),
                agreement_to: to.into(),
            }),
        })
        .await
        .expect("upsert institution");
}

/// The standard four catalogue items of a region's tests, codes prefixed with `prefix`
/// (e.g. `NB`): `-A` class A, `-B` class B with a 10% first self-pay share, `-C` class C,
/// `-CAP` class A with a unit price cap of 12.00.
pub async fn standard_items(node: &TestNode, prefix: &str) {
    item(
        node,
        &format!("{prefix}-A"),
        proto::CatalogueClass::A,
        "0",
        "",
    )
    .await;
    item(
        node,
        &format!("{prefix}-B"),
        proto::CatalogueClass::B,
        "0.10",
        "",
    )
    .await;
    item(
        node,
        &format!("{prefix}-C"),
        proto::CatalogueClass::C,
        "0",
        "",
    )
    .await;
    item(
        node,
        &format!("{prefix}-CAP"),
        proto::CatalogueClass::A,
        "0",
        "12.00",
    )
    .await;
}

/// A fee line.
#[must_use]
pub fn fee_line(no: &str, code: &str, qty: &str, price: &str, amount: &str) -> proto::FeeLine {
    proto::FeeLine {
        line_no: no.into(),
        item_code: code.into(),
        quantity: qty.into(),
        unit_price: price.into(),
        amount: amount.into(),
        service_date: String::new(),
    }
}

/// The home node's accumulators of a person for care in `treatment` in 2026 (through
/// PeerService.CheckEligibility, as a treatment node sees them).
pub async fn accumulators(
    home: &TestNode,
    id_number: &str,
    treatment: &str,
    institution: &str,
) -> proto::Accumulators {
    home.peer()
        .await
        .check_eligibility(proto::CheckEligibilityRequest {
            settle_date: String::new(),
            id_number: id_number.into(),
            institution_code: institution.into(),
            level: proto::HospitalLevel::HospitalLevel1 as i32,
            visit_kind: proto::VisitKind::Inpatient as i32,
            visit_date: "2026-06-01".into(),
            treatment_region: treatment.into(),
        })
        .await
        .expect("check eligibility")
        .into_inner()
        .accumulators
        .expect("accumulators")
}

/// A person's personal account balance at the home node (AdminService.GetPerson).
pub async fn account_balance(home: &TestNode, id_number: &str) -> String {
    home.admin()
        .await
        .get_person(proto::GetPersonRequest {
            id_number: id_number.into(),
            card_no: String::new(),
        })
        .await
        .expect("get person")
        .into_inner()
        .fields
        .expect("person fields")
        .account_balance
}

/// A node's ledger toward `counterparty` for `period` on `side` ("receivable" or
/// "payable"), with the claim ids (PeerService.PeriodDigest).
pub async fn period_digest(
    node: &TestNode,
    period: &str,
    counterparty: &str,
    side: &str,
) -> proto::PeriodDigestResponse {
    node.peer()
        .await
        .period_digest(proto::PeriodDigestRequest {
            period: period.into(),
            include_ids: true,
            counterparty: counterparty.into(),
            side: side.into(),
        })
        .await
        .expect("period digest")
        .into_inner()
}

/// The node's outbox (AdminService.GetOutbox), listing up to 100 items.
pub async fn outbox(node: &TestNode) -> proto::OutboxStatus {
    node.admin()
        .await
        .get_outbox(proto::GetOutboxRequest { list: 100 })
        .await
        .expect("get outbox")
        .into_inner()
}

/// Polls the outbox until it is empty; panics after `deadline`. Delivery is
/// asynchronous with backoff, so tests wait for it by asking, never by sleeping a guess.
pub async fn wait_outbox_drained(node: &TestNode, deadline: std::time::Duration) {
    let until = std::time::Instant::now() + deadline;
    loop {
        let s = outbox(node).await;
        if s.depth == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "outbox of {} not drained within {deadline:?}: {s:?}",
            node.region
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Institution codes of [`three_cities`].
pub mod inst {
    /// Hangzhou level-3 hospital.
    pub const HZ_H3: &str = "H33010001";
    /// Ningbo level-3 hospital.
    pub const NB_H3: &str = "H33020001";
    /// Ningbo level-1 hospital.
    pub const NB_H1: &str = "H33020002";
    /// Ningbo pharmacy.
    pub const NB_P: &str = "P33020001";
    /// Wenzhou level-2 hospital.
    pub const WZ_H2: &str = "H33030001";
    /// Wenzhou pharmacy.
    pub const WZ_P: &str = "P33030001";
}

/// The demo federation of the settlement tests: Hangzhou 330100, Ningbo 330200 and
/// Wenzhou 330300 with their deployed policies, the institutions of [`inst`] and the
/// [`standard_items`] of each city (`HZ-*`, `NB-*`, `WZ-*`).
pub async fn three_cities(
    root: &std::path::Path,
    adjust: impl Fn(&str, &mut yidi_node::config::NodeConfig),
) -> crate::harness::Federation {
    use proto::{HospitalLevel as Hl, InstitutionKind as Ik};
    let fed =
        crate::harness::Federation::start_with(root, &["330100", "330200", "330300"], adjust).await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    let (hz, nb, wz) = (fed.node("330100"), fed.node("330200"), fed.node("330300"));
    institution(hz, inst::HZ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    institution(nb, inst::NB_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    institution(nb, inst::NB_H1, Ik::Hospital, Hl::HospitalLevel1).await;
    institution(nb, inst::NB_P, Ik::Pharmacy, Hl::Ungraded).await;
    institution(wz, inst::WZ_H2, Ik::Hospital, Hl::HospitalLevel2).await;
    institution(wz, inst::WZ_P, Ik::Pharmacy, Hl::Ungraded).await;
    standard_items(hz, "HZ").await;
    standard_items(nb, "NB").await;
    standard_items(wz, "WZ").await;
    fed
}

/// [`three_cities`] with fault-injection hooks installed at `region` alone; the hooks
/// returned share their switches with that node's.
pub async fn three_cities_hooked_at(
    root: &std::path::Path,
    region: &str,
) -> (crate::harness::Federation, yidi_node::context::TestHooks) {
    let hooks = yidi_node::context::TestHooks::default();
    let installed = hooks.clone();
    let region = region.to_owned();
    let fed = three_cities(root, move |r, c| {
        if r == region {
            c.hooks = installed.clone();
        }
    })
    .await;
    (fed, hooks)
}

/// An institution's desk at its local node: the HospitalService calls of a test, with
/// the institution code filled in.
pub struct Desk {
    pub client: proto::hospital_service_client::HospitalServiceClient<tonic::transport::Channel>,
    pub inst: String,
}

impl Desk {
    /// A desk of `inst` at `node`.
    pub async fn at(node: &TestNode, inst: &str) -> Self {
        Self {
            client: node.hospital().await,
            inst: inst.to_owned(),
        }
    }

    /// OpenVisit for a person of `home`, admitted at `admitted_at` (RFC 3339).
    pub async fn open(
        &mut self,
        rid: &str,
        id_number: &str,
        home: &str,
        kind: proto::VisitKind,
        admitted_at: &str,
    ) -> Result<proto::Visit, tonic::Status> {
        self.client
            .open_visit(self.open_req(rid, id_number, home, kind, admitted_at))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The OpenVisit request [`Desk::open`] sends.
    #[must_use]
    pub fn open_req(
        &self,
        rid: &str,
        id_number: &str,
        home: &str,
        kind: proto::VisitKind,
        admitted_at: &str,
    ) -> proto::OpenVisitRequest {
        proto::OpenVisitRequest {
            request_id: rid.into(),
            institution_code: self.inst.clone(),
            id_number: id_number.into(),
            home_region: home.into(),
            visit_kind: kind as i32,
            external_visit_no: format!("EXT-{rid}"),
            admitted_at: admitted_at.into(),
            diagnosis_code: "E11.9".into(),
        }
    }

    /// UploadFees.
    pub async fn fees(
        &mut self,
        rid: &str,
        visit_id: &str,
        lines: Vec<proto::FeeLine>,
    ) -> Result<proto::UploadFeesResponse, tonic::Status> {
        self.client
            .upload_fees(proto::UploadFeesRequest {
                request_id: rid.into(),
                institution_code: self.inst.clone(),
                visit_id: visit_id.into(),
                lines,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// CloseVisit (discharge) on 2026-03-20.
    pub async fn discharge(
        &mut self,
        rid: &str,
        visit_id: &str,
    ) -> Result<proto::Visit, tonic::Status> {
        self.client
            .close_visit(proto::CloseVisitRequest {
                request_id: rid.into(),
                institution_code: self.inst.clone(),
                visit_id: visit_id.into(),
                discharged_at: "2026-03-20T10:00:00+08:00".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The Settle / PreSettle request of a visit.
    #[must_use]
    pub fn settle_req(&self, rid: &str, visit_id: &str, use_account: bool) -> proto::SettleRequest {
        proto::SettleRequest {
            request_id: rid.into(),
            institution_code: self.inst.clone(),
            visit_id: visit_id.into(),
            use_account,
        }
    }

    /// Settle.
    pub async fn settle(
        &mut self,
        rid: &str,
        visit_id: &str,
        use_account: bool,
    ) -> Result<proto::Settlement, tonic::Status> {
        let req = self.settle_req(rid, visit_id, use_account);
        self.client
            .settle(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// PreSettle.
    pub async fn pre_settle(
        &mut self,
        visit_id: &str,
        use_account: bool,
    ) -> Result<proto::Settlement, tonic::Status> {
        let req = self.settle_req("presettle", visit_id, use_account);
        self.client
            .pre_settle(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// CancelSettlement.
    pub async fn cancel(
        &mut self,
        rid: &str,
        settlement_id: &str,
        reason: &str,
    ) -> Result<proto::Settlement, tonic::Status> {
        self.client
            .cancel_settlement(proto::CancelSettlementRequest {
                request_id: rid.into(),
                institution_code: self.inst.clone(),
                settlement_id: settlement_id.into(),
                reason: reason.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// ReverseRequest (冲正) of `original`.
    pub async fn reverse(
        &mut self,
        rid: &str,
        original: &str,
    ) -> Result<proto::ReverseRequestResponse, tonic::Status> {
        self.client
            .reverse_request(proto::ReverseRequestRequest {
                request_id: rid.into(),
                institution_code: self.inst.clone(),
                original_request_id: original.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetSettlement.
    pub async fn get(&mut self, settlement_id: &str) -> Result<proto::Settlement, tonic::Status> {
        self.client
            .get_settlement(proto::GetSettlementRequest {
                institution_code: self.inst.clone(),
                settlement_id: settlement_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every settlement record of this institution (any settlement date).
    pub async fn list(&mut self) -> Vec<proto::Settlement> {
        self.client
            .list_settlements(proto::ListSettlementsRequest {
                institution_code: self.inst.clone(),
                from_date: "2000-01-01".into(),
                to_date: "2099-12-31".into(),
                page: Some(proto::PageRequest {
                    page_size: 1000,
                    page_token: String::new(),
                }),
            })
            .await
            .expect("list settlements")
            .into_inner()
            .settlements
    }
}

/// A node's count of calls to a peer in its metrics text (`yidi_peer_calls_total`), or
/// with `code` (`"aborted"`, …) of the calls that failed with it.
#[must_use]
pub fn peer_calls(metrics: &str, peer: &str, method: &str, code: Option<&str>) -> u64 {
    let (family, code) = match code {
        None => ("yidi_peer_calls_total{", String::new()),
        Some(c) => ("yidi_peer_call_errors_total{", format!(r#"code="{c}""#)),
    };
    let (peer, method) = (format!(r#"peer="{peer}""#), format!(r#"method="{method}""#));
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(family) && l.contains(&peer) && l.contains(&method) && l.contains(&code)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The amounts of a split by NHSA field name, for compact exact assertions.
#[must_use]
pub fn split_amounts(s: &proto::Split) -> Vec<(&'static str, String)> {
    vec![
        ("medfee_sumamt", s.medfee_sumamt.clone()),
        ("fulamt_ownpay_amt", s.fulamt_ownpay_amt.clone()),
        ("overlmt_selfpay", s.overlmt_selfpay.clone()),
        ("preselfpay_amt", s.preselfpay_amt.clone()),
        ("inscp_scp_amt", s.inscp_scp_amt.clone()),
        ("act_pay_dedc", s.act_pay_dedc.clone()),
        ("pool_ratio", s.pool_ratio.clone()),
        ("hifp_pay", s.hifp_pay.clone()),
        ("hifmi_pay", s.hifmi_pay.clone()),
        ("hifob_pay", s.hifob_pay.clone()),
        ("cvlserv_pay", s.cvlserv_pay.clone()),
        ("fund_pay_sumamt", s.fund_pay_sumamt.clone()),
        ("psn_part_amt", s.psn_part_amt.clone()),
        ("acct_pay", s.acct_pay.clone()),
        ("psn_cash_pay", s.psn_cash_pay.clone()),
    ]
}

/// Asserts the named amounts of a split (every other amount must be `0.00`, the ratio
/// excepted, which is asserted only when named): a split's every number is checked.
#[track_caller]
pub fn assert_split(s: &proto::Split, expected: &[(&str, &str)]) {
    for (name, _) in expected {
        assert!(
            split_amounts(s).iter().any(|(n, _)| n == name),
            "unknown split field {name}"
        );
    }
    let got: Vec<(String, String)> = split_amounts(s)
        .into_iter()
        .filter(|(n, v)| {
            expected.iter().any(|(e, _)| e == n) || (*n != "pool_ratio" && v != "0.00")
        })
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let order = |n: &str| split_amounts(s).iter().position(|(m, _)| *m == n);
    want.sort_by_key(|(n, _)| order(n));
    assert_eq!(got, want, "split amounts (trace: {:#?})", s.trace);
}

/// Accumulators as (pool_paid, outpatient_pool_paid, chronic_pool_paid,
/// serious_illness_paid, outpatient_deductible_paid, admissions, inscope_total, version).
#[must_use]
pub fn acc_tuple(a: &proto::Accumulators) -> (&str, &str, &str, &str, &str, u32, &str, u64) {
    (
        a.pool_paid.as_str(),
        a.outpatient_pool_paid.as_str(),
        a.chronic_pool_paid.as_str(),
        a.serious_illness_paid.as_str(),
        a.outpatient_deductible_paid.as_str(),
        a.admissions,
        a.inscope_total.as_str(),
        a.version,
    )
}

// ------------------------------------------------------------------ settlement scenes

/// When the settlement tests' outpatient visits are opened.
pub const VISIT_OPENED: &str = "2026-03-10T09:00:00+08:00";

/// An employee in service of `home`'s region (account `account`), filed long-term
/// resident in `filed_for` from 2026-01-01: the patient most of these tests treat in
/// another city.
pub async fn filed_employee(
    home: &TestNode,
    birth: &str,
    seq: u16,
    account: &str,
    filed_for: &str,
) -> String {
    let region = home.region.as_str().to_owned();
    let id = person(
        home,
        &id_number(&region, birth, seq),
        proto::InsuranceType::Employee,
        proto::PersonType::InService,
        account,
        false,
    )
    .await;
    filing(
        home,
        &id,
        proto::FilingType::LongTermResident,
        filed_for,
        &[],
        "2026-01-01",
    )
    .await;
    id
}

/// An outpatient visit of `id` (insured in `home`) opened at the desk at
/// [`VISIT_OPENED`], billed one line of `amount` of catalogue item NB-A.
pub async fn billed_visit(
    desk: &mut Desk,
    tag: &str,
    id: &str,
    home: &str,
    amount: &str,
) -> proto::Visit {
    let v = desk
        .open(
            &format!("ov-{tag}"),
            id,
            home,
            proto::VisitKind::Outpatient,
            VISIT_OPENED,
        )
        .await
        .unwrap();
    desk.fees(
        &format!("fees-{tag}"),
        &v.visit_id,
        vec![fee_line("1", "NB-A", "1", amount, amount)],
    )
    .await
    .unwrap();
    v
}

/// A Hangzhou employee's 2000.00 outpatient bill at Ningbo's level-3 hospital, account
/// 1000.00: deductible 1000.00, pooled 70% × 1000.00 = 700.00, account 1000.00, cash
/// 300.00.
pub fn settled_2000_at_hz_rates(s: &proto::Settlement) {
    assert_eq!(s.state, "settled");
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "2000.00"),
            ("inscp_scp_amt", "2000.00"),
            ("act_pay_dedc", "1000.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "700.00"),
            ("fund_pay_sumamt", "700.00"),
            ("psn_part_amt", "1300.00"),
            ("acct_pay", "1000.00"),
            ("psn_cash_pay", "300.00"),
        ],
    );
}

//! Settlement flows end to end on three in-process nodes (Hangzhou 330100, Ningbo 330200,
//! Wenzhou 330300), with every amount worked out by hand from `deploy/policies/*.toml`
//! in a comment next to its assertion: outpatient (annual deductible across visits),
//! pharmacy (personal account, pooled and not), chronic (up to its cap), inpatient
//! (serious-illness tier, civil-servant subsidy), same-city, unfiled (−20 pp), referral,
//! named institutions; cancel, 冲正, duplicate and modified-duplicate requests, and the
//! hospital's reconciliation (3201/3202). Each amount is checked at the treatment node
//! (the split), at the home node (accumulators, account) and in both ledgers.

use std::time::Duration;

use tonic::Code;
use yidi_common::proto::{
    self, FilingType as Ft, InsuranceType as It, PersonType as Pt, VisitKind as Vk,
};
use yidi_tests::{
    fixtures::{
        Desk, VISIT_OPENED as ADMITTED, acc_tuple, account_balance, accumulators, assert_split,
        billed_visit, fee_line as line, filed_employee, filing, id_number, inst, outbox,
        period_digest, person, settled_2000_at_hz_rates, three_cities, wait_outbox_drained,
    },
    harness::{Federation, TestNode},
};

const HZ: &str = "330100";
const NB: &str = "330200";
const WZ: &str = "330300";

async fn federation(root: &std::path::Path) -> Federation {
    three_cities(root, |_, _| {}).await
}

/// Both ledgers of a pair agree for the settlement's period: same count, sum, digest and
/// ids; returns (count, sum) for exact assertions.
async fn ledgers_agree(
    treatment: &TestNode,
    home: &TestNode,
    period: &str,
) -> (u64, String, Vec<String>) {
    let recv = period_digest(treatment, period, home.region.as_str(), "receivable").await;
    let pay = period_digest(home, period, treatment.region.as_str(), "payable").await;
    assert_eq!(
        (recv.count, &recv.sum, &recv.digest, &recv.claim_ids),
        (pay.count, &pay.sum, &pay.digest, &pay.claim_ids),
        "receivable of {} and payable of {} differ",
        treatment.region,
        home.region
    );
    let mut ids = recv.claim_ids.clone();
    ids.sort();
    (recv.count, recv.sum, ids)
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpatient_annual_deductible_runs_across_visits_and_the_account_pays() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = person(
        hz,
        &id_number(HZ, "1980-05-06", 1),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;

    // Visit 1: 850.00 = class C 50.00 + class-B first self-pay 10% × 200.00 = 20.00
    // + in scope 600.00 + 180.00 = 780.00. Hangzhou's annual outpatient deductible for
    // in-service employees is 1000.00: all 780.00 in scope goes to it, the pooled fund
    // (70%, level 3, long-term resident: no cut) pays 70% × 0 = 0. Personal share 850.00,
    // all of it from the account (scope personal_share, balance 1000.00).
    let v1 = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    let up = desk
        .fees(
            "fees-1",
            &v1.visit_id,
            vec![
                line("1", "NB-A", "1", "600.00", "600.00"),
                line("2", "NB-B", "2", "100.00", "200.00"),
                line("3", "NB-C", "1", "50.00", "50.00"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(up.total, "850.00");
    assert_eq!(
        (up.lines[1].class, up.lines[1].first_selfpay_ratio.as_str()),
        (proto::CatalogueClass::B as i32, "0.10")
    );
    let s1 = desk.settle("settle-1", &v1.visit_id, true).await.unwrap();
    assert_eq!(
        (
            s1.state.as_str(),
            s1.home_region.as_str(),
            s1.treatment_region.as_str()
        ),
        ("settled", HZ, NB)
    );
    let split = s1.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::LongTermResident as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "850.00"),
            ("fulamt_ownpay_amt", "50.00"),
            ("preselfpay_amt", "20.00"),
            ("inscp_scp_amt", "780.00"),
            ("act_pay_dedc", "780.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "0.00"),
            ("fund_pay_sumamt", "0.00"),
            ("psn_part_amt", "850.00"),
            ("acct_pay", "850.00"),
            ("psn_cash_pay", "0.00"),
        ],
    );
    // Home: 1000.00 − 850.00 = 150.00 left; 780.00 of the deductible met.
    assert_eq!(account_balance(hz, &id).await, "150.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "780.00", 0, "780.00", 1)
    );

    // Visit 2: 1000.00 class A + 10 × 15.00 of an item capped at 12.00: 30.00 above the
    // cap is self-paid, 120.00 in scope; in scope 1120.00. Deductible left 1000.00 −
    // 780.00 = 220.00; pooled 70% × (1120.00 − 220.00) = 630.00 (Hangzhou has no
    // outpatient pooling cap). Personal share 1150.00 − 630.00 = 520.00: the account's
    // 150.00, cash 370.00. Serious illness starts at 20000.00 of personal share: nothing.
    let v2 = desk
        .open("ov-2", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-2",
        &v2.visit_id,
        vec![
            line("1", "NB-A", "1", "1000.00", "1000.00"),
            line("2", "NB-CAP", "10", "15.00", "150.00"),
        ],
    )
    .await
    .unwrap();
    let pre = desk.pre_settle(&v2.visit_id, true).await.unwrap();
    assert_eq!(pre.state, "presettled");
    let s2 = desk.settle("settle-2", &v2.visit_id, true).await.unwrap();
    let split = s2.split.clone().unwrap();
    assert_eq!(
        pre.split.unwrap(),
        split,
        "pre-settle predicts the settlement"
    );
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "1150.00"),
            ("overlmt_selfpay", "30.00"),
            ("inscp_scp_amt", "1120.00"),
            ("act_pay_dedc", "220.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "630.00"),
            ("fund_pay_sumamt", "630.00"),
            ("psn_part_amt", "520.00"),
            ("acct_pay", "150.00"),
            ("psn_cash_pay", "370.00"),
        ],
    );
    let capped = &split.lines[1];
    assert_eq!(
        (
            capped.reason.as_str(),
            capped.overlmt_selfpay.as_str(),
            capped.inscp_scp_amt.as_str()
        ),
        ("OVER_PRICE_CAP", "30.00", "120.00")
    );
    assert_eq!(desk.get(&s2.settlement_id).await.unwrap(), s2);

    assert_eq!(account_balance(hz, &id).await, "0.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "630.00", "630.00", "0.00", "0.00", "1000.00", 0, "1900.00", 2
        )
    );
    // Both ledgers: two claims (the first with a zero fund share), 630.00.
    let (count, sum, ids) = ledgers_agree(nb, hz, &s2.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (2, "630.00", sorted(&[&s1.settlement_id, &s2.settlement_id]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pharmacy_purchases_paid_from_the_personal_account() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));

    // Hangzhou: pharmacy purchases are not pooled; the account (scope personal_share)
    // pays the whole personal share up to its balance.
    let a = person(
        hz,
        &id_number(HZ, "1975-01-02", 2),
        It::Employee,
        Pt::InService,
        "100.00",
        false,
    )
    .await;
    filing(hz, &a, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_P).await;
    let v = desk
        .open("ov-a", &a, HZ, Vk::Pharmacy, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-a",
        &v.visit_id,
        vec![
            line("1", "NB-A", "2", "35.50", "71.00"),
            line("2", "NB-B", "3", "20.00", "60.00"),
            line("3", "NB-C", "1", "19.00", "19.00"),
        ],
    )
    .await
    .unwrap();
    // 150.00 = class C 19.00 + first self-pay 10% × 60.00 = 6.00 + in scope 71.00 +
    // 54.00 = 125.00. No fund pays; the account pays 100.00 (its balance), cash 50.00.
    let s = desk.settle("settle-a", &v.visit_id, true).await.unwrap();
    assert_eq!(s.state, "settled");
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "150.00"),
            ("fulamt_ownpay_amt", "19.00"),
            ("preselfpay_amt", "6.00"),
            ("inscp_scp_amt", "125.00"),
            ("pool_ratio", "0.00"),
            ("fund_pay_sumamt", "0.00"),
            ("psn_part_amt", "150.00"),
            ("acct_pay", "100.00"),
            ("psn_cash_pay", "50.00"),
        ],
    );
    assert_eq!(account_balance(hz, &a).await, "0.00");
    // Not pooled: no accumulator moves but the version (the claim was applied).
    let acc = accumulators(hz, &a, NB, inst::NB_P).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 1)
    );
    let (count, sum, ids) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (1, "0.00", vec![s.settlement_id.clone()])
    );

    // Ningbo: pharmacy purchases are pooled with outpatient care (annual deductible
    // 300.00 for retirees, 55% at pharmacies); the account pays the catalogue part of the
    // personal share only (scope in_scope_share).
    let b = person(
        nb,
        &id_number(NB, "1955-07-08", 3),
        It::Employee,
        Pt::Retired,
        "1000.00",
        false,
    )
    .await;
    filing(nb, &b, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let mut desk = Desk::at(wz, inst::WZ_P).await;
    let v = desk
        .open("ov-b", &b, NB, Vk::Pharmacy, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-b",
        &v.visit_id,
        vec![
            line("1", "WZ-A", "1", "500.00", "500.00"),
            line("2", "WZ-C", "1", "100.00", "100.00"),
        ],
    )
    .await
    .unwrap();
    // In scope 500.00; deductible 300.00; pooled 55% × 200.00 = 110.00. Personal share
    // 600.00 − 110.00 = 490.00, of which the account may pay 490.00 − class C 100.00 =
    // 390.00; cash 100.00.
    let s = desk.settle("settle-b", &v.visit_id, true).await.unwrap();
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "600.00"),
            ("fulamt_ownpay_amt", "100.00"),
            ("inscp_scp_amt", "500.00"),
            ("act_pay_dedc", "300.00"),
            ("pool_ratio", "0.55"),
            ("hifp_pay", "110.00"),
            ("fund_pay_sumamt", "110.00"),
            ("psn_part_amt", "490.00"),
            ("acct_pay", "390.00"),
            ("psn_cash_pay", "100.00"),
        ],
    );
    assert_eq!(account_balance(nb, &b).await, "610.00");
    let acc = accumulators(nb, &b, WZ, inst::WZ_P).await;
    assert_eq!(
        acc_tuple(&acc),
        ("110.00", "110.00", "0.00", "0.00", "300.00", 0, "500.00", 1)
    );
    let (count, sum, ids) = ledgers_agree(wz, nb, &s.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (1, "110.00", vec![s.settlement_id.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chronic_visits_with_civil_servant_subsidy_up_to_the_chronic_cap() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    let id = person(
        wz,
        &id_number(WZ, "1970-03-04", 4),
        It::Employee,
        Pt::InService,
        "200.00",
        true,
    )
    .await;
    filing(wz, &id, Ft::PostedWorker, NB, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;

    // Wenzhou chronic care at level 3: deductible 100.00 per visit, 82% for in-service
    // employees, posted workers −5 pp → 77%; chronic cap 15000.00.
    // Bill 3000.00: first self-pay 10% × 1000.00 = 100.00, in scope 2900.00; pooled
    // 77% × (2900.00 − 100.00) = 2156.00; civil-servant subsidy 60% × (2900.00 −
    // 2156.00) = 446.40; funds 2602.40; personal 397.60: account 200.00, cash 197.60.
    let v = desk
        .open("ov-1", &id, WZ, Vk::Chronic, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![
            line("1", "NB-A", "1", "2000.00", "2000.00"),
            line("2", "NB-B", "1", "1000.00", "1000.00"),
        ],
    )
    .await
    .unwrap();
    let s1 = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    let split = s1.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::PostedWorker as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "3000.00"),
            ("preselfpay_amt", "100.00"),
            ("inscp_scp_amt", "2900.00"),
            ("act_pay_dedc", "100.00"),
            ("pool_ratio", "0.77"),
            ("hifp_pay", "2156.00"),
            ("cvlserv_pay", "446.40"),
            ("fund_pay_sumamt", "2602.40"),
            ("psn_part_amt", "397.60"),
            ("acct_pay", "200.00"),
            ("psn_cash_pay", "197.60"),
        ],
    );
    assert_eq!(account_balance(wz, &id).await, "0.00");
    let acc = accumulators(wz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "2156.00", "0.00", "2156.00", "0.00", "0.00", 0, "2900.00", 1
        )
    );

    // Second visit, 20000.00: pooled 77% × 19900.00 = 15323.00, but the chronic cap
    // leaves 15000.00 − 2156.00 = 12844.00; subsidy 60% × (20000.00 − 12844.00) =
    // 4293.60; funds 17137.60; personal 2862.40, all cash (the account is empty).
    let v = desk
        .open("ov-2", &id, WZ, Vk::Chronic, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-2",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "20000.00", "20000.00")],
    )
    .await
    .unwrap();
    let s2 = desk.settle("settle-2", &v.visit_id, true).await.unwrap();
    assert_split(
        s2.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "20000.00"),
            ("inscp_scp_amt", "20000.00"),
            ("act_pay_dedc", "100.00"),
            ("pool_ratio", "0.77"),
            ("hifp_pay", "12844.00"),
            ("cvlserv_pay", "4293.60"),
            ("fund_pay_sumamt", "17137.60"),
            ("psn_part_amt", "2862.40"),
            ("acct_pay", "0.00"),
            ("psn_cash_pay", "2862.40"),
        ],
    );
    let acc = accumulators(wz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "15000.00", "0.00", "15000.00", "0.00", "0.00", 0, "22900.00", 2
        )
    );
    // 2602.40 + 17137.60 = 19740.00 owed by Wenzhou to Ningbo, on both sides.
    let (count, sum, _) = ledgers_agree(nb, wz, &s2.period).await;
    assert_eq!((count, sum.as_str()), (2, "19740.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpatient_with_large_amount_subsidy_and_civil_servant_subsidy() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    let id = person(
        nb,
        &id_number(NB, "1968-09-10", 5),
        It::Employee,
        Pt::InService,
        "3000.00",
        true,
    )
    .await;
    filing(nb, &id, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let mut desk = Desk::at(wz, inst::WZ_H2).await;
    let v = desk
        .open("adm-1", &id, NB, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![
            line("1", "WZ-A", "1", "150000.00", "150000.00"),
            line("2", "WZ-B", "2", "5000.00", "10000.00"),
            line("3", "WZ-C", "1", "2000.00", "2000.00"),
        ],
    )
    .await
    .unwrap();
    desk.discharge("dis-1", &v.visit_id).await.unwrap();
    // Ningbo, level 2, first admission: deductible 600.00, 88% for in-service employees.
    // 162000.00 = class C 2000.00 + first self-pay 10% × 10000.00 = 1000.00 + in scope
    // 159000.00. Pooled 88% × (159000.00 − 600.00) = 139392.00 (annual cap 350000.00).
    // Large-amount subsidy (hifob) 75% above 15000.00 of in-scope personal share:
    // 159000.00 − 139392.00 = 19608.00 → 75% × 4608.00 = 3456.00. Civil-servant subsidy
    // 40% × (19608.00 − 3456.00) = 6460.80. Funds 149308.80; personal 12691.20, of which
    // the account may pay 12691.20 − class C 2000.00 = 10691.20 but holds 3000.00;
    // cash 9691.20.
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_split(
        s.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "162000.00"),
            ("fulamt_ownpay_amt", "2000.00"),
            ("preselfpay_amt", "1000.00"),
            ("inscp_scp_amt", "159000.00"),
            ("act_pay_dedc", "600.00"),
            ("pool_ratio", "0.88"),
            ("hifp_pay", "139392.00"),
            ("hifob_pay", "3456.00"),
            ("cvlserv_pay", "6460.80"),
            ("fund_pay_sumamt", "149308.80"),
            ("psn_part_amt", "12691.20"),
            ("acct_pay", "3000.00"),
            ("psn_cash_pay", "9691.20"),
        ],
    );
    assert_eq!(account_balance(nb, &id).await, "0.00");
    let acc = accumulators(nb, &id, WZ, inst::WZ_H2).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "139392.00",
            "0.00",
            "0.00",
            "3456.00",
            "0.00",
            1,
            "159000.00",
            1
        )
    );
    let (count, sum, ids) = ledgers_agree(wz, nb, &s.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (1, "149308.80", vec![s.settlement_id.clone()])
    );

    // Cancelled: the admission, the serious-illness tier and the account come back, so
    // settling again is a first admission with the same amounts.
    desk.cancel("cancel-1", &s.settlement_id, "").await.unwrap();
    wait_outbox_drained(wz, Duration::from_secs(10)).await;
    assert_eq!(account_balance(nb, &id).await, "3000.00");
    let acc = accumulators(nb, &id, WZ, inst::WZ_H2).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );
    let again = desk.settle("settle-2", &v.visit_id, true).await.unwrap();
    assert_eq!(again.split, s.split);
    let acc = accumulators(nb, &id, WZ, inst::WZ_H2).await;
    assert_eq!((acc.admissions, acc.version), (1, 3));
    let (count, sum, _) = ledgers_agree(wz, nb, &again.period).await;
    assert_eq!((count, sum.as_str()), (3, "149308.80"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_city_settlement_and_cancel_need_no_peer() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let hz = fed.node(HZ);
    let id = person(
        hz,
        &id_number(HZ, "1985-11-12", 6),
        It::Employee,
        Pt::InService,
        "400.00",
        false,
    )
    .await;
    let mut desk = Desk::at(hz, inst::HZ_H3).await;
    let v = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "HZ-A", "1", "1500.00", "1500.00")],
    )
    .await
    .unwrap();
    // At home no cross-region rule: 70% at level 3. Deductible 1000.00, pooled 70% ×
    // 500.00 = 350.00; personal 1150.00: account 400.00, cash 750.00.
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(
        (
            s.state.as_str(),
            s.home_region.as_str(),
            s.treatment_region.as_str()
        ),
        ("settled", HZ, HZ)
    );
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::Unspecified as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "1500.00"),
            ("inscp_scp_amt", "1500.00"),
            ("act_pay_dedc", "1000.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "350.00"),
            ("fund_pay_sumamt", "350.00"),
            ("psn_part_amt", "1150.00"),
            ("acct_pay", "400.00"),
            ("psn_cash_pay", "750.00"),
        ],
    );
    assert_eq!(account_balance(hz, &id).await, "0.00");
    let acc = accumulators(hz, &id, HZ, inst::HZ_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "350.00", "350.00", "0.00", "0.00", "1000.00", 0, "1500.00", 1
        )
    );
    // Nothing is owed between cities, nothing queued.
    for other in [NB, WZ] {
        for side in ["receivable", "payable"] {
            let d = period_digest(hz, &s.period, other, side).await;
            assert_eq!((d.count, d.sum.as_str()), (0, "0.00"), "{other} {side}");
        }
    }
    assert_eq!(outbox(hz).await.depth, 0);

    // Cancel at home: reversed in the same transaction, no outbox.
    let c = desk.cancel("cancel-1", &s.settlement_id, "").await.unwrap();
    assert_eq!(c.state, "reversal");
    assert_eq!(outbox(hz).await.depth, 0);
    assert_eq!(account_balance(hz, &id).await, "400.00");
    let acc = accumulators(hz, &id, HZ, inst::HZ_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfiled_temporary_visit_takes_the_twenty_point_cut() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = person(
        hz,
        &id_number(HZ, "1990-02-03", 7),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let who = desk
        .client
        .identify(proto::IdentifyRequest {
            institution_code: inst::NB_H3.into(),
            id_number: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            who.home_region.as_str(),
            who.eligible,
            who.filing_type,
            who.filing_id.as_str()
        ),
        (HZ, true, Ft::Temporary as i32, "")
    );
    let v = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "3000.00", "3000.00")],
    )
    .await
    .unwrap();
    // Unfiled (临时外出): 70% − 20 pp = 50%. Deductible 1000.00; pooled 50% × 2000.00 =
    // 1000.00; personal 2000.00 in cash.
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::Temporary as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "3000.00"),
            ("inscp_scp_amt", "3000.00"),
            ("act_pay_dedc", "1000.00"),
            ("pool_ratio", "0.50"),
            ("hifp_pay", "1000.00"),
            ("fund_pay_sumamt", "1000.00"),
            ("psn_part_amt", "2000.00"),
            ("psn_cash_pay", "2000.00"),
        ],
    );
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "1000.00", "1000.00", "0.00", "0.00", "1000.00", 0, "3000.00", 1
        )
    );
    let (count, sum, _) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!((count, sum.as_str()), (1, "1000.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_admission_takes_the_ten_point_cut() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = person(
        hz,
        &id_number(HZ, "1972-04-05", 8),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::Referral, NB, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let v = desk
        .open("adm-1", &id, HZ, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "20000.00", "20000.00")],
    )
    .await
    .unwrap();
    desk.discharge("dis-1", &v.visit_id).await.unwrap();
    // Referral (异地转诊): 85% − 10 pp = 75% at level 3; first admission deductible
    // 800.00; pooled 75% × 19200.00 = 14400.00; personal 5600.00 (below the 20000.00
    // serious-illness threshold).
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::Referral as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "20000.00"),
            ("inscp_scp_amt", "20000.00"),
            ("act_pay_dedc", "800.00"),
            ("pool_ratio", "0.75"),
            ("hifp_pay", "14400.00"),
            ("fund_pay_sumamt", "14400.00"),
            ("psn_part_amt", "5600.00"),
            ("psn_cash_pay", "5600.00"),
        ],
    );
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("14400.00", "0.00", "0.00", "0.00", "0.00", 1, "20000.00", 1)
    );
    let (count, sum, _) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!((count, sum.as_str()), (1, "14400.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filed_person_outside_their_named_hospitals() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb, wz) = (fed.node(HZ), fed.node(NB), fed.node(WZ));
    // Hangzhou settles long-term filings only at the named institutions
    // (named_institutions_only = true).
    let id = person(
        hz,
        &id_number(HZ, "1960-06-07", 9),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(
        hz,
        &id,
        Ft::LongTermResident,
        NB,
        &[inst::NB_H1],
        "2026-01-01",
    )
    .await;

    // At the level-3 hospital, not named: as unfiled, 70% − 20 pp = 50%; deductible
    // 1000.00; pooled 50% × 200.00 = 100.00.
    let mut h3 = Desk::at(nb, inst::NB_H3).await;
    let v = h3
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    h3.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "1200.00", "1200.00")],
    )
    .await
    .unwrap();
    let s = h3.settle("settle-1", &v.visit_id, false).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::Temporary as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "1200.00"),
            ("inscp_scp_amt", "1200.00"),
            ("act_pay_dedc", "1000.00"),
            ("pool_ratio", "0.50"),
            ("hifp_pay", "100.00"),
            ("fund_pay_sumamt", "100.00"),
            ("psn_part_amt", "1100.00"),
            ("psn_cash_pay", "1100.00"),
        ],
    );
    // At the named level-1 hospital: filed, 80%, deductible already met: 80% × 500.00.
    let mut h1 = Desk::at(nb, inst::NB_H1).await;
    let v = h1
        .open("ov-2", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    h1.fees(
        "fees-2",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "500.00", "500.00")],
    )
    .await
    .unwrap();
    let s2 = h1.settle("settle-2", &v.visit_id, false).await.unwrap();
    let split = s2.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::LongTermResident as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "500.00"),
            ("inscp_scp_amt", "500.00"),
            ("act_pay_dedc", "0.00"),
            ("pool_ratio", "0.80"),
            ("hifp_pay", "400.00"),
            ("fund_pay_sumamt", "400.00"),
            ("psn_part_amt", "100.00"),
            ("psn_cash_pay", "100.00"),
        ],
    );
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "500.00", "500.00", "0.00", "0.00", "1000.00", 0, "1700.00", 2
        )
    );

    // Wenzhou treats named institutions as advisory (named_institutions_only = false):
    // the same filing counts at any Ningbo institution. Level 3, 65%, no cut for
    // long-term residents; deductible 800.00; pooled 65% × 1000.00 = 650.00.
    let w = person(
        wz,
        &id_number(WZ, "1961-08-09", 10),
        It::Employee,
        Pt::InService,
        "0.00",
        false,
    )
    .await;
    filing(
        wz,
        &w,
        Ft::LongTermResident,
        NB,
        &[inst::NB_H1],
        "2026-01-01",
    )
    .await;
    let v = h3
        .open("ov-3", &w, WZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    h3.fees(
        "fees-3",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "1800.00", "1800.00")],
    )
    .await
    .unwrap();
    let s3 = h3.settle("settle-3", &v.visit_id, false).await.unwrap();
    let split = s3.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::LongTermResident as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "1800.00"),
            ("inscp_scp_amt", "1800.00"),
            ("act_pay_dedc", "800.00"),
            ("pool_ratio", "0.65"),
            ("hifp_pay", "650.00"),
            ("fund_pay_sumamt", "650.00"),
            ("psn_part_amt", "1150.00"),
            ("psn_cash_pay", "1150.00"),
        ],
    );
    let (count, sum, _) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!((count, sum.as_str()), (2, "500.00"));
    let (count, sum, _) = ledgers_agree(nb, wz, &s3.period).await;
    assert_eq!((count, sum.as_str()), (1, "650.00"));
}

/// One settled outpatient visit of a Hangzhou employee at Ningbo's level-3 hospital:
/// 2000.00 in scope, deductible 1000.00, pooled 70% × 1000.00 = 700.00, personal
/// 1300.00 of which the account pays its whole 1000.00, cash 300.00.
async fn settled_2000(
    hz: &TestNode,
    desk: &mut Desk,
    seq: u16,
    rid: &str,
) -> (String, proto::Visit, proto::Settlement) {
    let id = filed_employee(hz, "1982-10-11", seq, "1000.00", NB).await;
    let v = billed_visit(desk, rid, &id, HZ, "2000.00").await;
    let s = desk.settle(rid, &v.visit_id, true).await.unwrap();
    settled_2000_at_hz_rates(&s);
    (id, v, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_restores_home_exactly_and_the_visit_settles_again() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    let (id, v, s) = settled_2000(hz, &mut desk, 20, "settle-1").await;
    assert_eq!(account_balance(hz, &id).await, "0.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "700.00", "700.00", "0.00", "0.00", "1000.00", 0, "2000.00", 1
        )
    );

    let c = desk
        .cancel("cancel-1", &s.settlement_id, "wrong patient")
        .await
        .unwrap();
    assert_eq!(
        (c.state.as_str(), c.reverses.as_str(), c.visit_id.as_str()),
        ("reversal", s.settlement_id.as_str(), v.visit_id.as_str())
    );
    assert_split(
        c.split.as_ref().unwrap(),
        &[
            ("medfee_sumamt", "-2000.00"),
            ("inscp_scp_amt", "-2000.00"),
            ("act_pay_dedc", "-1000.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "-700.00"),
            ("fund_pay_sumamt", "-700.00"),
            ("psn_part_amt", "-1300.00"),
            ("acct_pay", "-1000.00"),
            ("psn_cash_pay", "-300.00"),
        ],
    );
    // Duplicate: the same answer; modified duplicate: refused; a second cancel: refused.
    assert_eq!(
        desk.cancel("cancel-1", &s.settlement_id, "wrong patient")
            .await
            .unwrap(),
        c
    );
    let e = desk
        .cancel("cancel-1", &s.settlement_id, "other reason")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = desk
        .cancel("cancel-2", &s.settlement_id, "wrong patient")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(desk.get(&s.settlement_id).await.unwrap().state, "cancelled");
    assert_eq!(desk.list().await.len(), 2, "settlement and one reversal");

    // The reversal reaches Hangzhou through the outbox: everything the claim added is
    // taken back (account 1000.00, deductible met 0.00, version bumped).
    wait_outbox_drained(nb, Duration::from_secs(10)).await;
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );
    let (count, sum, ids) = ledgers_agree(nb, hz, &c.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (2, "0.00", sorted(&[&s.settlement_id, &c.settlement_id]))
    );

    // The visit can be settled again, and the deductible applies again: same amounts.
    let again = desk.settle("settle-2", &v.visit_id, true).await.unwrap();
    assert_eq!(again.state, "settled");
    assert_eq!(again.split.as_ref().unwrap().fund_pay_sumamt, "700.00");
    assert_eq!(again.split.as_ref().unwrap().acct_pay, "1000.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "700.00", "700.00", "0.00", "0.00", "1000.00", 0, "2000.00", 3
        )
    );
    let (count, sum, _) = ledgers_agree(nb, hz, &again.period).await;
    assert_eq!((count, sum.as_str()), (3, "700.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_request_of_a_settled_request_and_of_one_that_never_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut desk = Desk::at(nb, inst::NB_H3).await;

    // 冲正 of a settled request: a reversal record, the original cancelled.
    let (id, _v, s) = settled_2000(hz, &mut desk, 21, "settle-1").await;
    let r = desk.reverse("rev-1", "settle-1").await.unwrap();
    assert_eq!(r.outcome, "reversed");
    let reversal = r.reversal.clone().unwrap();
    assert_eq!(
        (
            reversal.state.as_str(),
            reversal.reverses.as_str(),
            reversal.split.as_ref().unwrap().fund_pay_sumamt.as_str()
        ),
        ("reversal", s.settlement_id.as_str(), "-700.00")
    );
    assert_eq!(desk.get(&s.settlement_id).await.unwrap().state, "cancelled");
    // The same 冲正 again: its original answer; another 冲正 of it: already reversed.
    assert_eq!(desk.reverse("rev-1", "settle-1").await.unwrap(), r);
    let again = desk.reverse("rev-2", "settle-1").await.unwrap();
    assert_eq!(
        (again.outcome.as_str(), again.reversal.as_ref()),
        ("already_reversed", Some(&reversal))
    );
    // The original request repeated: its original answer (the settlement as it was).
    assert_eq!(desk.settle("settle-1", &s.visit_id, true).await.unwrap(), s);
    wait_outbox_drained(nb, Duration::from_secs(10)).await;
    assert_eq!(account_balance(hz, &id).await, "1000.00");
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        ("0.00", "0.00", "0.00", "0.00", "0.00", 0, "0.00", 2)
    );
    let (count, sum, _) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!((count, sum.as_str()), (2, "0.00"));

    // 冲正 of a request id that never arrived: not_found, and the id is barred.
    let b = person(
        hz,
        &id_number(HZ, "1983-01-01", 22),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    filing(hz, &b, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    let v = desk
        .open("ov-ghost", &b, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-ghost",
        &v.visit_id,
        vec![line("1", "NB-A", "1", "2000.00", "2000.00")],
    )
    .await
    .unwrap();
    let r = desk.reverse("rev-3", "settle-ghost").await.unwrap();
    assert_eq!((r.outcome.as_str(), r.reversal), ("not_found", None));
    let before = desk.list().await.len();
    let e = desk
        .settle("settle-ghost", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Settled nothing: no record here, no claim at home, nothing queued or owed.
    assert_eq!(desk.list().await.len(), before);
    assert_eq!(outbox(nb).await.depth, 0);
    let acc = accumulators(hz, &b, NB, inst::NB_H3).await;
    assert_eq!(acc.version, 0);
    assert_eq!(account_balance(hz, &b).await, "1000.00");
    let (count, _, _) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!(count, 2);
    // Asked again under a new id: still nothing to reverse.
    let r = desk.reverse("rev-4", "settle-ghost").await.unwrap();
    assert_eq!(r.outcome, "not_found");
    // The visit itself is untouched and settles under a new id.
    let ok = desk.settle("settle-real", &v.visit_id, true).await.unwrap();
    assert_eq!(
        (
            ok.state.as_str(),
            ok.split.as_ref().unwrap().fund_pay_sumamt.as_str()
        ),
        ("settled", "700.00")
    );
    // 冲正 is for settlements; another request's id is refused.
    let e = desk.reverse("rev-5", "ov-ghost").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

fn visit_seq(v: &proto::Visit) -> u64 {
    v.visit_id.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_modified_duplicate_requests() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let id = person(
        hz,
        &id_number(HZ, "1984-02-02", 23),
        It::Employee,
        Pt::InService,
        "1000.00",
        false,
    )
    .await;
    filing(hz, &id, Ft::LongTermResident, NB, &[], "2026-01-01").await;
    let mut desk = Desk::at(nb, inst::NB_H3).await;

    // OpenVisit.
    let v = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    assert_eq!(
        desk.open("ov-1", &id, HZ, Vk::Outpatient, ADMITTED)
            .await
            .unwrap(),
        v
    );
    let e = desk
        .open("ov-1", &id, HZ, Vk::Outpatient, "2026-03-11T09:00:00+08:00")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // No visit was created by the refused request: the next one takes the next number.
    let other = desk
        .open("ov-2", &id, HZ, Vk::Outpatient, ADMITTED)
        .await
        .unwrap();
    assert_eq!(visit_seq(&other), visit_seq(&v) + 1);

    // UploadFees.
    let lines = vec![
        line("1", "NB-A", "1", "1500.00", "1500.00"),
        line("2", "NB-A", "1", "500.00", "500.00"),
    ];
    let up = desk
        .fees("fees-1", &v.visit_id, lines.clone())
        .await
        .unwrap();
    assert_eq!(up.total, "2000.00");
    assert_eq!(
        desk.fees("fees-1", &v.visit_id, lines.clone())
            .await
            .unwrap(),
        up
    );
    let mut changed = lines.clone();
    changed[1] = line("2", "NB-A", "2", "500.00", "1000.00");
    let e = desk
        .fees("fees-1", &v.visit_id, changed.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Under a new id, a changed line that was already uploaded is refused too.
    let e = desk.fees("fees-2", &v.visit_id, changed).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Nothing changed: the bill is still 2000.00 (pre-settle sees it).
    let pre = desk.pre_settle(&v.visit_id, true).await.unwrap();
    assert_eq!(pre.split.as_ref().unwrap().medfee_sumamt, "2000.00");

    // Settle: 2000.00 → pooled 700.00, account 1000.00, cash 300.00 (as in
    // `settled_2000`).
    let s = desk.settle("settle-1", &v.visit_id, true).await.unwrap();
    assert_eq!(
        (
            s.split.as_ref().unwrap().fund_pay_sumamt.as_str(),
            s.split.as_ref().unwrap().acct_pay.as_str()
        ),
        ("700.00", "1000.00")
    );
    assert_eq!(desk.settle("settle-1", &v.visit_id, true).await.unwrap(), s);
    let e = desk
        .settle("settle-1", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = desk
        .settle("settle-1", &other.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = desk
        .settle("settle-2", &v.visit_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Fees of a settled visit are frozen.
    let e = desk
        .fees(
            "fees-3",
            &v.visit_id,
            vec![line("3", "NB-A", "1", "1.00", "1.00")],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Exactly one claim anywhere.
    assert_eq!(desk.list().await.len(), 1);
    let acc = accumulators(hz, &id, NB, inst::NB_H3).await;
    assert_eq!(
        acc_tuple(&acc),
        (
            "700.00", "700.00", "0.00", "0.00", "1000.00", 0, "2000.00", 1
        )
    );
    assert_eq!(account_balance(hz, &id).await, "0.00");
    let (count, sum, ids) = ledgers_agree(nb, hz, &s.period).await;
    assert_eq!(
        (count, sum.as_str(), ids),
        (1, "700.00", vec![s.settlement_id.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_totals_and_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (hz, nb) = (fed.node(HZ), fed.node(NB));
    let mut desk = Desk::at(nb, inst::NB_H3).await;
    // A: 2000.00, fund 700.00, account 1000.00. B: the same for another person, then
    // cancelled (B' = −2000.00, −700.00, −1000.00).
    let (_, _, a) = settled_2000(hz, &mut desk, 30, "settle-a").await;
    let (_, _, b) = settled_2000(hz, &mut desk, 31, "settle-b").await;
    let b2 = desk.cancel("cancel-b", &b.settlement_id, "").await.unwrap();
    let reconcile =
        |count: u64, medfee: &str, fund: &str, acct: &str| proto::ReconcileTotalsRequest {
            institution_code: inst::NB_H3.into(),
            from_date: "2026-01-01".into(),
            to_date: "2099-12-31".into(),
            count,
            medfee_sumamt: medfee.into(),
            fund_pay_sumamt: fund.into(),
            acct_pay: acct.into(),
        };
    // Three records: 2000.00 + 2000.00 − 2000.00; fund 700.00; account 1000.00.
    let t = desk
        .client
        .reconcile_totals(reconcile(3, "2000.00", "700.00", "1000.00"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            t.matches,
            t.count,
            t.medfee_sumamt.as_str(),
            t.fund_pay_sumamt.as_str(),
            t.acct_pay.as_str()
        ),
        (true, 3, "2000.00", "700.00", "1000.00")
    );
    // The hospital missed the cancellation: no match, and the node's totals to compare.
    let t = desk
        .client
        .reconcile_totals(reconcile(2, "4000.00", "1400.00", "2000.00"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (t.matches, t.count, t.fund_pay_sumamt.as_str()),
        (false, 3, "700.00")
    );
    // A range without settlements.
    let mut empty = reconcile(0, "0.00", "0.00", "0.00");
    empty.to_date = "2025-12-31".into();
    empty.from_date = "2025-01-01".into();
    let t = desk
        .client
        .reconcile_totals(empty)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((t.matches, t.count), (true, 0));

    let entry = |id: &str, medfee: &str, fund: &str| proto::ReconcileEntry {
        settlement_id: id.into(),
        medfee_sumamt: medfee.into(),
        fund_pay_sumamt: fund.into(),
    };
    let detail = |entries: Vec<proto::ReconcileEntry>| proto::ReconcileDetailRequest {
        institution_code: inst::NB_H3.into(),
        from_date: "2026-01-01".into(),
        to_date: "2099-12-31".into(),
        entries,
    };
    // Everything right: no differences.
    let d = desk
        .client
        .reconcile_detail(detail(vec![
            entry(&a.settlement_id, "2000.00", "700.00"),
            entry(&b.settlement_id, "2000.00", "700.00"),
            entry(&b2.settlement_id, "-2000.00", "-700.00"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.differences, vec![]);
    // B with a wrong fund share, the reversal missing, an id the node never issued.
    let ghost = "330200-S-0000009999";
    let d = desk
        .client
        .reconcile_detail(detail(vec![
            entry(&a.settlement_id, "2000.00", "700.00"),
            entry(&b.settlement_id, "2000.00", "600.00"),
            entry(ghost, "10.00", "5.00"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut kinds: Vec<(String, String)> = d
        .differences
        .iter()
        .map(|x| (x.settlement_id.clone(), x.kind.clone()))
        .collect();
    kinds.sort();
    let mut want = vec![
        (b.settlement_id.clone(), "amount_differs".to_owned()),
        (
            b2.settlement_id.clone(),
            "missing_at_institution".to_owned(),
        ),
        (ghost.to_owned(), "missing_at_node".to_owned()),
    ];
    want.sort();
    assert_eq!(kinds, want);
    let differs = d
        .differences
        .iter()
        .find(|x| x.kind == "amount_differs")
        .unwrap();
    assert_eq!(
        (
            differs.node.as_ref().unwrap().fund_pay_sumamt.as_str(),
            differs
                .institution
                .as_ref()
                .unwrap()
                .fund_pay_sumamt
                .as_str()
        ),
        ("700.00", "600.00")
    );
    let missing = d
        .differences
        .iter()
        .find(|x| x.kind == "missing_at_institution")
        .unwrap();
    assert_eq!(missing.node.as_ref().unwrap().medfee_sumamt, "-2000.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_unfiled_then_filed_before_discharge_settles_directly() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    // Ningbo residents are not settled directly for unfiled inpatient care.
    let id = person(
        nb,
        &id_number(NB, "1992-05-05", 24),
        It::Resident,
        Pt::ResidentAdult,
        "0.00",
        false,
    )
    .await;
    let mut desk = Desk::at(wz, inst::WZ_H2).await;
    let v = desk
        .open("adm-1", &id, NB, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "WZ-A", "1", "10800.00", "10800.00")],
    )
    .await
    .unwrap();
    desk.discharge("dis-1", &v.visit_id).await.unwrap();
    let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no direct settlement"), "{e:?}");

    // The home agency records a long-term filing covering the admission; settlement
    // asks Ningbo afresh and applies it. Level 2, adult resident: deductible 800.00,
    // 70% with no cut: 70% × 10000.00 = 7000.00; personal 3800.00.
    filing(nb, &id, Ft::LongTermResident, WZ, &[], "2026-01-01").await;
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::LongTermResident as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "10800.00"),
            ("inscp_scp_amt", "10800.00"),
            ("act_pay_dedc", "800.00"),
            ("pool_ratio", "0.70"),
            ("hifp_pay", "7000.00"),
            ("fund_pay_sumamt", "7000.00"),
            ("psn_part_amt", "3800.00"),
            ("psn_cash_pay", "3800.00"),
        ],
    );
    let acc = accumulators(nb, &id, WZ, inst::WZ_H2).await;
    assert_eq!(
        acc_tuple(&acc),
        ("7000.00", "0.00", "0.00", "0.00", "0.00", 1, "10800.00", 1)
    );
    let (count, sum, _) = ledgers_agree(wz, nb, &s.period).await;
    assert_eq!((count, sum.as_str()), (1, "7000.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filing_dated_during_the_stay_applies_at_discharge_settlement() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let (nb, wz) = (fed.node(NB), fed.node(WZ));
    let id = person(
        nb,
        &id_number(NB, "1990-07-07", 25),
        It::Resident,
        Pt::ResidentAdult,
        "0.00",
        false,
    )
    .await;
    let mut desk = Desk::at(wz, inst::WZ_H2).await;
    let v = desk
        .open("adm-1", &id, NB, Vk::Inpatient, ADMITTED)
        .await
        .unwrap();
    desk.fees(
        "fees-1",
        &v.visit_id,
        vec![line("1", "WZ-A", "1", "10800.00", "10800.00")],
    )
    .await
    .unwrap();
    desk.discharge("dis-1", &v.visit_id).await.unwrap();

    // The patient files during the stay: the filing is valid only from today, well
    // after the admission on 2026-03-10, and still applies to this stay.
    let today = yidi_common::period::today().to_string();
    filing(nb, &id, Ft::LongTermResident, WZ, &[], &today).await;
    let s = desk.settle("settle-1", &v.visit_id, false).await.unwrap();
    let split = s.split.clone().unwrap();
    assert_eq!(split.applied_filing_type, Ft::LongTermResident as i32);
    assert_split(
        &split,
        &[
            ("medfee_sumamt", "10800.00"),
            ("inscp_scp_amt", "10800.00"),
            ("act_pay_dedc", "800.00"),
            ("hifp_pay", "7000.00"),
            ("fund_pay_sumamt", "7000.00"),
            ("psn_part_amt", "3800.00"),
            ("psn_cash_pay", "3800.00"),
        ],
    );

    // A settled visit is neither settled nor pre-settled again.
    let e = desk.pre_settle(&v.visit_id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already settled"), "{e:?}");
    let e = desk
        .settle("settle-2", &v.visit_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_judges_a_filing_made_during_a_stay_on_the_settle_day() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let nb = fed.node(NB);
    let id = person(
        nb,
        &id_number(NB, "1991-08-08", 26),
        It::Resident,
        Pt::ResidentAdult,
        "0.00",
        false,
    )
    .await;
    // Filed on 2026-03-15, during a stay that began on 2026-03-10.
    filing(nb, &id, Ft::LongTermResident, WZ, &[], "2026-03-15").await;
    let ask = |kind: Vk, settle_date: &str| proto::CheckEligibilityRequest {
        id_number: id.clone(),
        institution_code: inst::WZ_H2.into(),
        level: proto::HospitalLevel::HospitalLevel2 as i32,
        visit_kind: kind as i32,
        visit_date: "2026-03-10".into(),
        treatment_region: WZ.into(),
        settle_date: settle_date.into(),
    };
    let mut peer = nb.peer().await;
    let filing_of = |r: proto::EligibilityResponse| r.filing.map(|f| f.filing_type);
    // Settled before the filing's first day: unfiled.
    let before = peer
        .check_eligibility(ask(Vk::Inpatient, "2026-03-14"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filing_of(before), None);
    // Settled on or after it: the stay is covered.
    let after = peer
        .check_eligibility(ask(Vk::Inpatient, "2026-03-15"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filing_of(after), Some(Ft::LongTermResident as i32));
    // An outpatient visit of 2026-03-10 is not covered by a later filing.
    let outpatient = peer
        .check_eligibility(ask(Vk::Outpatient, "2026-03-15"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filing_of(outpatient), None);
    // A malformed settle day is refused.
    let e = peer
        .check_eligibility(ask(Vk::Inpatient, "15/03/2026"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

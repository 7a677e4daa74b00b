//! AdminService end to end: a real node on 127.0.0.1:0 in a temp dir, every admin RPC,
//! every bad-input case with its status code and proof that nothing was written,
//! idempotent requests and imports, and persistence across a restart.

use chrono::NaiveDate;
use tonic::{Code, transport::Channel};
use yidi_common::{idnum, policy::Policy, proto, proto::admin_service_client::AdminServiceClient};
use yidi_tests::harness::TestNode;

type Admin = AdminServiceClient<Channel>;

fn id(seq: u16) -> String {
    idnum::make("330106", NaiveDate::from_ymd_opt(1960, 5, 17).unwrap(), seq)
}

fn fields(name: &str, card: &str, balance: &str) -> proto::PersonFields {
    proto::PersonFields {
        name: name.into(),
        card_no: card.into(),
        insurance_type: proto::InsuranceType::Employee as i32,
        person_type: proto::PersonType::Retired as i32,
        civil_servant: false,
        status: proto::PersonStatus::Active as i32,
        account_balance: balance.into(),
        enrolled_since: "2020-01-01".into(),
    }
}

async fn create(
    admin: &mut Admin,
    rid: &str,
    id_number: &str,
    f: proto::PersonFields,
) -> Result<proto::Person, tonic::Status> {
    admin
        .create_person(proto::CreatePersonRequest {
            request_id: rid.into(),
            id_number: id_number.into(),
            fields: Some(f),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn person_total(admin: &mut Admin) -> u64 {
    admin
        .list_persons(proto::ListPersonsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .total
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(needle),
        "message {:?} should mention {needle:?}",
        s.message()
    );
}

fn hospital(code: &str, level: proto::HospitalLevel) -> proto::Institution {
    proto::Institution {
        code: code.into(),
        name: format!("{code} 人民医院"),
        kind: proto::InstitutionKind::Hospital as i32,
        level: level as i32,
        agreement_status: proto::AgreementStatus::Active as i32,
        agreement_from: "2024-01-01".into(),
        agreement_to: String::new(),
    }
}

/// A deployed policy file as JSON, optionally moved to another effective date.
fn policy_json(city: &str, kind: &str, effective_from: Option<&str>) -> String {
    let path = format!(
        "{}/../deploy/policies/{city}-{kind}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut policy = Policy::from_toml(&text).expect("sample policy parses");
    if let Some(d) = effective_from {
        policy.effective_from = d.parse().unwrap();
    }
    policy.to_canonical_json()
}

#[tokio::test]
async fn persons_crud_idempotency_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330100", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;

    let p = create(
        &mut admin,
        "p-1",
        &id(11),
        fields("张三", "A12345678", "1500.5"),
    )
    .await
    .unwrap();
    assert_eq!(p.home_region, "330100");
    assert_eq!(p.birth_date, "1960-05-17");
    assert_eq!(p.sex, "M");
    let f = p.fields.clone().unwrap();
    assert_eq!(f.account_balance, "1500.50");
    assert_eq!(f.card_no, "A12345678");

    // Same id, same payload: the original answer, nothing new.
    let again = create(
        &mut admin,
        "p-1",
        &id(11),
        fields("张三", "A12345678", "1500.5"),
    )
    .await
    .unwrap();
    assert_eq!(again, p);
    // Same id, different payload: refused, nothing changed.
    assert_status(
        create(&mut admin, "p-1", &id(12), fields("李四", "", "0")).await,
        Code::AlreadyExists,
        "request_id",
    );
    assert_status(
        admin
            .get_person(proto::GetPersonRequest {
                id_number: id(12),
                card_no: String::new(),
            })
            .await,
        Code::NotFound,
        "id_number",
    );
    // Enrolling the same person twice under a new request id.
    assert_status(
        create(&mut admin, "p-2", &id(11), fields("张三", "", "0")).await,
        Code::AlreadyExists,
        "already enrolled",
    );

    // Bad input: each names the field and writes nothing.
    let mut wrong_check = id(13);
    let last = if wrong_check.ends_with('0') { '1' } else { '0' };
    wrong_check.pop();
    wrong_check.push(last);
    assert_status(
        create(&mut admin, "bad-1", &wrong_check, fields("王五", "", "0")).await,
        Code::InvalidArgument,
        "id_number",
    );
    assert_status(
        create(&mut admin, "bad-2", &id(14), fields("王五", "", "1.234")).await,
        Code::InvalidArgument,
        "account_balance",
    );
    assert_status(
        create(&mut admin, "bad-3", &id(15), fields("王五", "", "-5.00")).await,
        Code::InvalidArgument,
        "account_balance",
    );
    let mut resident_retiree = fields("赵六", "", "0");
    resident_retiree.insurance_type = proto::InsuranceType::Resident as i32;
    assert_status(
        create(&mut admin, "bad-4", &id(16), resident_retiree).await,
        Code::InvalidArgument,
        "person_type",
    );
    assert_status(
        create(
            &mut admin,
            "bad-5",
            &id(17),
            fields("钱七", "A12345678", "0"),
        )
        .await,
        Code::AlreadyExists,
        "card_no",
    );
    assert_status(
        create(&mut admin, "", &id(18), fields("孙八", "", "0")).await,
        Code::InvalidArgument,
        "request_id",
    );
    assert_eq!(person_total(&mut admin).await, 1);

    // Update, get by card, not found.
    let mut changed = fields("张三", "A12345678", "99.99");
    changed.civil_servant = true;
    let u = admin
        .update_person(proto::UpdatePersonRequest {
            request_id: "u-1".into(),
            id_number: id(11),
            fields: Some(changed),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.fields.as_ref().unwrap().civil_servant);
    let by_card = admin
        .get_person(proto::GetPersonRequest {
            id_number: String::new(),
            card_no: "a12345678".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_card.fields.unwrap().account_balance, "99.99");
    assert_status(
        admin
            .update_person(proto::UpdatePersonRequest {
                request_id: "u-2".into(),
                id_number: id(19),
                fields: Some(fields("x", "", "0")),
            })
            .await,
        Code::NotFound,
        "id_number",
    );

    // Paging through a list.
    for seq in 20..25u16 {
        create(
            &mut admin,
            &format!("p-{seq}"),
            &id(seq),
            fields(&format!("人{seq}"), "", "0"),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_persons(proto::ListPersonsRequest {
                page: Some(proto::PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 6);
        seen.extend(page.persons.into_iter().map(|p| p.id_number));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    node.stop().await;
}

fn row(n: u64, id_number: &str, name: &str, card: &str, balance: &str) -> proto::PersonRow {
    proto::PersonRow {
        row: n,
        id_number: id_number.into(),
        name: name.into(),
        card_no: card.into(),
        insurance_type: "resident".into(),
        person_type: "resident_adult".into(),
        civil_servant: String::new(),
        status: "active".into(),
        account_balance: balance.into(),
        enrolled_since: "2021-07-01".into(),
    }
}

#[tokio::test]
async fn person_import_reports_rows_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330200", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;
    let mut rows = vec![
        row(2, &id(1), "甲", "B00000001", "10.00"),
        row(3, &id(2), "乙", "", "0"),
        row(4, "330106196005170000", "丙", "", "0"),
        row(5, &id(3), "丁", "", "3.141"),
        row(6, &id(4), "戊", "B00000001", "0"),
    ];
    rows[1].person_type = "retired".into();
    let import = |rid: &str, rows: Vec<proto::PersonRow>| proto::ImportPersonsRequest {
        request_id: rid.into(),
        rows,
    };
    let r = admin
        .import_persons(import("imp-1", rows.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.inserted, r.updated, r.unchanged), (1, 0, 0));
    let errs: Vec<(u64, &str)> = r.errors.iter().map(|e| (e.row, e.field.as_str())).collect();
    assert_eq!(
        errs,
        vec![
            (3, "person_type"),
            (4, "id_number"),
            (5, "account_balance"),
            (6, "card_no")
        ]
    );

    // The same batch under the same id replays the first answer, marked as a replay;
    // under a new id it changes nothing.
    let mut replayed = r.clone();
    replayed.replayed = true;
    assert_eq!(
        admin
            .import_persons(import("imp-1", rows.clone()))
            .await
            .unwrap()
            .into_inner(),
        replayed
    );
    let r2 = admin
        .import_persons(import("imp-2", rows.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r2.inserted, r2.updated, r2.unchanged, r2.errors.len()),
        (0, 0, 1, 4)
    );
    // A corrected row updates.
    rows[0].account_balance = "20.00".into();
    let r3 = admin
        .import_persons(import("imp-3", rows[..1].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r3.inserted, r3.updated, r3.unchanged), (0, 1, 0));
    assert_eq!(person_total(&mut admin).await, 1);
    node.stop().await;
}

/// A key twice in one import request: the later row is refused naming both rows, the
/// first row is what is stored, and importing the same rows again updates nothing.
#[tokio::test]
async fn an_import_refuses_a_repeated_person_or_code_naming_both_rows() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330200", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;
    // A valid ID number ending in X, written with a lower-case x on its second row.
    let with_x = (1..999)
        .map(id)
        .find(|n| n.ends_with('X'))
        .expect("an ID number with check digit X");
    let lower_x = with_x.to_ascii_lowercase();
    let lower_x = lower_x.as_str();
    let rows = vec![
        row(2, &id(1), "甲", "", "10.00"),
        row(3, &id(2), "乙", "", "0"),
        row(4, &id(1), "丙", "", "99.00"),
        row(5, &lower_x.to_ascii_uppercase(), "丁", "", "0"),
        row(6, lower_x, "戊", "", "0"),
    ];
    let import = |rid: &str| proto::ImportPersonsRequest {
        request_id: rid.into(),
        rows: rows.clone(),
    };
    let expect_errors = |r: &proto::ImportResult| {
        let errs: Vec<(u64, &str, &str)> = r
            .errors
            .iter()
            .map(|e| (e.row, e.field.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            errs,
            [
                (
                    4,
                    "id_number",
                    format!("{} is already on line 2; the file must have one row per person (this line was not imported)", id(1)).as_str()
                ),
                (
                    6,
                    "id_number",
                    format!("{} is already on line 5; the file must have one row per person (this line was not imported)", lower_x.to_ascii_uppercase()).as_str()
                ),
            ]
        );
    };
    let r = admin
        .import_persons(import("dup-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.inserted, r.updated, r.unchanged), (3, 0, 0), "{r:?}");
    expect_errors(&r);
    let stored = admin
        .get_person(proto::GetPersonRequest {
            id_number: id(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let f = stored.fields.unwrap();
    assert_eq!(
        (f.name.as_str(), f.account_balance.as_str()),
        ("甲", "10.00")
    );
    // The same rows again under a new id: nothing updated.
    let r = admin
        .import_persons(import("dup-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.inserted, r.updated, r.unchanged), (0, 0, 3), "{r:?}");
    expect_errors(&r);

    let item = |n: u64, code: &str, name: &str| proto::CatalogueRow {
        row: n,
        code: code.into(),
        name: name.into(),
        category: "service".into(),
        class: "A".into(),
        valid_from: "2026-01-01".into(),
        ..Default::default()
    };
    let items = vec![item(2, "S01", "CT"), item(3, "S01", "CT 增强")];
    for (rid, inserted, unchanged) in [("cat-1", 1, 0), ("cat-2", 0, 1)] {
        let r = admin
            .import_catalogue(proto::ImportCatalogueRequest {
                request_id: rid.into(),
                rows: items.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.inserted, r.updated, r.unchanged),
            (inserted, 0, unchanged),
            "{r:?}"
        );
        assert_eq!(
            r.errors
                .iter()
                .map(|e| (e.row, e.field.as_str(), e.reason.as_str()))
                .collect::<Vec<_>>(),
            [(
                3,
                "code",
                "S01 is already on line 2; the file must have one row per catalogue item (this line was not imported)"
            )]
        );
    }
    let s01 = admin
        .get_catalogue_item(proto::GetCatalogueItemRequest { code: "S01".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s01.name, "CT");
    node.stop().await;
}

/// The catalogue's class rule, for single items and CSV rows alike: a class-B item
/// states its first self-pay ratio (left out it would be 0 % and the fund would pay
/// more), class A and C items have none. Refused rows write nothing.
#[tokio::test]
async fn catalogue_ratios_must_fit_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330200", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;
    let row = |n: u64, code: &str, class: &str, ratio: &str| proto::CatalogueRow {
        row: n,
        code: code.into(),
        name: "药".into(),
        category: "drug".into(),
        class: class.into(),
        first_selfpay_ratio: ratio.into(),
        valid_from: "2026-01-01".into(),
        ..Default::default()
    };
    let r = admin
        .import_catalogue(proto::ImportCatalogueRequest {
            request_id: "ratios".into(),
            rows: vec![
                row(2, "B-NONE", "B", ""),
                row(3, "A-TEN", "A", "0.10"),
                row(4, "C-TEN", "C", "0.1"),
                row(5, "B-ZERO", "B", "0"),
                row(6, "B-TEN", "B", "0.10"),
                row(7, "A-ZERO", "A", "0"),
                row(8, "C-NONE", "C", ""),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.inserted, r.updated, r.unchanged), (4, 0, 0), "{r:?}");
    assert_eq!(
        r.errors
            .iter()
            .map(|e| (e.row, e.field.as_str(), e.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                2,
                "first_selfpay_ratio",
                "required for a class B (乙类) item: its first self-pay share, e.g. 0.10 (0 if it has none)"
            ),
            (
                3,
                "first_selfpay_ratio",
                "only class B items have a first self-pay ratio; class A must have none or 0, got 0.10"
            ),
            (
                4,
                "first_selfpay_ratio",
                "only class B items have a first self-pay ratio; class C must have none or 0, got 0.1"
            ),
        ]
    );
    let list = admin
        .list_catalogue(proto::ListCatalogueRequest::default())
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<&str> = list.items.iter().map(|i| i.code.as_str()).collect();
    assert_eq!(codes, ["A-ZERO", "B-TEN", "B-ZERO", "C-NONE"]);
    assert_status(
        admin
            .upsert_catalogue_item(proto::UpsertCatalogueItemRequest {
                request_id: "b-none".into(),
                item: Some(proto::CatalogueItem {
                    code: "B-2".into(),
                    name: "药".into(),
                    category: proto::ItemCategory::Drug as i32,
                    class: proto::CatalogueClass::B as i32,
                    valid_from: "2026-01-01".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "invalid item.first_selfpay_ratio: required for a class B",
    );
    let after = admin
        .list_catalogue(proto::ListCatalogueRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.total, 4);
    node.stop().await;
}

#[tokio::test]
async fn filings_lifecycle_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330100", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;
    create(&mut admin, "p", &id(1), fields("张三", "", "0"))
        .await
        .unwrap();

    let apply = |rid: &str, id_number: String, region: &str, from: &str, to: &str| {
        proto::ApplyFilingRequest {
            request_id: rid.into(),
            id_number,
            filing_type: proto::FilingType::ResettledRetiree as i32,
            treatment_region: region.into(),
            institutions: vec!["H33020001".into(), "H33020002".into()],
            valid_from: from.into(),
            valid_to: to.into(),
            note: "随子女居住宁波".into(),
        }
    };
    let f = admin
        .apply_filing(apply("f-1", id(1), "330200", "2026-01-01", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.filing_id, "330100-F-000001");
    assert_eq!(f.status, proto::FilingStatus::Applied as i32);
    assert_eq!(f.institutions.len(), 2);

    assert_status(
        admin
            .apply_filing(apply("f-2", id(1), "33020", "2026-01-01", ""))
            .await,
        Code::InvalidArgument,
        "treatment_region",
    );
    assert_status(
        admin
            .apply_filing(apply("f-3", id(1), "330100", "2026-01-01", ""))
            .await,
        Code::InvalidArgument,
        "treatment_region",
    );
    assert_status(
        admin
            .apply_filing(apply("f-4", id(1), "330200", "2026-06-01", "2026-05-31"))
            .await,
        Code::InvalidArgument,
        "valid_to",
    );
    assert_status(
        admin
            .apply_filing(apply("f-5", id(2), "330200", "2026-01-01", ""))
            .await,
        Code::NotFound,
        "id_number",
    );
    let mut four = apply("f-6", id(1), "330200", "2026-01-01", "");
    four.institutions = vec!["A".into(), "B".into(), "C".into(), "D".into()];
    assert_status(
        admin.apply_filing(four).await,
        Code::InvalidArgument,
        "institutions",
    );
    let mut temp = apply("f-7", id(1), "330200", "2026-01-01", "");
    temp.filing_type = proto::FilingType::Temporary as i32;
    assert_status(
        admin.apply_filing(temp).await,
        Code::InvalidArgument,
        "filing_type",
    );
    let all = admin
        .list_filings(proto::ListFilingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.filings.len(), 1, "no invalid filing was written");

    let review = |rid: &str, fid: &str| proto::ReviewFilingRequest {
        request_id: rid.into(),
        filing_id: fid.into(),
        note: "ok".into(),
    };
    assert_status(
        admin.revoke_filing(review("r-0", &f.filing_id)).await,
        Code::FailedPrecondition,
        "applied",
    );
    let ok = admin
        .approve_filing(review("r-1", &f.filing_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status, proto::FilingStatus::Approved as i32);
    assert!(!ok.decided_at.is_empty());
    assert_status(
        admin.reject_filing(review("r-2", &f.filing_id)).await,
        Code::FailedPrecondition,
        "approved",
    );
    let revoked = admin
        .revoke_filing(review("r-3", &f.filing_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, proto::FilingStatus::Revoked as i32);
    assert_status(
        admin.approve_filing(review("r-4", "330100-F-999999")).await,
        Code::NotFound,
        "330100-F-999999",
    );

    let second = admin
        .apply_filing(apply("f-8", id(1), "330300", "2026-02-01", "2026-12-31"))
        .await
        .unwrap()
        .into_inner();
    let rejected = admin
        .reject_filing(review("r-5", &second.filing_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.status, proto::FilingStatus::Rejected as i32);
    let got = admin
        .get_filing(proto::GetFilingRequest {
            filing_id: second.filing_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, rejected);
    let by_region = admin
        .list_filings(proto::ListFilingsRequest {
            treatment_region: "330300".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_region.filings, vec![rejected]);
    node.stop().await;
}

#[tokio::test]
async fn policies_catalogue_institutions_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330100", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;

    // Policies: publish two versions, look up by date and by version.
    let publish = |rid: &str, from: &str, json: String| proto::PublishPolicyRequest {
        request_id: rid.into(),
        insurance_type: proto::InsuranceType::Employee as i32,
        effective_from: from.into(),
        policy_json: json,
        note: String::new(),
    };
    let json = policy_json("330100", "employee", Some("2026-01-01"));
    let july = policy_json("330100", "employee", Some("2026-07-01"));
    let v1 = admin
        .publish_policy(publish("pol-1", "2026-01-01", json.clone()))
        .await
        .unwrap()
        .into_inner();
    let v2 = admin
        .publish_policy(publish("pol-2", "", july.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(
        (v1.effective_from.as_str(), v2.effective_from.as_str()),
        ("2026-01-01", "2026-07-01")
    );
    assert_ne!(v1.digest, v2.digest);
    assert_eq!(v1.digest.len(), 64);
    assert_eq!(
        Policy::from_json(&v1.policy_json)
            .unwrap()
            .to_canonical_json(),
        json
    );
    let get = |date: &str, version: u32| proto::GetPolicyRequest {
        insurance_type: proto::InsuranceType::Employee as i32,
        on_date: date.into(),
        version,
    };
    assert_eq!(
        admin
            .get_policy(get("2026-06-30", 0))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    assert_eq!(
        admin
            .get_policy(get("2026-07-01", 0))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    assert_eq!(admin.get_policy(get("", 1)).await.unwrap().into_inner(), v1);
    assert_status(
        admin.get_policy(get("2025-12-31", 0)).await,
        Code::NotFound,
        "in force",
    );
    let march = policy_json("330100", "employee", Some("2026-03-01"));
    assert_status(
        admin.publish_policy(publish("pol-3", "", march)).await,
        Code::FailedPrecondition,
        "earlier",
    );
    assert_status(
        admin
            .publish_policy(publish("pol-4", "", "{\"nonsense\": 1}".into()))
            .await,
        Code::InvalidArgument,
        "policy_json",
    );
    assert_status(
        admin
            .publish_policy(publish("pol-5", "2026-02-30", json.clone()))
            .await,
        Code::InvalidArgument,
        "effective_from",
    );
    assert_status(
        admin
            .publish_policy(publish("pol-6", "2026-08-01", json.clone()))
            .await,
        Code::InvalidArgument,
        "effective_from",
    );
    let ningbo = policy_json("330200", "employee", Some("2026-08-01"));
    assert_status(
        admin.publish_policy(publish("pol-7", "", ningbo)).await,
        Code::InvalidArgument,
        "policy_json.region",
    );
    let mut resident = publish(
        "pol-8",
        "",
        policy_json("330100", "employee", Some("2026-08-01")),
    );
    resident.insurance_type = proto::InsuranceType::Resident as i32;
    assert_status(
        admin.publish_policy(resident).await,
        Code::InvalidArgument,
        "insurance_type",
    );
    let listed = admin
        .list_policies(proto::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.policies.len(), 2);

    // Catalogue.
    let item =
        |code: &str, class: proto::CatalogueClass, ratio: &str, cap: &str| proto::CatalogueItem {
            code: code.into(),
            name: "头孢呋辛酯片".into(),
            category: proto::ItemCategory::Drug as i32,
            class: class as i32,
            first_selfpay_ratio: ratio.into(),
            price_cap: cap.into(),
            unit: "盒".into(),
            valid_from: "2026-01-01".into(),
            valid_to: String::new(),
            free_of_charge: false,
        };
    let upsert = |rid: &str, i: proto::CatalogueItem| proto::UpsertCatalogueItemRequest {
        request_id: rid.into(),
        item: Some(i),
    };
    let b = admin
        .upsert_catalogue_item(upsert(
            "c-1",
            item("X01", proto::CatalogueClass::B, "0.1", "25.5"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.first_selfpay_ratio.as_str(), b.price_cap.as_str()),
        ("0.10", "25.50")
    );
    assert_status(
        admin
            .upsert_catalogue_item(upsert(
                "c-2",
                item("X02", proto::CatalogueClass::A, "0.1", ""),
            ))
            .await,
        Code::InvalidArgument,
        "first_selfpay_ratio",
    );
    assert_status(
        admin
            .upsert_catalogue_item(upsert(
                "c-3",
                item("X03", proto::CatalogueClass::B, "0.1", "1.001"),
            ))
            .await,
        Code::InvalidArgument,
        "item.price_cap",
    );
    let imported = admin
        .import_catalogue(proto::ImportCatalogueRequest {
            request_id: "ci-1".into(),
            rows: vec![
                proto::CatalogueRow {
                    row: 2,
                    code: "S01".into(),
                    name: "CT检查".into(),
                    category: "service".into(),
                    class: "甲".into(),
                    valid_from: "2026-01-01".into(),
                    ..Default::default()
                },
                proto::CatalogueRow {
                    row: 3,
                    code: "S02".into(),
                    name: "x".into(),
                    category: "service".into(),
                    class: "D".into(),
                    valid_from: "2026-01-01".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.inserted, 1);
    assert_eq!(
        imported
            .errors
            .iter()
            .map(|e| (e.row, e.field.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, "class")]
    );
    let list = admin
        .list_catalogue(proto::ListCatalogueRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 2);
    assert_status(
        admin
            .get_catalogue_item(proto::GetCatalogueItemRequest {
                code: "NOPE".into(),
            })
            .await,
        Code::NotFound,
        "NOPE",
    );

    // Institutions.
    let up = |rid: &str, i: proto::Institution| proto::UpsertInstitutionRequest {
        request_id: rid.into(),
        institution: Some(i),
    };
    admin
        .upsert_institution(up(
            "i-1",
            hospital("H33010001", proto::HospitalLevel::HospitalLevel3),
        ))
        .await
        .unwrap();
    let mut pharmacy = hospital("P33010001", proto::HospitalLevel::HospitalLevel2);
    pharmacy.kind = proto::InstitutionKind::Pharmacy as i32;
    assert_status(
        admin.upsert_institution(up("i-2", pharmacy.clone())).await,
        Code::InvalidArgument,
        "institution.level",
    );
    pharmacy.level = 0;
    let ph = admin
        .upsert_institution(up("i-3", pharmacy))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ph.level, proto::HospitalLevel::Ungraded as i32);
    let mut reversed = hospital("H33010002", proto::HospitalLevel::HospitalLevel1);
    reversed.agreement_to = "2023-12-31".into();
    assert_status(
        admin.upsert_institution(up("i-4", reversed)).await,
        Code::InvalidArgument,
        "agreement_to",
    );
    assert_status(
        admin
            .get_institution(proto::GetInstitutionRequest { code: "H99".into() })
            .await,
        Code::NotFound,
        "H99",
    );
    assert_eq!(
        admin
            .list_institutions(proto::ListInstitutionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .institutions
            .len(),
        2
    );

    create(&mut admin, "p-1", &id(1), fields("张三", "", "12.34"))
        .await
        .unwrap();
    let info = admin
        .get_node_info(proto::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info.region.as_str(),
            info.persons,
            info.institutions,
            info.catalogue_items,
            info.policies
        ),
        ("330100", 1, 2, 2, 2)
    );

    // Restart on the same directory: everything is still there, and request ids still
    // replay their original answers.
    let data = node.stop().await;
    let node = TestNode::start("330100", data).await;
    let mut admin = node.admin().await;
    let info2 = admin
        .get_node_info(proto::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info2.persons,
            info2.institutions,
            info2.catalogue_items,
            info2.policies
        ),
        (1, 2, 2, 2)
    );
    assert_eq!(
        admin
            .get_policy(get("2026-07-02", 0))
            .await
            .unwrap()
            .into_inner(),
        v2
    );
    let replay = admin
        .publish_policy(publish("pol-2", "", july))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, v2);
    assert_eq!(
        admin
            .list_policies(proto::ListPoliciesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .policies
            .len(),
        2
    );
    let p = admin
        .get_person(proto::GetPersonRequest {
            id_number: id(1),
            card_no: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.fields.unwrap().account_balance, "12.34");
    node.stop().await;
}

/// Re-publishing the latest version's document and date answers with that version and
/// mints nothing; a changed document (or a new note alone: no) makes the next version.
#[tokio::test]
async fn republishing_the_latest_policy_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start("330100", dir.path().to_path_buf()).await;
    let mut admin = node.admin().await;
    let publish = |rid: &str, json: String, note: &str| proto::PublishPolicyRequest {
        request_id: rid.into(),
        insurance_type: proto::InsuranceType::Employee as i32,
        effective_from: "2026-01-01".into(),
        policy_json: json,
        note: note.into(),
    };
    let json = policy_json("330100", "employee", Some("2026-01-01"));
    let v1 = admin
        .publish_policy(publish("pub-1", json.clone(), "first"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.version, v1.unchanged), (1, false));
    let again = admin
        .publish_policy(publish("pub-2", json.clone(), "again"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again,
        proto::PolicyVersion {
            unchanged: true,
            ..v1.clone()
        }
    );
    let listed = admin
        .list_policies(proto::ListPoliciesRequest { insurance_type: 0 })
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(listed, vec![v1.clone()]);

    // A changed document is a new version, and re-publishing the first one after it
    // is too: only the latest version counts as "already published".
    let mut changed: serde_json::Value = serde_json::from_str(&json).unwrap();
    changed["name"] = serde_json::Value::from("changed name");
    let v2 = admin
        .publish_policy(publish("pub-3", changed.to_string(), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v2.version, v2.unchanged), (2, false));
    assert_ne!(v2.digest, v1.digest);
    let v3 = admin
        .publish_policy(publish("pub-4", json.clone(), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v3.version, v3.unchanged, &v3.digest),
        (3, false, &v1.digest)
    );
    node.stop().await;
}

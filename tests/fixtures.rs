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

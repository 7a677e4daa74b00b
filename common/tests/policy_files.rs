//! The policy files shipped in `deploy/` load and validate, survive the canonical JSON
//! round trip, and bad documents are refused with the field path named.

use std::path::PathBuf;

use yidi_common::Error;
use yidi_common::policy::{Deductible, OfflineMode, Policy};
use yidi_common::types::{FilingType, HospitalLevel, PersonType, VisitKind};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn sample() -> String {
    std::fs::read_to_string(deploy().join("policy.sample.toml")).unwrap()
}

fn all_files() -> Vec<(PathBuf, String)> {
    let mut out = vec![(deploy().join("policy.sample.toml"), sample())];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(deploy().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert_eq!(
        paths.len(),
        10,
        "one policy per demo city (Zhejiang's three, Jiangsu's two) and insurance type"
    );
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        out.push((p, text));
    }
    out
}

#[test]
fn every_shipped_policy_loads_validates_and_round_trips() {
    let mut digests = std::collections::BTreeSet::new();
    for (path, text) in all_files() {
        let p = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        p.validate().unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name != "policy.sample" {
            assert_eq!(
                name,
                format!("{}-{}", p.region, p.insurance_type),
                "file name matches region and insurance type"
            );
        }
        let json = p.to_canonical_json();
        let back = Policy::from_json(&json).unwrap();
        assert_eq!(back, p, "{}", path.display());
        assert_eq!(back.to_canonical_json(), json, "canonical JSON is stable");
        assert_eq!(back.digest(), p.digest());
        assert_eq!(p.digest().len(), 64);
        // The same struct also deserialises through serde directly.
        let via_serde: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(via_serde, p);
        digests.insert(p.digest());
    }
    assert_eq!(digests.len(), 11, "every policy is distinct");
}

#[test]
fn demo_policies_cover_the_required_variety() {
    let policies: Vec<Policy> = all_files()
        .into_iter()
        .skip(1)
        .map(|(_, t)| Policy::from_toml(&t).unwrap())
        .collect();
    assert!(
        policies
            .iter()
            .any(|p| p.cross_region.filing[&FilingType::Temporary]
                .no_direct_settlement
                .contains(&VisitKind::Inpatient)),
        "some city refuses unfiled inpatient care"
    );
    assert!(
        policies
            .iter()
            .any(|p| matches!(p.offline, OfflineMode::Provisional { .. }))
    );
    assert!(policies.iter().any(|p| p.offline == OfflineMode::Refuse));
    let cuts: std::collections::BTreeSet<_> = policies
        .iter()
        .map(|p| p.cross_region.filing[&FilingType::Temporary].ratio_cut)
        .collect();
    assert!(cuts.len() >= 3, "cross-region cuts differ between cities");
}

#[test]
fn sample_documents_every_section() {
    let p = Policy::from_toml(&sample()).unwrap();
    assert_eq!(p.visits.len(), 5, "the sample shows every visit kind");
    assert!(p.serious_illness.is_some() && p.civil_servant.is_some());
    assert!(p.caps.outpatient_pool.is_some() && p.caps.chronic.is_some());
    assert!(matches!(
        p.visits[&VisitKind::Inpatient]
            .pool
            .as_ref()
            .unwrap()
            .deductible,
        Deductible::PerVisit { later: Some(_), .. }
    ));
    assert!(p.visits[&VisitKind::Pharmacy].pool.is_none());
}

/// Applies a textual edit to the sample and expects an error naming `field`.
fn refuse(from: &str, to: &str, field: &str) {
    let text = sample();
    assert!(text.contains(from), "sample contains {from:?}");
    let edited = text.replacen(from, to, 1);
    let err = Policy::from_toml(&edited).expect_err(&format!("{from:?} -> {to:?} must fail"));
    match &err {
        Error::Invalid { field: f, .. } => assert_eq!(f, field, "{err}"),
        Error::Precondition(_) => panic!("expected an invalid-field error, got {err}"),
    }
}

#[test]
fn bad_documents_name_the_field() {
    // Ratio outside 0–1, deep in a table.
    refuse(
        "[visit.inpatient.ratio.level3]\nin_service = \"0.85\"\nretired = \"0.88\"",
        "[visit.inpatient.ratio.level3]\nin_service = \"0.85\"\nretired = \"1.05\"",
        "visit.inpatient.ratio.level3.retired",
    );
    // Missing entry for a covered level × person type.
    refuse(
        "[visit.inpatient.ratio.level3]\nin_service = \"0.85\"\nretired = \"0.88\"",
        "[visit.inpatient.ratio.level3]\nin_service = \"0.85\"",
        "visit.inpatient.ratio.level3.retired",
    );
    // A level that the kind does not list.
    refuse(
        "[visit.chronic.ratio.level1]",
        "[visit.chronic.ratio.ungraded]\nin_service = \"0.9\"\nretired = \"0.9\"\n[visit.chronic.ratio.level1]",
        "visit.chronic.ratio.ungraded",
    );
    // Unknown level name.
    refuse(
        "[visit.chronic.ratio.level1]",
        "[visit.chronic.ratio.level4]",
        "visit.chronic.ratio.level4",
    );
    // Negative and over-precise amounts.
    refuse(
        "annual = \"400000.00\"",
        "annual = \"-1.00\"",
        "caps.annual",
    );
    refuse(
        "level3 = \"800.00\" }",
        "level3 = \"800.001\" }",
        "visit.inpatient.deductible.first.level3",
    );
    refuse(
        "retired = \"700.00\"",
        "retired = \"-700.00\"",
        "outpatient_deductible.retired",
    );
    // Overlapping and unsorted tiers.
    refuse(
        "from = \"100000.00\"\nratio = \"0.70\"",
        "from = \"90000.00\"\nratio = \"0.70\"",
        "serious_illness.tiers[1].from",
    );
    refuse(
        "from = \"20000.00\"\nto = \"100000.00\"",
        "from = \"20000.00\"\nto = \"10000.00\"",
        "serious_illness.tiers[0].to",
    );
    refuse(
        "from = \"20000.00\"\nto = \"100000.00\"",
        "from = \"20000.00\"",
        "serious_illness.tiers[0].to",
    );
    // A sub-cap above the annual cap.
    refuse(
        "chronic = \"30000.00\"",
        "chronic = \"500000.00\"",
        "caps.chronic",
    );
    // A missing cross-region rule, a bad cut.
    refuse(
        "[cross_region.filing.referral]            # 异地转诊\nratio_cut = \"0.10\"\n",
        "",
        "cross_region.filing.referral",
    );
    refuse(
        "ratio_cut = \"0.20\"",
        "ratio_cut = \"1.20\"",
        "cross_region.filing.temporary.ratio_cut",
    );
    // Later-admission deductibles belong to inpatient care only.
    refuse(
        "[visit.chronic]\nlevels = [\"level1\", \"level2\", \"level3\"]\ndeductible = { mode = \"none\" }",
        "[visit.chronic]\nlevels = [\"level1\", \"level2\", \"level3\"]\ndeductible = { mode = \"per_visit\", first = { level1 = \"1\", level2 = \"1\", level3 = \"1\" }, later = { level1 = \"1\", level2 = \"1\", level3 = \"1\" } }",
        "visit.chronic.deductible.later",
    );
    // The annual deductible belongs to outpatient pooling.
    refuse(
        "[visit.chronic]\nlevels = [\"level1\", \"level2\", \"level3\"]\ndeductible = { mode = \"none\" }",
        "[visit.chronic]\nlevels = [\"level1\", \"level2\", \"level3\"]\ndeductible = { mode = \"annual\" }",
        "visit.chronic.deductible.mode",
    );
    // Provisional offline mode needs an exposure limit.
    refuse(
        "exposure_limit = \"200000.00\"",
        "",
        "offline.exposure_limit",
    );
    refuse(
        "[offline]\nmode = \"provisional\"",
        "[offline]\nmode = \"maybe\"",
        "offline.mode",
    );
    // Resident person type in an employee policy.
    refuse(
        "person_types = [\"in_service\", \"retired\"]",
        "person_types = [\"in_service\", \"retired\", \"resident_adult\"]",
        "person_types",
    );
    refuse(
        "person_types = [\"in_service\", \"retired\"]",
        "person_types = [\"in_service\", \"in_service\", \"retired\"]",
        "person_types[1]",
    );
    refuse("region = \"330100\"", "region = \"330000\"", "region");
    refuse(
        "effective_from = \"2026-01-01\"",
        "effective_from = \"2026-02-30\"",
        "effective_from",
    );
    // A pooled kind needs ratios; a non-pooled kind may not have them.
    refuse(
        "[visit.pharmacy]\nlevels = [\"ungraded\"]\npooled = false",
        "[visit.pharmacy]\nlevels = [\"ungraded\"]\ndeductible = { mode = \"none\" }",
        "visit.pharmacy.ratio",
    );
    refuse(
        "[visit.pharmacy]\nlevels = [\"ungraded\"]\npooled = false",
        "[visit.pharmacy]\nlevels = [\"ungraded\"]\npooled = false\ndeductible = { mode = \"none\" }",
        "visit.pharmacy.deductible",
    );
    refuse(
        "ratio = \"0.50\"",
        "ratio = \"0.5x\"",
        "civil_servant.ratio",
    );
}

#[test]
fn syntax_errors_and_floats_are_refused() {
    // A bare number for an amount would pass through f64: refused.
    let err =
        Policy::from_toml(&sample().replacen("annual = \"400000.00\"", "annual = 400000.0", 1))
            .unwrap_err()
            .to_string();
    assert!(err.starts_with("invalid policy:"), "{err}");
    let err = Policy::from_toml(&sample().replacen("[caps]", "[caps]\nweekly = \"1\"", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("weekly"), "unknown keys are named: {err}");
    assert!(Policy::from_json("{}").is_err());
}

#[test]
fn validate_checks_policies_built_in_code() {
    let mut p = Policy::from_toml(&sample()).unwrap();
    p.visits
        .get_mut(&VisitKind::Outpatient)
        .unwrap()
        .pool
        .as_mut()
        .unwrap()
        .ratio
        .get_mut(&HospitalLevel::Level2)
        .unwrap()
        .insert(PersonType::Retired, rust_decimal::Decimal::TWO);
    let err = p.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("invalid visit.outpatient.ratio.level2.retired"),
        "{err}"
    );
}

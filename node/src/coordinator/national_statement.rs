//! Two-level clearing, the province's arithmetic (pure): what a provincial coordinator
//! reports to the national coordinator — its cities' cross-province positions summed per
//! counterparty province (counts, sums, digests; digests add, so a province's figure
//! toward another equals the other's figure toward it exactly when every city pair
//! agrees) — and the provincial statement of a national round: what each city pays into
//! or receives from the provincial clearing account for its cross-province records, with
//! the national clearing account (000000) as the one counterparty, so that the cities'
//! nets sum to the province's national position and Σ net = 0 holds as in every round.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use yidi_common::{
    digest::SetDigest,
    money::{self, Sign},
    netting::{self, Gross},
    proto,
    region::{self, NATIONAL},
};

use crate::{Error, Result};

/// One side of a position, summed over cities.
#[derive(Default)]
struct SideSum {
    count: u64,
    sum: Decimal,
    digest: SetDigest,
    kinds: BTreeMap<String, (u64, Decimal)>,
}

impl SideSum {
    fn add(&mut self, count: u64, sum: &str, digest: &str, kinds: &[proto::KindSum]) -> Result<()> {
        self.count += count;
        self.sum += money::parse(sum, "sum", Sign::Any)?;
        let d = SetDigest::from_hex(digest).ok_or_else(|| {
            Error::Internal(format!("a city reported an unreadable digest {digest:?}"))
        })?;
        self.digest.merge(&d);
        for k in kinds {
            let e = self.kinds.entry(k.kind.clone()).or_default();
            e.0 += k.count;
            e.1 += money::parse(&k.sum, "kinds.sum", Sign::Any)?;
        }
        Ok(())
    }

    fn kind_sums(&self) -> Vec<proto::KindSum> {
        self.kinds
            .iter()
            .map(|(kind, (count, sum))| proto::KindSum {
                kind: kind.clone(),
                count: *count,
                sum: money::format(*sum),
            })
            .collect()
    }
}

/// The province of a city's counterparty; a counterparty in the reporting city's own
/// province has no place in a national round (the node's freeze keeps it out).
fn other_province(city: &str, counterparty: &str) -> Result<String> {
    let p = region::RegionCode::parse(counterparty, "counterparty")?.province();
    if !region::cross_province(city, counterparty) {
        return Err(Error::Internal(format!(
            "{city} reported {counterparty}, of its own province, in a national round"
        )));
    }
    Ok(p.to_string())
}

/// The province's report to the national coordinator: per counterparty province, the
/// sum of its cities' positions toward that province's cities.
pub(crate) fn aggregate(
    province: &str,
    cities: &[proto::ReportPositionsResponse],
    period: &str,
) -> Result<proto::ReportPositionsResponse> {
    let mut by: BTreeMap<String, (SideSum, SideSum)> = BTreeMap::new();
    for c in cities {
        for p in &c.positions {
            let q = other_province(&c.region, &p.counterparty)?;
            let (r, y) = by.entry(q).or_default();
            r.add(
                p.receivable_count,
                &p.receivable_sum,
                &p.receivable_digest,
                &p.receivable_kinds,
            )?;
            y.add(
                p.payable_count,
                &p.payable_sum,
                &p.payable_digest,
                &p.payable_kinds,
            )?;
        }
    }
    Ok(proto::ReportPositionsResponse {
        region: province.to_owned(),
        period: period.to_owned(),
        positions: by
            .into_iter()
            .map(|(q, (r, y))| proto::Position {
                counterparty: q,
                receivable_count: r.count,
                receivable_sum: money::format(r.sum),
                receivable_digest: r.digest.to_hex(),
                payable_count: y.count,
                payable_sum: money::format(y.sum),
                payable_digest: y.digest.to_hex(),
                receivable_kinds: r.kind_sums(),
                payable_kinds: y.kind_sums(),
            })
            .collect(),
        reserves: Vec::new(),
    })
}

/// Receivable and payable of a province's report, in fen: what the national statement
/// must show for it.
pub(crate) fn totals_fen(report: &proto::ReportPositionsResponse) -> Result<(i64, i64)> {
    let (mut r, mut p) = (Decimal::ZERO, Decimal::ZERO);
    for x in &report.positions {
        r += money::parse(&x.receivable_sum, "receivable_sum", Sign::Any)?;
        p += money::parse(&x.payable_sum, "payable_sum", Sign::Any)?;
    }
    Ok((money::to_fen(r), money::to_fen(p)))
}

/// The provincial statement of national round `national` (the national statement as the
/// province received it): every city's cross-province receivable, payable and net, the
/// instructions between the cities, the provincial clearing account `province` and the
/// national clearing account, and per city and counterparty province the gross amount
/// (by kind). Refused when the cities' nets do not sum to the province's national net.
pub(crate) fn provincial(
    province: &str,
    cities: &[String],
    reports: &[proto::ReportPositionsResponse],
    national: &proto::Statement,
) -> Result<proto::Statement> {
    let nat = NATIONAL.to_string();
    let mut participants: Vec<String> = cities.to_vec();
    participants.push(nat.clone());
    participants.sort();
    let mut gross = Vec::new();
    let mut rows = Vec::new();
    for c in reports {
        let mut per_q: BTreeMap<String, (SideSum, SideSum)> = BTreeMap::new();
        for p in &c.positions {
            let q = other_province(&c.region, &p.counterparty)?;
            let (r, y) = per_q.entry(q).or_default();
            r.add(
                p.receivable_count,
                &p.receivable_sum,
                &p.receivable_digest,
                &p.receivable_kinds,
            )?;
            y.add(
                p.payable_count,
                &p.payable_sum,
                &p.payable_digest,
                &p.payable_kinds,
            )?;
        }
        for (q, (r, y)) in per_q {
            for (debtor, creditor, side) in [
                (q.clone(), c.region.clone(), &r),
                (c.region.clone(), q.clone(), &y),
            ] {
                if side.count == 0 {
                    continue;
                }
                let national_side = if debtor == q {
                    (nat.clone(), creditor.clone())
                } else {
                    (debtor.clone(), nat.clone())
                };
                gross.push(Gross {
                    debtor: national_side.0,
                    creditor: national_side.1,
                    amount: side.sum,
                    count: side.count,
                });
                rows.push(proto::GrossEntry {
                    debtor,
                    creditor,
                    amount: money::format(side.sum),
                    count: side.count,
                    kinds: side.kind_sums(),
                });
            }
        }
    }
    let n = netting::net(&participants, &gross, province)?;
    let own = national
        .nets
        .iter()
        .find(|x| x.region == province)
        .map(|x| money::parse(&x.net, "net", Sign::Any))
        .transpose()?
        .unwrap_or_default();
    let cities_net: Decimal = n
        .nets
        .iter()
        .filter(|x| x.region != nat)
        .map(|x| x.net)
        .sum();
    if cities_net != own {
        return Err(Error::FailedPrecondition(format!(
            "the cities' cross-province nets sum to {}, the national statement's net of {province} is {}",
            money::format(cities_net),
            money::format(own)
        )));
    }
    let mut s = proto::Statement {
        round_id: national.round_id.clone(),
        period: national.period.clone(),
        nets: n
            .nets
            .iter()
            .map(|x| proto::NetPosition {
                region: x.region.clone(),
                receivable: money::format(x.receivable),
                payable: money::format(x.payable),
                net: money::format(x.net),
            })
            .collect(),
        instructions: n
            .instructions
            .iter()
            .map(|i| proto::PaymentInstruction {
                from_region: i.from.clone(),
                to_region: i.to.clone(),
                amount: money::format(i.amount),
            })
            .collect(),
        digest: String::new(),
        gross: rows,
        bilateral_transfers: n.bilateral_transfers,
        netted_transfers: n.netted_transfers,
        clearing_account: province.to_owned(),
        reserves: Vec::new(),
    };
    s.digest = netting::statement_digest(&s);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(ids: &[&str]) -> String {
        let mut d = SetDigest::default();
        for i in ids {
            d.add(i.as_bytes());
        }
        d.to_hex()
    }

    fn pos(cp: &str, r: (u64, &str, &[&str]), p: (u64, &str, &[&str])) -> proto::Position {
        proto::Position {
            counterparty: cp.into(),
            receivable_count: r.0,
            receivable_sum: r.1.into(),
            receivable_digest: digest_of(r.2),
            payable_count: p.0,
            payable_sum: p.1.into(),
            payable_digest: digest_of(p.2),
            receivable_kinds: vec![],
            payable_kinds: vec![],
        }
    }

    fn report(region: &str, positions: Vec<proto::Position>) -> proto::ReportPositionsResponse {
        proto::ReportPositionsResponse {
            region: region.into(),
            period: "2026-12".into(),
            positions,
            reserves: vec![],
        }
    }

    /// Zhejiang's cities toward Jiangsu's sum into one position toward 320000 whose
    /// digest is the digest of all their records; the provincial statement's city nets
    /// sum to the national net, Σ net = 0 with the national account, and the
    /// instructions move each city's net.
    #[test]
    fn a_province_reports_its_cities_summed_and_settles_them_through_its_account() {
        let reports = vec![
            report(
                "330100",
                vec![pos(
                    "320100",
                    (2, "300.50", &["a", "b"]),
                    (1, "100.00", &["c"]),
                )],
            ),
            report(
                "330200",
                vec![
                    pos("320100", (0, "0.00", &[]), (1, "40.25", &["d"])),
                    pos("320500", (1, "10.00", &["e"]), (0, "0.00", &[])),
                ],
            ),
        ];
        let agg = aggregate("330000", &reports, "2026-12").unwrap();
        assert_eq!(agg.positions.len(), 1);
        let p = &agg.positions[0];
        assert_eq!(p.counterparty, "320000");
        assert_eq!(
            (p.receivable_count, p.receivable_sum.as_str()),
            (3, "310.50")
        );
        assert_eq!((p.payable_count, p.payable_sum.as_str()), (2, "140.25"));
        assert_eq!(p.receivable_digest, digest_of(&["a", "b", "e"]));
        assert_eq!(p.payable_digest, digest_of(&["c", "d"]));
        assert_eq!(totals_fen(&agg).unwrap(), (31050, 14025));

        let national = proto::Statement {
            round_id: "2026-12-n1".into(),
            period: "2026-12".into(),
            nets: vec![proto::NetPosition {
                region: "330000".into(),
                receivable: "310.50".into(),
                payable: "140.25".into(),
                net: "170.25".into(),
            }],
            ..Default::default()
        };
        let cities = vec!["330100".to_owned(), "330200".to_owned()];
        let s = provincial("330000", &cities, &reports, &national).unwrap();
        let nets: Vec<(&str, &str)> = s
            .nets
            .iter()
            .map(|n| (n.region.as_str(), n.net.as_str()))
            .collect();
        assert_eq!(
            nets,
            vec![
                ("000000", "-170.25"),
                ("330100", "200.50"),
                ("330200", "-30.25")
            ]
        );
        let pays: Vec<(&str, &str, &str)> = s
            .instructions
            .iter()
            .map(|i| {
                (
                    i.from_region.as_str(),
                    i.to_region.as_str(),
                    i.amount.as_str(),
                )
            })
            .collect();
        assert_eq!(
            pays,
            vec![
                ("000000", "330000", "170.25"),
                ("330200", "330000", "30.25"),
                ("330000", "330100", "200.50"),
            ]
        );
        assert_eq!(s.digest, netting::statement_digest(&s));
        assert_eq!(s.gross.len(), 4);

        let wrong = proto::Statement {
            nets: vec![proto::NetPosition {
                region: "330000".into(),
                net: "170.24".into(),
                ..Default::default()
            }],
            ..national
        };
        let e = provincial("330000", &cities, &reports, &wrong).unwrap_err();
        assert!(e.to_string().contains("sum to 170.25"), "{e}");
    }

    #[test]
    fn a_city_reporting_its_own_province_is_refused() {
        let reports = vec![report(
            "330100",
            vec![pos("330200", (1, "1.00", &["a"]), (0, "0.00", &[]))],
        )];
        let e = aggregate("330000", &reports, "2026-12").unwrap_err();
        assert!(e.to_string().contains("of its own province"), "{e}");
    }
}

//! Reconciliation of a round's reports, pure: pairs each creditor's receivable with its
//! debtor's payable, says whether the two sides agree (count, sum and digest), turns an
//! agreed pair into a gross amount for netting, and compares two sides' record lists
//! (the drill-down) into a dispute. No I/O: the round (round.rs) fetches the reports and
//! the record lists and stores what comes out.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use yidi_common::{
    money::{self, Sign},
    netting::Gross,
    proto,
};

use crate::Result;

/// One side of a pair as reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Side {
    pub count: u64,
    pub sum: String,
    pub digest: String,
    pub kinds: Vec<proto::KindSum>,
}

impl Side {
    /// The side of a pair its node did not report: no records.
    fn zero() -> Self {
        Self {
            count: 0,
            sum: money::format(Decimal::ZERO),
            digest: yidi_common::digest::SetDigest::default().to_hex(),
            kinds: Vec::new(),
        }
    }
}

/// A pair of regions with what each reported about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    pub creditor: String,
    pub debtor: String,
    /// The creditor's receivable from the debtor.
    pub at_creditor: Side,
    /// The debtor's payable to the creditor.
    pub at_debtor: Side,
}

/// What a pair's comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Comparison {
    /// Both sides agree; with records, the gross amount the debtor owes and (when the
    /// creditor's breakdown adds up) the amount by record kind.
    Agreed(Option<(Gross, Vec<proto::KindSum>)>),
    /// A region of the pair is not a participant: a dispute without a drill-down.
    Stranger(proto::Dispute),
    /// The sides differ: drill down into the records.
    Differs,
}

/// Every record in the reports, on both sides (a record is counted at each node).
#[must_use]
pub(crate) fn record_count(reports: &[proto::ReportPositionsResponse]) -> u64 {
    reports
        .iter()
        .flat_map(|r| &r.positions)
        .map(|p| p.receivable_count.saturating_add(p.payable_count))
        .fold(0, u64::saturating_add)
}

/// Every pair some node reported, in (creditor, debtor) order, each with both sides (a
/// side its node did not report has no records).
#[must_use]
pub(crate) fn pairs(reports: &[proto::ReportPositionsResponse]) -> Vec<Pair> {
    let mut as_creditor: BTreeMap<(String, String), Side> = BTreeMap::new();
    let mut as_debtor: BTreeMap<(String, String), Side> = BTreeMap::new();
    for r in reports {
        for p in &r.positions {
            as_creditor.insert(
                (r.region.clone(), p.counterparty.clone()),
                Side {
                    count: p.receivable_count,
                    sum: p.receivable_sum.clone(),
                    digest: p.receivable_digest.clone(),
                    kinds: p.receivable_kinds.clone(),
                },
            );
            as_debtor.insert(
                (p.counterparty.clone(), r.region.clone()),
                Side {
                    count: p.payable_count,
                    sum: p.payable_sum.clone(),
                    digest: p.payable_digest.clone(),
                    kinds: p.payable_kinds.clone(),
                },
            );
        }
    }
    let keys: BTreeSet<(String, String)> = as_creditor
        .keys()
        .chain(as_debtor.keys())
        .cloned()
        .collect();
    keys.into_iter()
        .map(|key| Pair {
            at_creditor: as_creditor.remove(&key).unwrap_or_else(Side::zero),
            at_debtor: as_debtor.remove(&key).unwrap_or_else(Side::zero),
            creditor: key.0,
            debtor: key.1,
        })
        .collect()
}

/// Compares a pair's two sides. Sums are compared as amounts (`1.5` and `1.50` agree).
pub(crate) fn compare(pair: &Pair, participants: &[String]) -> Result<Comparison> {
    let (c, d) = (&pair.at_creditor, &pair.at_debtor);
    if !participants.contains(&pair.creditor) || !participants.contains(&pair.debtor) {
        return Ok(Comparison::Stranger(proto::Dispute {
            creditor: pair.creditor.clone(),
            debtor: pair.debtor.clone(),
            creditor_sum: c.sum.clone(),
            debtor_sum: d.sum.clone(),
            ..Default::default()
        }));
    }
    let same = c.count == d.count
        && money::parse(&c.sum, "sum", Sign::Any).ok()
            == money::parse(&d.sum, "sum", Sign::Any).ok()
        && c.digest == d.digest;
    if !same {
        return Ok(Comparison::Differs);
    }
    let amount = money::parse(&c.sum, "sum", Sign::Any)?;
    if c.count == 0 {
        return Ok(Comparison::Agreed(None));
    }
    let kinds = if kinds_add_up(&c.kinds, c.count, amount) {
        c.kinds.clone()
    } else {
        Vec::new()
    };
    Ok(Comparison::Agreed(Some((
        Gross {
            debtor: pair.debtor.clone(),
            creditor: pair.creditor.clone(),
            amount,
            count: c.count,
        },
        kinds,
    ))))
}

/// Whether a reported by-kind breakdown adds up to the side's count and sum: one that
/// does not (or a node that sent none) leaves the pair without a breakdown rather than
/// with a wrong one.
fn kinds_add_up(kinds: &[proto::KindSum], count: u64, sum: Decimal) -> bool {
    let mut n = 0;
    let mut total = Decimal::ZERO;
    for k in kinds {
        match money::parse(&k.sum, "sum", Sign::Any) {
            Ok(s) => total += s,
            Err(_) => return false,
        }
        n += k.count;
    }
    !kinds.is_empty() && n == count && total == sum
}

/// The dispute of a pair whose sides differ, from each side's records: ids only one
/// side has, ids whose amount or kind differ, and each side's sum.
#[must_use]
pub(crate) fn dispute(
    creditor: &str,
    debtor: &str,
    at_creditor: Vec<proto::ClaimAmount>,
    at_debtor: Vec<proto::ClaimAmount>,
) -> proto::Dispute {
    let by_id = |v: Vec<proto::ClaimAmount>| -> BTreeMap<String, proto::ClaimAmount> {
        v.into_iter().map(|c| (c.entry_id.clone(), c)).collect()
    };
    let (at_creditor, at_debtor) = (by_id(at_creditor), by_id(at_debtor));
    let sum = |m: &BTreeMap<String, proto::ClaimAmount>| {
        money::format(
            m.values()
                .map(|c| money::parse(&c.amount, "amount", Sign::Any).unwrap_or_default())
                .sum(),
        )
    };
    proto::Dispute {
        creditor: creditor.to_owned(),
        debtor: debtor.to_owned(),
        only_at_creditor: at_creditor
            .keys()
            .filter(|k| !at_debtor.contains_key(*k))
            .cloned()
            .collect(),
        only_at_debtor: at_debtor
            .keys()
            .filter(|k| !at_creditor.contains_key(*k))
            .cloned()
            .collect(),
        creditor_sum: sum(&at_creditor),
        debtor_sum: sum(&at_debtor),
        amount_differs: at_creditor
            .iter()
            .filter(|(k, c)| {
                at_debtor.get(*k).is_some_and(|d| {
                    (d.amount.as_str(), d.kind.as_str()) != (c.amount.as_str(), c.kind.as_str())
                })
            })
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

/// Records one participant takes out of a round to resolve a dispute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exclusion {
    pub region: String,
    pub counterparty: String,
    pub side: &'static str,
    pub entry_ids: Vec<String>,
}

/// What resolving `disputes` takes out at each side, creditor then debtor per dispute:
/// every disputed record a side holds (only there, or with a different amount), so
/// that both sides carry them to the next round. Nothing is asked of a region that is
/// not a participant, nor of a side with nothing to take out.
#[must_use]
pub(crate) fn exclusions(disputes: &[proto::Dispute], participants: &[String]) -> Vec<Exclusion> {
    let mut out = Vec::new();
    for d in disputes {
        for (region, counterparty, side, only) in [
            (&d.creditor, &d.debtor, "receivable", &d.only_at_creditor),
            (&d.debtor, &d.creditor, "payable", &d.only_at_debtor),
        ] {
            let entry_ids: Vec<String> = only.iter().chain(&d.amount_differs).cloned().collect();
            if entry_ids.is_empty() || !participants.contains(region) {
                continue;
            }
            out.push(Exclusion {
                region: region.clone(),
                counterparty: counterparty.clone(),
                side,
                entry_ids,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use yidi_common::digest::SetDigest;

    use super::*;
    use crate::store::ledger::record_bytes;

    const HZ: &str = "330100";
    const NB: &str = "330200";

    fn claim(id: &str, fen: i64) -> proto::ClaimAmount {
        proto::ClaimAmount {
            entry_id: id.to_owned(),
            claim_id: id.to_owned(),
            kind: "claim".to_owned(),
            amount: money::format(money::from_fen(fen)),
            period: "2026-03".to_owned(),
        }
    }

    /// The side a node reports for these records: count, sum, digest and kinds, as the
    /// node computes them (store::clearing::position).
    fn side_of(claims: &[proto::ClaimAmount]) -> Side {
        let (mut digest, mut fen, mut kinds) = (SetDigest::default(), 0, BTreeMap::new());
        for c in claims {
            let a = money::to_fen(money::parse(&c.amount, "amount", Sign::Any).unwrap());
            digest.add(&record_bytes(&c.entry_id, &c.kind, &c.claim_id, a));
            fen += a;
            let k: &mut (u64, i64) = kinds.entry(c.kind.clone()).or_default();
            k.0 += 1;
            k.1 += a;
        }
        Side {
            count: claims.len() as u64,
            sum: money::format(money::from_fen(fen)),
            digest: digest.to_hex(),
            kinds: kinds
                .into_iter()
                .map(|(kind, (count, fen))| proto::KindSum {
                    kind,
                    count,
                    sum: money::format(money::from_fen(fen)),
                })
                .collect(),
        }
    }

    fn position(counterparty: &str, receivable: &Side, payable: &Side) -> proto::Position {
        proto::Position {
            counterparty: counterparty.to_owned(),
            receivable_count: receivable.count,
            receivable_sum: receivable.sum.clone(),
            receivable_digest: receivable.digest.clone(),
            payable_count: payable.count,
            payable_sum: payable.sum.clone(),
            payable_digest: payable.digest.clone(),
            receivable_kinds: receivable.kinds.clone(),
            payable_kinds: payable.kinds.clone(),
        }
    }

    fn report(region: &str, positions: Vec<proto::Position>) -> proto::ReportPositionsResponse {
        proto::ReportPositionsResponse {
            region: region.to_owned(),
            period: "2026-03".to_owned(),
            positions,
            reserves: Vec::new(),
        }
    }

    fn participants() -> Vec<String> {
        vec![HZ.to_owned(), NB.to_owned()]
    }

    /// Hangzhou is owed 123.45 + 0.55 by Ningbo and owes it 10.00; both report it
    /// alike: two agreed pairs with their exact amounts, and the records counted twice.
    #[test]
    fn agreed_pairs_give_their_gross_amounts() {
        let hz_recv = side_of(&[claim("a", 12_345), claim("b", 55)]);
        let hz_pay = side_of(&[claim("c", 1_000)]);
        let reports = [
            report(HZ, vec![position(NB, &hz_recv, &hz_pay)]),
            report(NB, vec![position(HZ, &hz_pay, &hz_recv)]),
        ];
        assert_eq!(record_count(&reports), 6);
        let pairs = pairs(&reports);
        assert_eq!(
            pairs
                .iter()
                .map(|p| (p.creditor.as_str(), p.debtor.as_str()))
                .collect::<Vec<_>>(),
            [(HZ, NB), (NB, HZ)]
        );
        let Comparison::Agreed(Some((g, kinds))) = compare(&pairs[0], &participants()).unwrap()
        else {
            panic!("agreed");
        };
        assert_eq!(
            (
                g.debtor.as_str(),
                g.creditor.as_str(),
                money::format(g.amount),
                g.count
            ),
            (NB, HZ, "124.00".to_owned(), 2)
        );
        assert_eq!(kinds, hz_recv.kinds);
        let Comparison::Agreed(Some((g, _))) = compare(&pairs[1], &participants()).unwrap() else {
            panic!("agreed");
        };
        assert_eq!(
            (g.debtor.as_str(), money::format(g.amount)),
            (HZ, "10.00".to_owned())
        );
    }

    /// A breakdown that does not add up is dropped, not passed on; a pair with no
    /// records agrees without a gross amount; a region outside the participants is a
    /// dispute with each side's sum.
    #[test]
    fn breakdowns_empty_pairs_and_strangers() {
        let mut s = side_of(&[claim("a", 100)]);
        s.kinds[0].sum = "1.01".into();
        let p = Pair {
            creditor: HZ.into(),
            debtor: NB.into(),
            at_creditor: s.clone(),
            at_debtor: s.clone(),
        };
        let Comparison::Agreed(Some((g, kinds))) = compare(&p, &participants()).unwrap() else {
            panic!("agreed");
        };
        assert_eq!(
            (money::format(g.amount), kinds),
            ("1.00".to_owned(), vec![])
        );
        let empty = Pair {
            at_creditor: Side::zero(),
            at_debtor: Side::zero(),
            ..p.clone()
        };
        assert_eq!(
            compare(&empty, &participants()).unwrap(),
            Comparison::Agreed(None)
        );
        let stranger = Pair {
            debtor: "330900".into(),
            at_debtor: Side::zero(),
            ..p
        };
        assert_eq!(
            compare(&stranger, &participants()).unwrap(),
            Comparison::Stranger(proto::Dispute {
                creditor: HZ.into(),
                debtor: "330900".into(),
                creditor_sum: "1.00".into(),
                debtor_sum: "0.00".into(),
                ..Default::default()
            })
        );
    }

    /// A side reported by one node only is compared with an empty side.
    #[test]
    fn a_side_nobody_reported_is_empty() {
        let recv = side_of(&[claim("a", 5_000)]);
        let reports = [report(HZ, vec![position(NB, &recv, &Side::zero())])];
        let pairs = pairs(&reports);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].at_debtor, Side::zero());
        assert_eq!(
            compare(&pairs[0], &participants()).unwrap(),
            Comparison::Differs
        );
        assert_eq!(
            dispute(HZ, NB, vec![claim("a", 5_000)], vec![]),
            proto::Dispute {
                creditor: HZ.into(),
                debtor: NB.into(),
                only_at_creditor: vec!["a".into()],
                creditor_sum: "50.00".into(),
                debtor_sum: "0.00".into(),
                ..Default::default()
            }
        );
    }

    /// Each side takes out what only it has and what differs; a stranger is asked
    /// nothing, nor a side with nothing to take out.
    #[test]
    fn resolving_takes_each_sides_disputed_records_out() {
        let disputes = [
            proto::Dispute {
                creditor: HZ.into(),
                debtor: NB.into(),
                only_at_creditor: vec!["a".into()],
                amount_differs: vec!["c".into()],
                ..Default::default()
            },
            proto::Dispute {
                creditor: NB.into(),
                debtor: HZ.into(),
                only_at_creditor: vec!["d".into()],
                ..Default::default()
            },
            proto::Dispute {
                creditor: HZ.into(),
                debtor: "330900".into(),
                only_at_debtor: vec!["e".into()],
                ..Default::default()
            },
        ];
        let x = |region: &str, counterparty: &str, side, ids: &[&str]| Exclusion {
            region: region.into(),
            counterparty: counterparty.into(),
            side,
            entry_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert_eq!(
            exclusions(&disputes, &participants()),
            [
                x(HZ, NB, "receivable", &["a", "c"]),
                x(NB, HZ, "payable", &["c"]),
                x(NB, HZ, "receivable", &["d"]),
            ]
        );
    }

    /// One change to one side of a pair's records.
    #[derive(Debug, Clone)]
    enum Change {
        Amount(usize, i64),
        Missing(usize),
        Extra(i64),
        Kind(usize),
    }

    fn records() -> impl Strategy<Value = Vec<proto::ClaimAmount>> {
        prop::collection::vec(-50_000i64..5_000_000, 1..40).prop_map(|fens| {
            fens.into_iter()
                .enumerate()
                .map(|(i, fen)| claim(&format!("330100-S-{i:010}"), fen))
                .collect()
        })
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (
                any::<prop::sample::Index>().prop_map(|i| i.index(usize::MAX)),
                1i64..1_000_000
            )
                .prop_map(|(i, d)| Change::Amount(i, d)),
            any::<prop::sample::Index>().prop_map(|i| Change::Missing(i.index(usize::MAX))),
            (-50_000i64..5_000_000).prop_map(Change::Extra),
            any::<prop::sample::Index>().prop_map(|i| Change::Kind(i.index(usize::MAX))),
        ]
    }

    proptest! {
        /// Both sides from the same records agree, with the exact sum; any single
        /// changed, missing or extra record on either side makes the pair differ, and
        /// the drill-down names exactly that record and each side's exact sum.
        #[test]
        fn any_single_difference_is_found(
            claims in records(),
            change in change(),
            at_debtor_side in any::<bool>(),
        ) {
            let agreed = Pair {
                creditor: HZ.into(),
                debtor: NB.into(),
                at_creditor: side_of(&claims),
                at_debtor: side_of(&claims),
            };
            let Comparison::Agreed(Some((g, _))) = compare(&agreed, &participants()).unwrap() else {
                panic!("the same records agree");
            };
            let fen: i64 = claims.iter().map(|c| money::to_fen(money::parse(&c.amount, "a", Sign::Any).unwrap())).sum();
            prop_assert_eq!(money::to_fen(g.amount), fen);

            let mut other = claims.clone();
            let (id, kind) = match change {
                Change::Amount(i, d) => {
                    let c = &mut other[i % claims.len()];
                    let a = money::to_fen(money::parse(&c.amount, "a", Sign::Any).unwrap());
                    c.amount = money::format(money::from_fen(a + d));
                    (c.entry_id.clone(), "differs")
                }
                Change::Kind(i) => {
                    let c = &mut other[i % claims.len()];
                    c.kind = "reversal".into();
                    (c.entry_id.clone(), "differs")
                }
                Change::Missing(i) => (other.remove(i % claims.len()).entry_id, "missing"),
                Change::Extra(fen) => {
                    other.push(claim("330100-S-9999999999", fen));
                    ("330100-S-9999999999".to_owned(), "extra")
                }
            };
            let (at_creditor, at_debtor) = if at_debtor_side {
                (claims.clone(), other.clone())
            } else {
                (other.clone(), claims.clone())
            };
            let pair = Pair {
                at_creditor: side_of(&at_creditor),
                at_debtor: side_of(&at_debtor),
                ..agreed
            };
            prop_assert_eq!(compare(&pair, &participants()).unwrap(), Comparison::Differs);
            let d = dispute(HZ, NB, at_creditor.clone(), at_debtor.clone());
            let only = |v: &[String]| v.to_vec();
            let expected: (Vec<String>, Vec<String>, Vec<String>) = match (kind, at_debtor_side) {
                ("differs", _) => (vec![], vec![], vec![id.clone()]),
                ("missing", true) | ("extra", false) => (vec![id.clone()], vec![], vec![]),
                _ => (vec![], vec![id.clone()], vec![]),
            };
            prop_assert_eq!(
                (only(&d.only_at_creditor), only(&d.only_at_debtor), only(&d.amount_differs)),
                expected
            );
            prop_assert_eq!(d.creditor_sum, side_of(&at_creditor).sum);
            prop_assert_eq!(d.debtor_sum, side_of(&at_debtor).sum);
        }
    }
}

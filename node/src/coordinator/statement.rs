//! The clearing statement, pure: issued from a round's agreed gross amounts (netting
//! from common, Σ net = 0), checked for consistency before it is sent (every net is
//! receivable − payable, they sum to zero, the instructions settle every position
//! exactly, the digest covers it), and trimmed to what each participant is asked to
//! confirm. No I/O: the round (round.rs) stores and sends what comes out.

use std::collections::HashMap;

use rust_decimal::Decimal;
use yidi_common::{
    money::{self, Sign},
    netting::{self, Gross},
    proto,
};

use crate::{Error, Result, clearing::verify::moved_fen};

/// The statement of a round from its agreed pairs (each with its by-kind breakdown,
/// empty when there is none), netted among `participants` through the
/// `clearing_account`; the reserves are the reports' (one row per pair of regions).
pub(crate) fn issue(
    round_id: &str,
    period: &str,
    clearing_account: &str,
    participants: &[String],
    agreed: Vec<(Gross, Vec<proto::KindSum>)>,
    reports: &[proto::ReportPositionsResponse],
) -> Result<proto::Statement> {
    let (gross, kinds): (Vec<Gross>, Vec<Vec<proto::KindSum>>) = agreed.into_iter().unzip();
    let result = netting::net(participants, &gross, clearing_account)?;
    let f = money::format;
    let mut statement = proto::Statement {
        round_id: round_id.to_owned(),
        period: period.to_owned(),
        nets: result
            .nets
            .iter()
            .map(|n| proto::NetPosition {
                region: n.region.clone(),
                receivable: f(n.receivable),
                payable: f(n.payable),
                net: f(n.net),
            })
            .collect(),
        instructions: result
            .instructions
            .iter()
            .map(|i| proto::PaymentInstruction {
                from_region: i.from.clone(),
                to_region: i.to.clone(),
                amount: f(i.amount),
            })
            .collect(),
        digest: String::new(),
        gross: gross
            .iter()
            .zip(kinds)
            .map(|(g, kinds)| proto::GrossEntry {
                debtor: g.debtor.clone(),
                creditor: g.creditor.clone(),
                amount: f(g.amount),
                count: g.count,
                kinds,
            })
            .collect(),
        bilateral_transfers: result.bilateral_transfers,
        netted_transfers: result.netted_transfers,
        clearing_account: clearing_account.to_owned(),
        reserves: reserves(reports),
    };
    statement.digest = netting::statement_digest(&statement);
    let problems = check(&statement);
    if !problems.is_empty() {
        return Err(Error::Internal(format!(
            "statement of round {round_id} does not add up: {}",
            problems.join("; ")
        )));
    }
    Ok(statement)
}

/// Every reported reserve balance, once per (home, treatment) pair: both regions of a
/// pair report it.
fn reserves(reports: &[proto::ReportPositionsResponse]) -> Vec<proto::ReserveBalance> {
    let mut reserves: Vec<proto::ReserveBalance> =
        reports.iter().flat_map(|r| r.reserves.clone()).collect();
    reserves.sort_by(|a, b| {
        (&a.home_region, &a.treatment_region).cmp(&(&b.home_region, &b.treatment_region))
    });
    reserves.dedup_by(|a, b| {
        a.home_region == b.home_region && a.treatment_region == b.treatment_region
    });
    reserves
}

/// What is wrong with a statement on its own terms (empty: nothing): its digest, each
/// net against its receivable and payable, Σ net = 0, and the instructions against the
/// nets — each region's moves equal its net, what the clearing account takes in equals
/// what it pays out, every amount positive. All to the fen.
#[must_use]
pub(crate) fn check(s: &proto::Statement) -> Vec<String> {
    let mut problems = Vec::new();
    if netting::statement_digest(s) != s.digest {
        problems.push("the digest does not match the content".to_owned());
    }
    let fen = |v: &str, name: &str| money::parse(v, name, Sign::Any).map(money::to_fen);
    let mut total = 0i64;
    for n in &s.nets {
        match (
            fen(&n.receivable, "receivable"),
            fen(&n.payable, "payable"),
            fen(&n.net, "net"),
        ) {
            (Ok(r), Ok(p), Ok(net)) => {
                if net != r - p {
                    problems.push(format!(
                        "{}: net {} is not receivable {} − payable {}",
                        n.region, n.net, n.receivable, n.payable
                    ));
                }
                total += net;
                let moved = moved_fen(&s.instructions, &n.region);
                if moved != net {
                    problems.push(format!(
                        "instructions move {} for {}, its net is {}",
                        money::format(money::from_fen(moved)),
                        n.region,
                        n.net
                    ));
                }
            }
            _ => problems.push(format!("{}: an amount is not a decimal", n.region)),
        }
    }
    if total != 0 {
        problems.push(format!("Σ net = {}", money::format(money::from_fen(total))));
    }
    if s.nets.iter().any(|n| n.region == s.clearing_account) {
        problems.push(format!(
            "the clearing account {} has a position",
            s.clearing_account
        ));
    }
    let moved = moved_fen(&s.instructions, &s.clearing_account);
    if moved != 0 {
        problems.push(format!(
            "the clearing account keeps {}",
            money::format(money::from_fen(moved))
        ));
    }
    for i in &s.instructions {
        if !money::parse(&i.amount, "amount", Sign::Any).is_ok_and(|a| a > Decimal::ZERO) {
            problems.push(format!(
                "instruction {} → {} of {} is not a positive amount",
                i.from_region, i.to_region, i.amount
            ));
        }
        if i.from_region != s.clearing_account && i.to_region != s.clearing_account {
            problems.push(format!(
                "instruction {} → {} bypasses the clearing account",
                i.from_region, i.to_region
            ));
        }
    }
    problems
}

/// Whether `instructions` include a payment of exactly `amount_fen` from `from` to
/// `to`: a transfer is recorded against its instruction, to the fen.
#[must_use]
pub(crate) fn instructs(
    instructions: &[proto::PaymentInstruction],
    from: &str,
    to: &str,
    amount_fen: i64,
) -> bool {
    instructions.iter().any(|i| {
        i.from_region == from
            && i.to_region == to
            && money::parse(&i.amount, "amount", Sign::Any)
                .map(money::to_fen)
                .ok()
                == Some(amount_fen)
    })
}

/// The statement as one participant is asked to confirm it: whole, except that the
/// gross matrix and the reserves keep only the rows the participant is party to. The
/// digest covers the round, the nets and the instructions, which are sent whole; the
/// other pairs' rows are for reference, cannot be checked against this participant's
/// ledger, and province-wide (one row per pair of regions) would make every
/// confirmation megabytes to build, send and decode.
pub(crate) struct Trimmer<'a> {
    statement: &'a proto::Statement,
    gross: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Trimmer<'a> {
    pub(crate) fn new(statement: &'a proto::Statement) -> Self {
        let mut gross: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, g) in statement.gross.iter().enumerate() {
            gross.entry(g.debtor.as_str()).or_default().push(i);
            gross.entry(g.creditor.as_str()).or_default().push(i);
        }
        Self { statement, gross }
    }

    pub(crate) fn for_participant(&self, region: &str) -> proto::Statement {
        let s = self.statement;
        proto::Statement {
            round_id: s.round_id.clone(),
            period: s.period.clone(),
            nets: s.nets.clone(),
            instructions: s.instructions.clone(),
            digest: s.digest.clone(),
            gross: self
                .gross
                .get(region)
                .map(|rows| rows.iter().map(|&i| s.gross[i].clone()).collect())
                .unwrap_or_default(),
            bilateral_transfers: s.bilateral_transfers,
            netted_transfers: s.netted_transfers,
            clearing_account: s.clearing_account.clone(),
            reserves: s
                .reserves
                .iter()
                .filter(|r| r.home_region == region || r.treatment_region == region)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clearing::verify;

    const PROVINCE: &str = "330000";

    fn g(debtor: &str, creditor: &str, fen: i64) -> (Gross, Vec<proto::KindSum>) {
        (
            Gross {
                debtor: debtor.into(),
                creditor: creditor.into(),
                amount: money::from_fen(fen),
                count: 1,
            },
            Vec::new(),
        )
    }

    fn regions(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("33{i:02}00")).collect()
    }

    /// Hangzhou owes Ningbo 100.00, Ningbo owes Hangzhou 30.01, Wenzhou owes Hangzhou
    /// 50.00: the nets, instructions and transfer counts to the fen, a digest every
    /// participant recomputes, and each participant's trimmed copy.
    #[test]
    fn three_cities_to_the_fen() {
        let p = regions(3);
        let mut kinds = g("330300", "330100", 5_000);
        kinds.1 = vec![proto::KindSum {
            kind: "claim".into(),
            count: 1,
            sum: "50.00".into(),
        }];
        let reserve = |home: &str, treatment: &str| proto::ReserveBalance {
            home_region: home.into(),
            treatment_region: treatment.into(),
            balance: "1000.00".into(),
            ..Default::default()
        };
        let reports = [
            proto::ReportPositionsResponse {
                reserves: vec![reserve("330300", "330100")],
                ..Default::default()
            },
            proto::ReportPositionsResponse {
                reserves: vec![reserve("330300", "330100")],
                ..Default::default()
            },
        ];
        let s = issue(
            "2026-03-r1",
            "2026-03",
            PROVINCE,
            &p,
            vec![
                g("330100", "330200", 10_000),
                g("330200", "330100", 3_001),
                kinds,
            ],
            &reports,
        )
        .unwrap();
        let nets: Vec<_> = s
            .nets
            .iter()
            .map(|n| {
                (
                    n.region.as_str(),
                    n.receivable.as_str(),
                    n.payable.as_str(),
                    n.net.as_str(),
                )
            })
            .collect();
        assert_eq!(
            nets,
            [
                ("330100", "80.01", "100.00", "-19.99"),
                ("330200", "100.00", "30.01", "69.99"),
                ("330300", "0.00", "50.00", "-50.00"),
            ]
        );
        let pay: Vec<_> = s
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
            pay,
            [
                ("330100", PROVINCE, "19.99"),
                ("330300", PROVINCE, "50.00"),
                (PROVINCE, "330200", "69.99"),
            ]
        );
        assert_eq!((s.bilateral_transfers, s.netted_transfers), (2, 3));
        assert_eq!(s.digest, netting::statement_digest(&s));
        assert_eq!(s.reserves.len(), 1, "one row per pair");
        assert_eq!(s.gross[2].kinds[0].sum, "50.00");
        assert!(check(&s).is_empty());
        let t = Trimmer::new(&s);
        let nb = t.for_participant("330200");
        assert_eq!(nb.gross.len(), 2);
        assert!(nb.reserves.is_empty());
        assert_eq!(
            (nb.nets, nb.instructions, nb.digest),
            (s.nets.clone(), s.instructions.clone(), s.digest.clone())
        );
        assert_eq!(t.for_participant("330300").reserves.len(), 1);
    }

    /// A statement tampered with in any figure fails the check, naming what is wrong.
    #[test]
    fn check_names_what_does_not_add_up() {
        let s = issue(
            "R",
            "2026-03",
            PROVINCE,
            &regions(2),
            vec![g("330100", "330200", 12_345)],
            &[],
        )
        .unwrap();
        let mut net = s.clone();
        net.nets[0].net = "-123.44".into();
        net.digest = netting::statement_digest(&net);
        assert_eq!(
            check(&net),
            [
                "330100: net -123.44 is not receivable 0.00 − payable 123.45",
                "instructions move -123.45 for 330100, its net is -123.44",
                "Σ net = 0.01"
            ]
        );
        let mut paid = s.clone();
        paid.instructions[1].amount = "123.46".into();
        assert_eq!(
            check(&paid),
            [
                "the digest does not match the content",
                "instructions move 123.46 for 330200, its net is 123.45",
                "the clearing account keeps -0.01"
            ]
        );
        let mut bypass = s;
        bypass.instructions = vec![proto::PaymentInstruction {
            from_region: "330100".into(),
            to_region: "330200".into(),
            amount: "123.45".into(),
        }];
        bypass.digest = netting::statement_digest(&bypass);
        assert_eq!(
            check(&bypass),
            ["instruction 330100 → 330200 bypasses the clearing account"]
        );
    }

    /// A transfer matches its instruction only to the fen, in its direction.
    #[test]
    fn a_transfer_matches_its_instruction_exactly() {
        let s = issue(
            "R",
            "2026-03",
            PROVINCE,
            &regions(2),
            vec![g("330100", "330200", 12_345)],
            &[],
        )
        .unwrap();
        assert!(instructs(&s.instructions, "330100", PROVINCE, 12_345));
        assert!(instructs(&s.instructions, PROVINCE, "330200", 12_345));
        assert!(!instructs(&s.instructions, "330100", PROVINCE, 12_344));
        assert!(!instructs(&s.instructions, PROVINCE, "330100", 12_345));
        assert!(!instructs(&s.instructions, "330100", "330200", 12_345));
    }

    /// Random bilateral claims between up to 12 regions, in fen (negative after
    /// reversals and deductions).
    fn claims() -> impl Strategy<Value = (Vec<String>, Vec<(usize, usize, i64)>)> {
        (2usize..12).prop_flat_map(|n| {
            (
                Just(regions(n)),
                prop::collection::vec((0..n, 0..n, -1_000_000i64..100_000_000), 0..80)
                    .prop_map(|v| v.into_iter().filter(|(a, b, _)| a != b).collect::<Vec<_>>()),
            )
        })
    }

    proptest! {
        /// Netting random bilateral claims: Σ net = 0 to the fen; each net equals what
        /// the region is owed minus what it owes; the payment instructions settle every
        /// position exactly (each region's moves equal its net, the clearing account
        /// keeps nothing); every participant's ledger, summed from the same claims,
        /// verifies against the statement; and the same claims in another order give
        /// the same statement.
        #[test]
        fn netting_balances_and_every_ledger_verifies((p, claims) in claims()) {
            // Claims of the same pair add up into one gross amount, as a node reports.
            let mut pairs: std::collections::BTreeMap<(usize, usize), (i64, u64)> = Default::default();
            for &(d, c, fen) in &claims {
                let e = pairs.entry((d, c)).or_default();
                e.0 += fen;
                e.1 += 1;
            }
            let agreed: Vec<_> = pairs
                .iter()
                .map(|(&(d, c), &(fen, n))| {
                    let mut e = g(&p[d], &p[c], fen);
                    e.0.count = n;
                    e
                })
                .collect();
            let s = issue("R", "2026-03", PROVINCE, &p, agreed.clone(), &[]).unwrap();
            prop_assert!(check(&s).is_empty(), "{:?}", check(&s));
            let fen = |v: &str| money::to_fen(money::parse(v, "x", Sign::Any).unwrap());
            prop_assert_eq!(s.nets.iter().map(|n| fen(&n.net)).sum::<i64>(), 0);
            prop_assert_eq!(s.nets.len(), p.len());
            for (i, n) in s.nets.iter().enumerate() {
                let receivable: i64 = claims.iter().filter(|x| x.1 == i).map(|x| x.2).sum();
                let payable: i64 = claims.iter().filter(|x| x.0 == i).map(|x| x.2).sum();
                prop_assert_eq!(&n.region, &p[i]);
                prop_assert_eq!(fen(&n.receivable), receivable);
                prop_assert_eq!(fen(&n.payable), payable);
                prop_assert_eq!(fen(&n.net), receivable - payable);
                prop_assert_eq!(moved_fen(&s.instructions, &p[i]), receivable - payable);
                let own = yidi_common::region::RegionCode::parse(&p[i], "region").unwrap();
                prop_assert_eq!(
                    verify::against_ledger(own, &s, receivable, payable).unwrap(),
                    Vec::<String>::new()
                );
                // A ledger off by a fen on either side does not verify.
                prop_assert!(!verify::against_ledger(own, &s, receivable + 1, payable).unwrap().is_empty());
                prop_assert!(!verify::against_ledger(own, &s, receivable, payable - 1).unwrap().is_empty());
            }
            prop_assert!(s.instructions.iter().all(|i| fen(&i.amount) > 0));
            prop_assert_eq!(moved_fen(&s.instructions, PROVINCE), 0);
            let mut reversed = agreed;
            reversed.reverse();
            let again = issue("R", "2026-03", PROVINCE, &p, reversed, &[]).unwrap();
            prop_assert_eq!((&again.nets, &again.instructions, &again.digest), (&s.nets, &s.instructions, &s.digest));
        }
    }
}

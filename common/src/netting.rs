//! Multilateral net clearing, pure. Given what each region owes each other region in a
//! round (the agreed gross amounts), compute every region's net position, the payment
//! instructions through the provincial clearing account, and how many transfers netting
//! saves over bilateral settlement. Σ net = 0 is checked on every call.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use crate::{Error, Result, money::Money};

/// What `debtor` owes `creditor` (may be negative after reversals and deductions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gross {
    pub debtor: String,
    pub creditor: String,
    pub amount: Money,
    pub count: u64,
}

/// A region's position after netting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub region: String,
    /// Σ of what others owe it.
    pub receivable: Money,
    /// Σ of what it owes others.
    pub payable: Money,
    /// `receivable − payable`; positive: it is paid; negative: it pays.
    pub net: Money,
}

/// One transfer through the clearing account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub from: String,
    pub to: String,
    pub amount: Money,
}

/// The outcome of netting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netting {
    /// One per participant, in region order (zero positions included).
    pub nets: Vec<Net>,
    /// Debtors pay in first, then creditors are paid, each in region order.
    pub instructions: Vec<Instruction>,
    /// Pairs with a non-zero bilateral balance: transfers without netting.
    pub bilateral_transfers: u32,
    /// Transfers with netting.
    pub netted_transfers: u32,
}

/// Nets `gross` among `participants` through `clearing_account`.
pub fn net(participants: &[String], gross: &[Gross], clearing_account: &str) -> Result<Netting> {
    let mut recv: BTreeMap<&str, Decimal> = participants
        .iter()
        .map(|p| (p.as_str(), Decimal::ZERO))
        .collect();
    let mut pay = recv.clone();
    let mut pair: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
    for g in gross {
        if g.debtor == g.creditor {
            return Err(Error::invalid(
                "gross",
                format!("{} cannot owe itself", g.debtor),
            ));
        }
        for r in [&g.debtor, &g.creditor] {
            if !recv.contains_key(r.as_str()) {
                return Err(Error::invalid("gross", format!("{r} is not a participant")));
            }
        }
        *recv.entry(g.creditor.as_str()).or_default() += g.amount;
        *pay.entry(g.debtor.as_str()).or_default() += g.amount;
        // Bilateral balance of the unordered pair, oriented low → high region.
        let (key, sign) = if g.debtor < g.creditor {
            ((g.debtor.as_str(), g.creditor.as_str()), Decimal::ONE)
        } else {
            (
                (g.creditor.as_str(), g.debtor.as_str()),
                Decimal::NEGATIVE_ONE,
            )
        };
        *pair.entry(key).or_default() += sign * g.amount;
    }
    let nets: Vec<Net> = recv
        .iter()
        .map(|(r, rv)| {
            let pv = pay.get(r).copied().unwrap_or_default();
            Net {
                region: (*r).to_owned(),
                receivable: *rv,
                payable: pv,
                net: *rv - pv,
            }
        })
        .collect();
    let total: Decimal = nets.iter().map(|n| n.net).sum();
    if !total.is_zero() {
        return Err(Error::Precondition(format!(
            "netting does not balance: Σ net = {total}"
        )));
    }
    let mut instructions: Vec<Instruction> = nets
        .iter()
        .filter(|n| n.net < Decimal::ZERO)
        .map(|n| Instruction {
            from: n.region.clone(),
            to: clearing_account.to_owned(),
            amount: -n.net,
        })
        .collect();
    instructions.extend(
        nets.iter()
            .filter(|n| n.net > Decimal::ZERO)
            .map(|n| Instruction {
                from: clearing_account.to_owned(),
                to: n.region.clone(),
                amount: n.net,
            }),
    );
    let bilateral =
        u32::try_from(pair.values().filter(|v| !v.is_zero()).count()).unwrap_or(u32::MAX);
    let netted = u32::try_from(instructions.len()).unwrap_or(u32::MAX);
    Ok(Netting {
        nets,
        instructions,
        bilateral_transfers: bilateral,
        netted_transfers: netted,
    })
}

/// Regions that appear in `gross` but not in `participants` (a configuration error).
#[must_use]
pub fn strangers(participants: &[String], gross: &[Gross]) -> BTreeSet<String> {
    gross
        .iter()
        .flat_map(|g| [g.debtor.clone(), g.creditor.clone()])
        .filter(|r| !participants.contains(r))
        .collect()
}

/// The digest a statement is confirmed by: SHA-256 over its canonical lines (round,
/// period, every net position and instruction in order), so that every participant can
/// recompute it from the statement it was sent.
#[must_use]
pub fn statement_digest(s: &crate::proto::Statement) -> String {
    let mut text = format!(
        "yidi-statement-v1\n{}\n{}\n{}\n",
        s.round_id, s.period, s.clearing_account
    );
    for n in &s.nets {
        text.push_str(&format!(
            "net {} {} {} {}\n",
            n.region, n.receivable, n.payable, n.net
        ));
    }
    for i in &s.instructions {
        text.push_str(&format!(
            "pay {} {} {}\n",
            i.from_region, i.to_region, i.amount
        ));
    }
    crate::digest::sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn g(d: &str, c: &str, a: Decimal) -> Gross {
        Gross {
            debtor: d.into(),
            creditor: c.into(),
            amount: a,
            count: 1,
        }
    }

    #[test]
    fn three_cities() {
        let p: Vec<String> = ["330100", "330200", "330300"].map(String::from).to_vec();
        // Hangzhou owes Ningbo 100, Ningbo owes Hangzhou 30, Wenzhou owes Hangzhou 50.
        let r = net(
            &p,
            &[
                g("330100", "330200", dec!(100)),
                g("330200", "330100", dec!(30)),
                g("330300", "330100", dec!(50)),
            ],
            "330000",
        )
        .unwrap();
        let nets: Vec<_> = r.nets.iter().map(|n| (n.region.as_str(), n.net)).collect();
        assert_eq!(
            nets,
            vec![
                ("330100", dec!(-20)),
                ("330200", dec!(70)),
                ("330300", dec!(-50))
            ]
        );
        assert_eq!(
            r.instructions,
            vec![
                Instruction {
                    from: "330100".into(),
                    to: "330000".into(),
                    amount: dec!(20)
                },
                Instruction {
                    from: "330300".into(),
                    to: "330000".into(),
                    amount: dec!(50)
                },
                Instruction {
                    from: "330000".into(),
                    to: "330200".into(),
                    amount: dec!(70)
                },
            ]
        );
        assert_eq!((r.bilateral_transfers, r.netted_transfers), (2, 3));
    }

    #[test]
    fn rejects_strangers_and_self_debt() {
        let p = vec!["330100".to_owned()];
        assert!(net(&p, &[g("330100", "330100", dec!(1))], "330000").is_err());
        assert!(net(&p, &[g("330100", "330900", dec!(1))], "330000").is_err());
        assert_eq!(strangers(&p, &[g("330100", "330900", dec!(1))]).len(), 1);
    }

    fn arb_gross() -> impl Strategy<Value = (Vec<String>, Vec<Gross>)> {
        (2usize..8).prop_flat_map(|n| {
            let regions: Vec<String> = (1..=n).map(|i| format!("33{i:02}00")).collect();
            let r2 = regions.clone();
            let entries = prop::collection::vec((0..n, 0..n, -500_000i64..5_000_000i64), 0..60)
                .prop_map(move |v| {
                    v.into_iter()
                        .filter(|(a, b, _)| a != b)
                        .map(|(a, b, fen)| Gross {
                            debtor: r2[a].clone(),
                            creditor: r2[b].clone(),
                            amount: Decimal::new(fen, 2),
                            count: 1,
                        })
                        .collect::<Vec<_>>()
                });
            (Just(regions), entries)
        })
    }

    proptest! {
        #[test]
        fn sums_to_zero_and_replays_gross((p, gross) in arb_gross()) {
            let r = net(&p, &gross, "330000").unwrap();
            prop_assert!(r.nets.iter().map(|n| n.net).sum::<Decimal>().is_zero());
            for n in &r.nets {
                let replay: Decimal = gross.iter().filter(|x| x.creditor == n.region).map(|x| x.amount).sum::<Decimal>()
                    - gross.iter().filter(|x| x.debtor == n.region).map(|x| x.amount).sum::<Decimal>();
                prop_assert_eq!(n.net, replay);
            }
            let paid_in: Decimal = r.instructions.iter().filter(|i| i.to == "330000").map(|i| i.amount).sum();
            let paid_out: Decimal = r.instructions.iter().filter(|i| i.from == "330000").map(|i| i.amount).sum();
            prop_assert_eq!(paid_in, paid_out);
            prop_assert!(r.instructions.iter().all(|i| i.amount > Decimal::ZERO));
            prop_assert!(r.netted_transfers as usize <= p.len());
            // Re-running gives the same result, whatever the order of the input.
            let mut rev = gross.clone();
            rev.reverse();
            prop_assert_eq!(net(&p, &rev, "330000").unwrap(), r);
        }
    }
}

//! A participant's check of a clearing statement against its own ledger, pure: the
//! statement's digest, this region's receivable, payable and net against the totals of
//! its frozen records, and what the payment instructions move for it against its net.
//! To the fen. The caller (the participant, `clearing::Participant`) reads the totals.

use yidi_common::{
    money::{self, Sign},
    netting::statement_digest,
    proto,
    region::RegionCode,
};

use crate::Result;

/// What `instructions` move for `region`, in fen: received minus paid. An amount that
/// is not a decimal moves nothing (the statement's digest and nets do not match then).
#[must_use]
pub fn moved_fen(instructions: &[proto::PaymentInstruction], region: &str) -> i64 {
    instructions
        .iter()
        .map(|i| {
            let a = money::parse(&i.amount, "amount", Sign::Any)
                .map(money::to_fen)
                .unwrap_or_default();
            if i.to_region == region {
                a
            } else if i.from_region == region {
                -a
            } else {
                0
            }
        })
        .sum()
}

/// The differences between statement `s` and the ledger of `own`, whose frozen records
/// of the round total `receivable_fen` and `payable_fen` (empty: it matches). A net
/// position whose amounts are not decimals is INVALID_ARGUMENT, naming the field.
pub fn against_ledger(
    own: RegionCode,
    s: &proto::Statement,
    receivable_fen: i64,
    payable_fen: i64,
) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    if statement_digest(s) != s.digest {
        diffs.push("the statement's digest does not match its content".to_owned());
    }
    let (recv, pay) = (receivable_fen, payable_fen);
    let f = |fen: i64| money::format(money::from_fen(fen));
    match s.nets.iter().find(|n| n.region == own.as_str()) {
        None if recv != 0 || pay != 0 => {
            diffs.push(format!("the statement has no position for {own}"));
        }
        None => {}
        Some(n) => {
            let expect = [
                ("receivable", &n.receivable, recv),
                ("payable", &n.payable, pay),
                ("net", &n.net, recv - pay),
            ];
            for (name, theirs, ours) in expect {
                let theirs_fen = money::parse(theirs, name, Sign::Any).map(money::to_fen)?;
                if theirs_fen != ours {
                    diffs.push(format!("{name}: statement {theirs}, ledger {}", f(ours)));
                }
            }
            // What the instructions move for this region must equal its net.
            let moved = moved_fen(&s.instructions, own.as_str());
            if moved != recv - pay {
                diffs.push(format!(
                    "instructions move {} for {own}, its net is {}",
                    f(moved),
                    f(recv - pay)
                ));
            }
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> proto::Statement {
        let mut s = proto::Statement {
            round_id: "2026-03-r1".into(),
            period: "2026-03".into(),
            clearing_account: "330000".into(),
            nets: vec![
                proto::NetPosition {
                    region: "330100".into(),
                    receivable: "130.00".into(),
                    payable: "100.01".into(),
                    net: "29.99".into(),
                },
                proto::NetPosition {
                    region: "330200".into(),
                    receivable: "100.01".into(),
                    payable: "130.00".into(),
                    net: "-29.99".into(),
                },
            ],
            instructions: vec![
                proto::PaymentInstruction {
                    from_region: "330200".into(),
                    to_region: "330000".into(),
                    amount: "29.99".into(),
                },
                proto::PaymentInstruction {
                    from_region: "330000".into(),
                    to_region: "330100".into(),
                    amount: "29.99".into(),
                },
            ],
            ..Default::default()
        };
        s.digest = statement_digest(&s);
        s
    }

    fn hz() -> RegionCode {
        RegionCode::parse("330100", "region").unwrap()
    }

    #[test]
    fn a_matching_ledger_has_no_differences() {
        assert!(
            against_ledger(hz(), &statement(), 13_000, 10_001)
                .unwrap()
                .is_empty()
        );
        assert_eq!(moved_fen(&statement().instructions, "330200"), -2_999);
        assert_eq!(moved_fen(&statement().instructions, "330000"), 0);
    }

    #[test]
    fn each_difference_is_named_with_both_figures() {
        assert_eq!(
            against_ledger(hz(), &statement(), 13_123, 10_001).unwrap(),
            [
                "receivable: statement 130.00, ledger 131.23",
                "net: statement 29.99, ledger 31.22",
                "instructions move 29.99 for 330100, its net is 31.22"
            ]
        );
        let mut tampered = statement();
        tampered.instructions[1].amount = "30.00".into();
        assert_eq!(
            against_ledger(hz(), &tampered, 13_000, 10_001).unwrap(),
            [
                "the statement's digest does not match its content",
                "instructions move 30.00 for 330100, its net is 29.99"
            ]
        );
        let other = RegionCode::parse("330300", "region").unwrap();
        assert_eq!(
            against_ledger(other, &statement(), 0, 1).unwrap(),
            ["the statement has no position for 330300"]
        );
        assert!(
            against_ledger(other, &statement(), 0, 0)
                .unwrap()
                .is_empty()
        );
        let mut bad = statement();
        bad.nets[0].payable = "1,00".into();
        let e = against_ledger(hz(), &bad, 13_000, 10_001).unwrap_err();
        assert!(e.to_string().contains("payable"), "{e}");
    }
}

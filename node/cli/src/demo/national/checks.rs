//! Pure checks of the national demo (statements, ledgers, nets summing up) and how it
//! prints statements and `CHECK` lines.

use rust_decimal::Decimal;
use yidi_common::{
    money::{self, Sign},
    proto::{self},
    region::NATIONAL,
};

// ------------------------------------------------------------------ pure checks

pub(super) fn dec(s: &str) -> Decimal {
    money::parse(s, "amount", Sign::Any).unwrap_or_default()
}

/// Σ net of a statement.
pub(super) fn sum_net(s: &proto::Statement) -> Decimal {
    s.nets.iter().map(|n| dec(&n.net)).sum()
}

/// A region's net in a statement (0 when it has no row).
pub(super) fn net_of(s: &proto::Statement, region: &str) -> Decimal {
    s.nets
        .iter()
        .find(|n| n.region == region)
        .map_or(Decimal::ZERO, |n| dec(&n.net))
}

/// What the instructions pay into and out of the clearing account.
pub(super) fn paid(s: &proto::Statement) -> (Decimal, Decimal) {
    let into = s
        .instructions
        .iter()
        .filter(|i| i.to_region == s.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    let out = s
        .instructions
        .iter()
        .filter(|i| i.from_region == s.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    (into, out)
}

/// A ledger's net toward counterparties across (`cross`) or within the province.
pub(super) fn ledger_net(l: &proto::GetLedgerResponse, cross: bool) -> Decimal {
    l.positions
        .iter()
        .filter(|p| p.cross_province == cross)
        .map(|p| dec(&p.net))
        .sum()
}

/// Σ of the province's cities' nets in its statement of a national round.
pub(super) fn cities_net(s: &proto::Statement) -> Decimal {
    s.nets
        .iter()
        .filter(|n| n.region != NATIONAL.as_str())
        .map(|n| dec(&n.net))
        .sum()
}

pub(super) fn print_statement(title: &str, s: &proto::Statement, gross: bool) {
    println!(
        "\n{title} — round {} ({}), clearing account {}",
        s.round_id, s.period, s.clearing_account
    );
    let mut t = crate::cli::output::table();
    t.set_header(["region", "receivable", "payable", "net"]);
    for n in &s.nets {
        t.add_row([&n.region, &n.receivable, &n.payable, &n.net]);
    }
    println!("{t}");
    let mut t = crate::cli::output::table();
    t.set_header(["#", "from", "to", "amount"]);
    for (k, i) in s.instructions.iter().enumerate() {
        t.add_row([
            (k + 1).to_string(),
            i.from_region.clone(),
            i.to_region.clone(),
            i.amount.clone(),
        ]);
    }
    println!("{t}");
    if gross {
        let mut t = crate::cli::output::table();
        t.set_header(["owes", "to", "amount", "records"]);
        for g in &s.gross {
            t.add_row([
                g.debtor.clone(),
                g.creditor.clone(),
                g.amount.clone(),
                g.count.to_string(),
            ]);
        }
        println!("cross-province gross, per city and counterparty province\n{t}");
    }
}

/// Prints one CHECK line; returns whether it held.
pub(super) fn check(ok: bool, line: String) -> bool {
    println!("CHECK {line} {}", if ok { "ok" } else { "FAILED" });
    ok
}

//! The clearing statement as the clearing desk reads it: its checks (Σ net = 0, every
//! pair's gross against the net positions, the by-kind breakdown against the gross), its
//! text tables, its JSON and its CSV. Used by `yidi clearing statement` and `yidi demo`.

use std::{collections::BTreeMap, fs::File, path::Path};

use anyhow::Context;
use comfy_table::{Cell, CellAlignment};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use yidi_common::{
    money::{self, Sign},
    netting, proto,
};

use super::output::{self, emit};
use crate::i18n::{KindGroup, Lang};
use rust_i18n::t;

/// Above this many participants the gross matrix no longer fits a terminal; the
/// statement then prints a note and `--csv` carries the matrix.
const MATRIX_MAX_REGIONS: usize = 12;
pub(crate) fn amount(s: &str, what: &str) -> anyhow::Result<Decimal> {
    money::parse(s, what, Sign::Any)
        .map_err(|e| anyhow::anyhow!("the coordinator sent an unreadable amount: {e}"))
}

/// What the client checks of a statement on its own, so that the operator does not
/// have to trust the coordinator's arithmetic either.
pub(crate) struct Checks {
    pub(crate) sum_net: Decimal,
    pub(crate) paid_in: Decimal,
    pub(crate) paid_out: Decimal,
    pub(crate) digest_ok: bool,
}

pub(crate) fn check(s: &proto::Statement) -> anyhow::Result<Checks> {
    let mut sum_net = Decimal::ZERO;
    for n in &s.nets {
        sum_net += amount(&n.net, "net")?;
    }
    let (mut paid_in, mut paid_out) = (Decimal::ZERO, Decimal::ZERO);
    for i in &s.instructions {
        if i.to_region == s.clearing_account {
            paid_in += amount(&i.amount, "amount")?;
        }
        if i.from_region == s.clearing_account {
            paid_out += amount(&i.amount, "amount")?;
        }
    }
    Ok(Checks {
        sum_net,
        paid_in,
        paid_out,
        digest_ok: netting::statement_digest(s) == s.digest,
    })
}

/// Σ of each kind group over the statement, by group code; `{}` when no pair has a
/// breakdown.
pub(crate) fn kinds_json(s: &proto::Statement) -> Value {
    let pairs = by_kind(s).unwrap_or_default();
    Value::Object(
        kind_totals(&pairs)
            .into_iter()
            .map(|(g, (n, a))| {
                (
                    g.code().to_owned(),
                    json!({ "count": n, "sum": money::format(a) }),
                )
            })
            .collect(),
    )
}

pub(crate) fn statement_json(s: &proto::Statement, c: &Checks) -> Value {
    let list = |v: Vec<Value>| Value::Array(v);
    json!({
        "round_id": s.round_id,
        "period": s.period,
        "clearing_account": s.clearing_account,
        "digest": s.digest,
        "digest_verified": c.digest_ok,
        "sum_net": money::format(c.sum_net),
        "paid_in": money::format(c.paid_in),
        "paid_out": money::format(c.paid_out),
        "bilateral_transfers": s.bilateral_transfers,
        "netted_transfers": s.netted_transfers,
        "nets": list(s.nets.iter().map(output::to_json).collect()),
        "instructions": list(s.instructions.iter().map(output::to_json).collect()),
        "gross": list(s.gross.iter().map(|g| {
            let mut v = output::to_json(g);
            v["kinds"] = g.kinds.iter().map(|k| json!({
                "kind": k.kind, "count": k.count, "sum": k.sum,
            })).collect();
            v
        }).collect()),
        "by_kind": kinds_json(s),
        "reserves": list(s.reserves.iter().map(output::to_json).collect()),
    })
}

/// One gross pair's records by kind group: count and sum of each group present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairKinds<'a> {
    pub debtor: &'a str,
    pub creditor: &'a str,
    /// Empty when the pair came without a breakdown (a node that predates it).
    pub groups: BTreeMap<KindGroup, (u64, Decimal)>,
}

/// The statement's gross pairs by record kind. Each pair's groups add up to its count
/// and amount: the coordinator drops a breakdown that does not, and so does this.
pub(crate) fn by_kind(s: &proto::Statement) -> anyhow::Result<Vec<PairKinds<'_>>> {
    let mut out = Vec::new();
    for g in &s.gross {
        let mut groups: BTreeMap<KindGroup, (u64, Decimal)> = BTreeMap::new();
        for k in &g.kinds {
            let e = groups.entry(KindGroup::of(&k.kind)).or_default();
            e.0 += k.count;
            e.1 += amount(&k.sum, "kinds.sum")?;
        }
        let (n, sum) = groups
            .values()
            .fold((0, Decimal::ZERO), |(n, s), (c, a)| (n + c, s + a));
        if n != g.count || sum != amount(&g.amount, "gross")? {
            groups.clear();
        }
        out.push(PairKinds {
            debtor: &g.debtor,
            creditor: &g.creditor,
            groups,
        });
    }
    Ok(out)
}

/// Σ of each kind group over the statement's pairs (those with a breakdown).
pub(crate) fn kind_totals(pairs: &[PairKinds<'_>]) -> BTreeMap<KindGroup, (u64, Decimal)> {
    let mut t: BTreeMap<KindGroup, (u64, Decimal)> = BTreeMap::new();
    for p in pairs {
        for (g, (n, a)) in &p.groups {
            let e = t.entry(*g).or_default();
            e.0 += n;
            e.1 += a;
        }
    }
    t
}

/// The by-kind table: one row per pair (debtor owes creditor), a column per kind group
/// present in the statement ("amount (records)"), and the pair's total.
pub(crate) fn kind_table(
    pairs: &[PairKinds<'_>],
    lang: Lang,
    label: impl Fn(&str) -> String,
) -> comfy_table::Table {
    let totals = kind_totals(pairs);
    let groups: Vec<KindGroup> = KindGroup::ALL
        .into_iter()
        .filter(|g| totals.contains_key(g))
        .collect();
    let mut t = output::table();
    let mut header = vec![
        Cell::new(lang.label("clearing.debtor_home_region")),
        Cell::new(lang.label("clearing.owes_creditor_treatment_region")),
    ];
    header.extend(groups.iter().map(|g| right(g.label(lang))));
    header.push(right(lang.label("clearing.total")));
    t.set_header(header);
    let cell = |v: Option<&(u64, Decimal)>| {
        right(v.map_or_else(String::new, |(n, a)| format!("{} ({n})", money::format(*a))))
    };
    for p in pairs {
        let mut row = vec![Cell::new(label(p.debtor)), Cell::new(label(p.creditor))];
        if p.groups.is_empty() {
            row.extend(groups.iter().map(|_| right("—")));
            row.push(right(lang.label("clearing.no_breakdown")));
        } else {
            row.extend(groups.iter().map(|g| cell(p.groups.get(g))));
            let (n, a) = p
                .groups
                .values()
                .fold((0, Decimal::ZERO), |(n, s), (c, a)| (n + c, s + a));
            row.push(cell(Some(&(n, a))));
        }
        t.add_row(row);
    }
    let mut row = vec![Cell::new("Σ"), Cell::new("")];
    row.extend(groups.iter().map(|g| cell(totals.get(g))));
    let (n, a) = totals
        .values()
        .fold((0, Decimal::ZERO), |(n, s), (c, a)| (n + c, s + a));
    row.push(cell(Some(&(n, a))));
    t.add_row(row);
    t
}

pub(crate) fn right(s: impl Into<String>) -> Cell {
    Cell::new(s.into()).set_alignment(CellAlignment::Right)
}

/// The bilateral gross amounts as a region × region table: row owes column, with the
/// row's total payable at the right and each column's total receivable at the bottom.
pub(crate) fn gross_matrix(s: &proto::Statement) -> anyhow::Result<comfy_table::Table> {
    let regions: Vec<&str> = s.nets.iter().map(|n| n.region.as_str()).collect();
    let mut cells: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for g in &s.gross {
        cells.insert((g.debtor.as_str(), g.creditor.as_str()), g.amount.as_str());
    }
    let mut t = output::table();
    let mut header = vec![Cell::new("owes ↓ / to →")];
    header.extend(regions.iter().map(|r| right(*r)));
    header.push(right("Σ payable"));
    t.set_header(header);
    let mut col_sum = vec![Decimal::ZERO; regions.len()];
    let mut total = Decimal::ZERO;
    for debtor in &regions {
        let mut row = vec![Cell::new(*debtor)];
        let mut row_sum = Decimal::ZERO;
        for (j, creditor) in regions.iter().enumerate() {
            match cells.get(&(*debtor, *creditor)) {
                Some(a) => {
                    let v = amount(a, "gross")?;
                    row_sum += v;
                    col_sum[j] += v;
                    row.push(right(*a));
                }
                None if debtor == creditor => row.push(right("—")),
                None => row.push(right("")),
            }
        }
        total += row_sum;
        row.push(right(money::format(row_sum)));
        t.add_row(row);
    }
    let mut last = vec![Cell::new("Σ receivable")];
    last.extend(col_sum.into_iter().map(|v| right(money::format(v))));
    last.push(right(money::format(total)));
    t.add_row(last);
    Ok(t)
}

pub(crate) fn print_statement(s: &proto::Statement, c: &Checks, lang: Lang) -> anyhow::Result<()> {
    let l = |key| lang.label(key);
    emit(format_args!(
        "{} {} — {} {} — {} {}",
        l("clearing.statement_of_round"),
        s.round_id,
        l("clearing.period"),
        s.period,
        l("clearing.clearing_account"),
        s.clearing_account
    ));
    emit(format_args!(
        "\n{}",
        l("clearing.net_positions_positive_is_paid_negative")
    ));
    let mut t = output::table();
    t.set_header(vec![
        Cell::new(l("clearing.region")),
        right(l("clearing.receivable")),
        right(l("clearing.payable")),
        right(l("clearing.net")),
    ]);
    let (mut recv, mut pay) = (Decimal::ZERO, Decimal::ZERO);
    for n in &s.nets {
        recv += amount(&n.receivable, "receivable")?;
        pay += amount(&n.payable, "payable")?;
        t.add_row(vec![
            Cell::new(&n.region),
            right(&n.receivable),
            right(&n.payable),
            right(&n.net),
        ]);
    }
    t.add_row(vec![
        Cell::new("Σ"),
        right(money::format(recv)),
        right(money::format(pay)),
        right(money::format(c.sum_net)),
    ]);
    emit(format_args!("{t}"));
    if c.sum_net.is_zero() {
        emit(format_args!("Σ net = 0.00 ✓"));
    } else {
        emit(format_args!(
            "Σ net = {} — {}",
            money::format(c.sum_net),
            l("clearing.the_statement_does_not_balance_do_not_co")
        ));
    }

    emit(format_args!(
        "\n{} {}{}",
        l("clearing.payment_instructions_debtors_pay_into_th"),
        s.clearing_account,
        l("clearing.which_pays_the_creditors")
    ));
    if s.instructions.is_empty() {
        emit(format_args!(
            "{}",
            l("clearing.none_every_net_position_is_zero")
        ));
    } else {
        let mut t = output::table();
        t.set_header(vec![
            right("#"),
            Cell::new(l("clearing.from")),
            Cell::new(l("clearing.to")),
            right(l("clearing.amount")),
        ]);
        for (i, ins) in s.instructions.iter().enumerate() {
            t.add_row(vec![
                right((i + 1).to_string()),
                Cell::new(&ins.from_region),
                Cell::new(&ins.to_region),
                right(&ins.amount),
            ]);
        }
        emit(format_args!("{t}"));
        emit(format_args!(
            "{} {}, {} {}{}",
            l("clearing.paid_in"),
            money::format(c.paid_in),
            l("clearing.paid_out"),
            money::format(c.paid_out),
            if c.paid_in == c.paid_out {
                " ✓"
            } else {
                " — MISMATCH"
            }
        ));
    }
    emit(format_args!(
        "{}",
        t!(
            "clearing.netted_instead_of_bilateral",
            locale = lang.code(),
            netted = s.netted_transfers,
            bilateral = s.bilateral_transfers
        )
    ));

    emit(format_args!(
        "\n{} ({} {})",
        l("clearing.bilateral_gross_for_reference"),
        s.gross.len(),
        l("clearing.pairs")
    ));
    if s.gross.is_empty() {
        emit(format_args!(
            "{}",
            l("clearing.none_no_region_owes_another_anything")
        ));
    } else if s.nets.len() <= MATRIX_MAX_REGIONS {
        emit(format_args!("{}", gross_matrix(s)?));
    } else {
        emit(format_args!(
            "{} regions: the {}×{} matrix does not fit a terminal; export it with --csv FILE or --json",
            s.nets.len(),
            s.nets.len(),
            s.nets.len()
        ));
    }

    emit(format_args!(
        "\n{}",
        l("clearing.by_record_kind_claims_cancellations_audi")
    ));
    if s.gross.is_empty() {
        emit(format_args!("{}", l("clearing.none")));
    } else {
        let pairs = by_kind(s)?;
        emit(format_args!("{}", kind_table(&pairs, lang, str::to_owned)));
    }

    emit(format_args!("\n{}", l("clearing.reserves")));
    if s.reserves.is_empty() {
        emit(format_args!("{}", l("clearing.none")));
    } else {
        let mut t = output::table();
        t.set_header(vec![
            Cell::new(l("clearing.home")),
            Cell::new(l("clearing.treatment")),
            right(l("clearing.balance")),
            right(l("clearing.alarm_below")),
            Cell::new(l("clearing.alarm")),
        ]);
        for r in &s.reserves {
            t.add_row(vec![
                Cell::new(&r.home_region),
                Cell::new(&r.treatment_region),
                right(&r.balance),
                right(&r.alarm_threshold),
                Cell::new(if r.alarm {
                    l("clearing.alarm_flag")
                } else {
                    ""
                }),
            ]);
        }
        emit(format_args!("{t}"));
        let alarms = s.reserves.iter().filter(|r| r.alarm).count();
        if alarms > 0 {
            emit(format_args!(
                "{alarms} reserve(s) below the alarm threshold: the home region tops up with `yidi admin reserve record --kind topup`"
            ));
        }
    }

    emit(format_args!(
        "\n{} {} ({})",
        l("clearing.digest"),
        s.digest,
        if c.digest_ok {
            l("clearing.verified_against_the_statement_s_content")
        } else {
            l("clearing.does_not_match_the_statement_s_content")
        }
    ));
    Ok(())
}

/// Writes the statement as one CSV table (see `--csv`); returns the number of rows.
pub(crate) fn write_csv(s: &proto::Statement, path: &Path) -> anyhow::Result<usize> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    w.write_record([
        "round_id",
        "section",
        "region",
        "counterparty",
        "receivable",
        "payable",
        "net",
        "amount",
        "count",
    ])?;
    let id = s.round_id.as_str();
    for n in &s.nets {
        w.write_record([
            id,
            "net",
            &n.region,
            "",
            &n.receivable,
            &n.payable,
            &n.net,
            "",
            "",
        ])?;
    }
    for i in &s.instructions {
        w.write_record([
            id,
            "instruction",
            &i.from_region,
            &i.to_region,
            "",
            "",
            "",
            &i.amount,
            "",
        ])?;
    }
    for g in &s.gross {
        w.write_record([
            id,
            "gross",
            &g.debtor,
            &g.creditor,
            "",
            "",
            "",
            &g.amount,
            &g.count.to_string(),
        ])?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(s.nets.len() + s.instructions.len() + s.gross.len())
}

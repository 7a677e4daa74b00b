//! What the demo prints, and the clearing round it drives: the parties, what was loaded,
//! the settlement counts, example splits with a trace, each node's ledger, the netted
//! statement with its payment instructions, and the `CHECK … ok` lines a test (or a
//! doubtful newcomer) can grep for. Tables go to stdout; progress to stderr.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};

use crate::i18n::Lang;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets};
use rust_decimal::Decimal;
use rust_i18n::t;
use yidi_common::{
    money::{self, Sign},
    period::Period,
    proto,
    region::RegionCode,
    types::{FilingType, VisitKind},
};

use yidi_node::identity::{Identity, Role};

use super::{
    Ctx, Layout, Loaded, Node,
    data::{CITIES, Category, LoadCounts, PROVINCE, city_name},
    drive::{Counts, Done},
};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

fn right(s: impl ToString) -> Cell {
    Cell::new(s).set_alignment(CellAlignment::Right)
}

fn dec(s: &str) -> Decimal {
    money::parse(s, "amount", Sign::Any).unwrap_or_default()
}

fn fmt(d: Decimal) -> String {
    money::format(d)
}

fn region_label(region: &str) -> String {
    format!("{region} {}", city_name(region))
}

/// Masks a name the way receipts do (王*明).
fn mask(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    match chars.len() {
        0 => String::new(),
        1 | 2 => format!("{}*", chars[0]),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

pub(super) fn print_parties(layout: &Layout, nodes: &[Node]) {
    let mut t = table(&["party", "region", "gRPC", "metrics", "store"]);
    let metrics = |m: Option<std::net::SocketAddr>| {
        m.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"))
    };
    t.add_row(vec![
        Cell::new("coordinator (浙江省 clearing centre)"),
        Cell::new(PROVINCE),
        Cell::new(super::url(layout.coordinator)),
        Cell::new(metrics(layout.coordinator_metrics)),
        Cell::new(layout.dir.join(PROVINCE).display()),
    ]);
    for n in nodes {
        let c = CITIES[n.index];
        t.add_row(vec![
            Cell::new(format!("node {} {}", c.name, c.zh)),
            Cell::new(c.region),
            Cell::new(super::url(n.addr)),
            Cell::new(metrics(n.metrics)),
            Cell::new(layout.dir.join(c.region).display()),
        ]);
    }
    println!("{t}\n");
}

pub(super) fn print_loaded(ctx: &Ctx, counts: &[LoadCounts], loaded: &[Loaded]) {
    println!("loaded through AdminService (idempotent: a re-run writes nothing twice):");
    let mut header = vec![""];
    header.extend(CITIES.iter().map(|c| c.name));
    let mut t = table(&header);
    let row = |label: &str, f: &dyn Fn(usize) -> String| {
        let mut r = vec![Cell::new(label)];
        r.extend((0..CITIES.len()).map(|i| right(f(i))));
        r
    };
    let pt = |i: usize, k: &str| counts[i].by_person_type.get(k).copied().unwrap_or(0);
    let fl = |i: usize, k: &str| counts[i].filings.get(k).copied().unwrap_or(0);
    let inst = |i: usize| {
        let is = &ctx.cities[i].institutions;
        let n = |l: yidi_common::types::HospitalLevel| {
            is.iter()
                .filter(|x| x.kind == yidi_common::types::InstitutionKind::Hospital && x.level == l)
                .count()
        };
        let p = is
            .iter()
            .filter(|x| x.kind == yidi_common::types::InstitutionKind::Pharmacy)
            .count();
        use yidi_common::types::HospitalLevel as L;
        format!(
            "{} (L3 {} · L2 {} · L1 {} · pharmacies {})",
            is.len(),
            n(L::Level3),
            n(L::Level2),
            n(L::Level1),
            p
        )
    };
    let cat = |i: usize| {
        let rows = &ctx.cities[i].catalogue_rows;
        let k = |c: &str| rows.iter().filter(|r| r.class == c).count();
        let capped = rows.iter().filter(|r| !r.price_cap.is_empty()).count();
        format!(
            "{} (甲 {} · 乙 {} · 丙 {} · capped {capped})",
            rows.len(),
            k("A"),
            k("B"),
            k("C")
        )
    };
    t.add_row(row("persons enrolled at the node", &|i| {
        loaded[i].info.persons.to_string()
    }));
    t.add_row(row("  sample + generated", &|i| {
        format!(
            "{} + {}",
            counts[i].persons_sample, counts[i].persons_generated
        )
    }));
    t.add_row(row("  employees: in service / retired", &|i| {
        format!("{} / {}", pt(i, "in_service"), pt(i, "retired"))
    }));
    t.add_row(row("  residents: adult / minor / elderly", &|i| {
        format!(
            "{} / {} / {}",
            pt(i, "resident_adult"),
            pt(i, "resident_minor"),
            pt(i, "resident_elderly")
        )
    }));
    t.add_row(row("  civil servants (公务员补助)", &|i| {
        counts[i].civil_servants.to_string()
    }));
    t.add_row(row("  suspended / terminated / deceased", &|i| {
        counts[i].not_active.to_string()
    }));
    t.add_row(row("filings approved (备案)", &|i| {
        loaded[i].filings.to_string()
    }));
    t.add_row(row("  resettled retiree / long-term / posted", &|i| {
        format!(
            "{} / {} / {}",
            fl(i, "resettled_retiree"),
            fl(i, "long_term_resident"),
            fl(i, "posted_worker")
        )
    }));
    t.add_row(row("  referral / emergency", &|i| {
        format!("{} / {}", fl(i, "referral"), fl(i, "emergency"))
    }));
    t.add_row(row("  naming designated hospitals", &|i| {
        counts[i].filings_named.to_string()
    }));
    t.add_row(row("institutions (定点机构)", &inst));
    t.add_row(row("catalogue items (三项目录)", &cat));
    t.add_row(row("benefit policies", &|i| loaded[i].policies.join(", ")));
    println!("{t}");
}

pub(super) fn print_settlements(c: &Counts, total: u64, secs: f64, lang: Lang) {
    let l = |key| lang.label(key);
    println!(
        "{total} visits in {secs:.1} s: settled {} (provisional {}) · refused {} · errors {}{} · cancelled {} · 冲正 {} · retried calls {}",
        c.settled,
        c.provisional,
        c.refused,
        c.failed,
        if c.errors.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                c.errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        c.cancelled,
        c.reversed,
        c.retried
    );
    let mut t = table(&[
        l("demo.visit_kind"),
        l("demo.local"),
        l("demo.cross_region_filed"),
        l("demo.cross_region_unfiled"),
    ]);
    for kind in VisitKind::ALL {
        let cell = |cat: &str| {
            c.by_kind
                .get(&(kind.as_str().to_owned(), cat.to_owned()))
                .map_or_else(
                    || "–".to_owned(),
                    |[s, r, f]| {
                        let mut x = format!("{s} {}", l("demo.settled"));
                        if *r > 0 {
                            x.push_str(&format!(", {r} {}", l("demo.refused")));
                        }
                        if *f > 0 {
                            x.push_str(&format!(", {f} {}", l("demo.failed")));
                        }
                        x
                    },
                )
        };
        t.add_row(vec![
            Cell::new(match lang {
                Lang::En => kind.as_str(),
                Lang::Zh => kind.zh_name(),
            }),
            Cell::new(cell("local")),
            Cell::new(cell("filed")),
            Cell::new(cell("unfiled")),
        ]);
    }
    println!("{t}");
    if !c.refusal_reasons.is_empty() {
        println!("{}", l("demo.refused_no_direct_settlement_the_patient"));
        let mut reasons: Vec<_> = c.refusal_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (r, n) in reasons.into_iter().take(6) {
            let r = match lang {
                Lang::En => r.clone(),
                Lang::Zh => refusal_zh(r).unwrap_or_else(|| r.clone()),
            };
            println!("  {n:>4} × {r}");
        }
    }
    for e in &c.first_errors {
        println!("  error: {e}");
    }
    println!();
}

/// A refusal line of the tally ("at settle: policy 330200 employee does not settle
/// outpatient visits directly under filing type temporary") in Chinese, its codes by
/// their Chinese names; None for a line of another shape (printed as it is).
fn refusal_zh(line: &str) -> Option<String> {
    use yidi_common::types::{FilingType, InsuranceType, VisitKind};
    let (stage, rest) = line.strip_prefix("at ")?.split_once(": ")?;
    let rest = rest.strip_prefix("policy ")?;
    let (region, rest) = rest.split_once(' ')?;
    let (insurance, rest) = rest.split_once(" does not settle ")?;
    let (kind, ft) = rest.split_once(" visits directly under filing type ")?;
    let stage = match stage {
        "settle" => "结算",
        "identify" => "身份识别",
        other => other,
    };
    Some(format!(
        "{stage}：{region} {}政策对{}不予直接结算（备案类型：{}）",
        InsuranceType::parse(insurance, "insurance").ok()?.zh_name(),
        VisitKind::parse(kind, "kind").ok()?.zh_name(),
        FilingType::parse(ft.trim(), "filing").ok()?.zh_name()
    ))
}

/// Picks a few settlements that show different rules at work.
fn examples(done: &[Done]) -> Vec<(&'static str, &Done)> {
    type Sel = fn(&Done) -> bool;
    let plain = |d: &Done| d.cancel.is_none() && d.reverse.is_none();
    let selectors: [(&'static str, Sel); 6] = [
        ("inpatient, filed", |d| {
            d.scenario.kind == VisitKind::Inpatient
                && matches!(d.scenario.category, Category::Filed(_))
        }),
        ("outpatient, local", |d| {
            d.scenario.kind == VisitKind::Outpatient && d.scenario.category == Category::Local
        }),
        ("pharmacy", |d| d.scenario.kind == VisitKind::Pharmacy),
        ("chronic", |d| d.scenario.kind == VisitKind::Chronic),
        ("unfiled (temporary)", |d| {
            d.scenario.category == Category::Temporary
        }),
        ("referral", |d| {
            d.scenario.category == Category::Filed(FilingType::Referral)
        }),
    ];
    let mut out: Vec<(&'static str, &Done)> = Vec::new();
    for (label, sel) in selectors {
        // The largest bill of its kind that a fund or the account paid part of shows
        // the most rules at work.
        let best = done
            .iter()
            .filter(|d| plain(d) && sel(d))
            .filter(|d| {
                !out.iter()
                    .any(|(_, o)| o.settlement.settlement_id == d.settlement.settlement_id)
            })
            .max_by_key(|d| {
                let s = d.settlement.split.clone().unwrap_or_default();
                let paid =
                    dec(&s.fund_pay_sumamt) > Decimal::ZERO || dec(&s.acct_pay) > Decimal::ZERO;
                (paid, money::to_fen(dec(&s.medfee_sumamt)))
            });
        if let Some(d) = best {
            out.push((label, d));
        }
        if out.len() == 5 {
            break;
        }
    }
    out
}

/// A row of the example table: its label and the split field it shows.
type SplitField = (&'static str, fn(&proto::Split) -> &str);

pub(super) fn print_examples(done: &[Done], lang: Lang) {
    let l = |key| lang.label(key);
    let ex = examples(done);
    if ex.is_empty() {
        return;
    }
    println!("{}", l("demo.example_settlements_nhsa_setlinfo_fields"));
    let mut header = vec!["".to_owned()];
    header.extend(
        ex.iter()
            .enumerate()
            .map(|(i, (l, _))| format!("#{} {l}", i + 1)),
    );
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    let text_row = |label: &str, f: &dyn Fn(&Done) -> String| {
        let mut r = vec![Cell::new(label)];
        r.extend(ex.iter().map(|(_, d)| Cell::new(f(d))));
        r
    };
    t.add_row(text_row(l("demo.settlement"), &|d| {
        d.settlement.settlement_id.clone()
    }));
    t.add_row(text_row(l("demo.patient"), &|d| {
        let p = &d.scenario.person;
        format!(
            "{} ({}{})",
            mask(&p.name),
            match lang {
                Lang::En => p.person_type.as_str(),
                Lang::Zh => p.person_type.zh_name(),
            },
            if p.civil_servant {
                l("demo.civil_servant")
            } else {
                ""
            }
        )
    }));
    t.add_row(text_row(l("demo.home_treated_in"), &|d| {
        format!(
            "{} → {}",
            city_name(&d.settlement.home_region),
            city_name(&d.settlement.treatment_region)
        )
    }));
    t.add_row(text_row(l("demo.visit"), &|d| {
        let (kind, level) = match lang {
            Lang::En => (d.scenario.kind.to_string(), d.scenario.level.to_string()),
            Lang::Zh => (
                d.scenario.kind.zh_name().to_owned(),
                d.scenario.level.zh_name().to_owned(),
            ),
        };
        t!(
            "demo.visit_at",
            locale = lang.code(),
            kind = kind,
            institution = d.scenario.institution,
            level = level
        )
        .into_owned()
    }));
    t.add_row(text_row(l("demo.filing_applied"), &|d| {
        d.settlement
            .split
            .as_ref()
            .and_then(|s| FilingType::from_proto(s.applied_filing_type, "f").ok())
            .map_or_else(
                || l("demo.filing_none_local").to_owned(),
                |f| match lang {
                    Lang::En => f.to_string(),
                    Lang::Zh => f.zh_name().to_owned(),
                },
            )
    }));
    let fields: [SplitField; 16] = [
        ("medfee_sumamt 总额", |s| &s.medfee_sumamt),
        ("fulamt_ownpay_amt 丙类自费", |s| &s.fulamt_ownpay_amt),
        ("overlmt_selfpay 超限价", |s| &s.overlmt_selfpay),
        ("preselfpay_amt 乙类先行自付", |s| &s.preselfpay_amt),
        ("inscp_scp_amt 符合范围", |s| &s.inscp_scp_amt),
        ("act_pay_dedc 起付线", |s| &s.act_pay_dedc),
        ("pool_ratio 统筹比例", |s| &s.pool_ratio),
        ("hifp_pay 统筹基金", |s| &s.hifp_pay),
        ("hifmi_pay 大病保险", |s| &s.hifmi_pay),
        ("hifob_pay 大额补助", |s| &s.hifob_pay),
        ("cvlserv_pay 公务员补助", |s| &s.cvlserv_pay),
        ("fund_pay_sumamt 基金支付", |s| &s.fund_pay_sumamt),
        ("hosp_part_amt 医院负担", |s| &s.hosp_part_amt),
        ("psn_part_amt 个人负担", |s| &s.psn_part_amt),
        ("acct_pay 个人账户", |s| &s.acct_pay),
        ("psn_cash_pay 现金", |s| &s.psn_cash_pay),
    ];
    for (label, f) in fields {
        let mut r = vec![Cell::new(label)];
        r.extend(ex.iter().map(|(_, d)| {
            right(
                d.settlement
                    .split
                    .as_ref()
                    .map(|s| f(s).to_owned())
                    .unwrap_or_default(),
            )
        }));
        t.add_row(r);
    }
    t.add_row(text_row(l("demo.pre_settle_predicted_the_fund"), &|d| {
        let pre = d.pre.split.as_ref().map(|s| s.fund_pay_sumamt.clone());
        let got = d
            .settlement
            .split
            .as_ref()
            .map(|s| s.fund_pay_sumamt.clone());
        if pre == got {
            l("demo.yes").into()
        } else {
            format!("{} ({})", l("demo.no"), pre.unwrap_or_default())
        }
    }));
    println!("{t}");
    if let Some((label, d)) = ex.first()
        && let Some(s) = &d.settlement.split
    {
        println!(
            "{} #1 ({label}, {}):",
            l("demo.trace_of"),
            d.settlement.settlement_id
        );
        for line in &s.trace {
            println!("  {line}");
        }
    }
    // The reversals, each a new record; the settled one is never edited.
    let mut rt = table(&[
        l("demo.reversal"),
        l("demo.of_settlement"),
        l("demo.how"),
        l("demo.fund_share"),
        l("demo.state"),
    ]);
    let mut any = false;
    for d in done {
        if let Some(c) = &d.cancel {
            any = true;
            rt.add_row(vec![
                Cell::new(&c.settlement_id),
                Cell::new(&d.settlement.settlement_id),
                Cell::new(l("demo.cancelled_by_the_institution_2208")),
                right(
                    c.split
                        .as_ref()
                        .map(|s| s.fund_pay_sumamt.clone())
                        .unwrap_or_default(),
                ),
                Cell::new(&c.state),
            ]);
        }
        if let Some(r) = &d.reverse {
            any = true;
            let rev = r.reversal.clone().unwrap_or_default();
            rt.add_row(vec![
                Cell::new(&rev.settlement_id),
                Cell::new(&d.settlement.settlement_id),
                Cell::new(format!(
                    "{}: {}",
                    l("demo.of_the_settle_request_2601"),
                    r.outcome
                )),
                right(
                    rev.split
                        .as_ref()
                        .map(|s| s.fund_pay_sumamt.clone())
                        .unwrap_or_default(),
                ),
                Cell::new(&rev.state),
            ]);
        }
    }
    if any {
        println!("{rt}");
    }
    println!();
}

/// An audit deduction and a reserve top-up, so that the round shows both.
pub(super) struct Extras {
    pub(super) deduction: Option<proto::Deduction>,
    pub(super) reserve: Option<proto::ReserveMovement>,
}

pub(super) async fn adjustments(ctx: &Ctx, done: &[Done]) -> anyhow::Result<Extras> {
    // Ningbo's audit finds 1 % of a cross-region inpatient bill unreasonable (审核扣款):
    // it pays its hospital less, and the home region owes that much less.
    let target = done
        .iter()
        .filter(|d| {
            d.cancel.is_none()
                && d.reverse.is_none()
                && d.scenario.kind == VisitKind::Inpatient
                && d.settlement.home_region != d.settlement.treatment_region
        })
        .max_by_key(|d| {
            money::to_fen(dec(&d
                .settlement
                .split
                .as_ref()
                .map(|s| s.fund_pay_sumamt.clone())
                .unwrap_or_default()))
        });
    let mut deduction = None;
    if let Some(d) = target {
        let fund = dec(&d
            .settlement
            .split
            .as_ref()
            .map(|s| s.fund_pay_sumamt.clone())
            .unwrap_or_default());
        let amount = (fund / Decimal::from(100))
            .round_dp(2)
            .max(Decimal::ONE)
            .min(fund);
        if amount > Decimal::ZERO {
            let node = &ctx.nodes[d.scenario.treatment];
            deduction = Some(
                node.admin
                    .clone()
                    .record_deduction(proto::RecordDeductionRequest {
                        request_id: format!("demo-r{}-deduction", ctx.run),
                        settlement_id: d.settlement.settlement_id.clone(),
                        amount: fmt(amount),
                        reason: "重复检验收费 (duplicate lab test, demo audit)".into(),
                    })
                    .await
                    .context("recording an audit deduction")?
                    .into_inner(),
            );
        }
    }
    // Hangzhou prepays a reserve (储备金) to Ningbo for its people living there; it is
    // paid through clearing like a claim. Once: the request id is fixed.
    let reserve = ctx.nodes[0]
        .admin
        .clone()
        .record_reserve(proto::RecordReserveRequest {
            request_id: "demo-reserve-330100-330200".into(),
            counterparty: CITIES[1].region.into(),
            kind: "topup".into(),
            amount: "200000.00".into(),
            alarm_threshold: "50000.00".into(),
            note: "2026 reserve for Hangzhou retirees resettled in Ningbo (demo)".into(),
        })
        .await
        .context("recording a reserve top-up")?
        .into_inner();
    Ok(Extras {
        deduction,
        reserve: Some(reserve),
    })
}

/// Waits until no node has anything queued for another (cancellations, reversals and
/// adjustments reach the home node through the outbox), so both sides of every pair
/// agree before the round freezes them.
pub(super) async fn wait_outboxes(ctx: &Ctx) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for n in &ctx.nodes {
        let mut admin = n.admin.clone();
        loop {
            let s = admin
                .get_outbox(proto::GetOutboxRequest { list: 3 })
                .await?
                .into_inner();
            if s.depth == 0 {
                break;
            }
            if std::time::Instant::now() > deadline {
                println!(
                    "warning: node {} still has {} outbox item(s) after 60 s: {:?}",
                    n.region(),
                    s.depth,
                    s.items
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Ok(())
}

fn rr(round_id: &str) -> proto::RoundRequest {
    proto::RoundRequest {
        request_id: String::new(),
        round_id: round_id.to_owned(),
    }
}

/// The round this run cleared, and every settled round so far.
pub(super) struct Cleared {
    pub(super) round: proto::Round,
    pub(super) statement: proto::Statement,
    pub(super) history: Vec<(proto::Round, proto::Statement)>,
    pub(super) notes: Vec<String>,
}

fn finished(state: &str) -> bool {
    matches!(state, "SETTLED" | "ABORTED")
}

/// Runs a round to SETTLED: collect, reconcile (resolving disputes the documented way),
/// statement, confirmations, every transfer recorded, cleared at every node.
async fn drive_round(
    ctx: &Ctx,
    round_id: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<(proto::Round, proto::Statement)> {
    let mut c = ctx.coordinator.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut r;
    loop {
        r = c.run_round(rr(round_id)).await?.into_inner();
        match r.state.as_str() {
            "CONFIRMED" | "SETTLED" => break,
            "ABORTED" => bail!("round {round_id} was aborted: {}", r.note),
            "DISPUTED" => {
                let d = c.list_disputes(rr(round_id)).await?.into_inner();
                notes.push(format!(
                    "round {round_id} was DISPUTED ({} pair(s)); resolved by carrying one-sided records to the next round",
                    d.disputes.len()
                ));
                c.resolve_disputes(rr(round_id)).await?;
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "round {round_id} is stuck in {} waiting for {:?}: {}",
                r.state,
                r.missing,
                r.note
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = c.get_statement(rr(round_id)).await?.into_inner();
    if r.state == "CONFIRMED" {
        for (i, ins) in st.instructions.iter().enumerate() {
            r = c
                .record_transfer(proto::RecordTransferRequest {
                    request_id: format!("demo-{round_id}-t{i}"),
                    round_id: round_id.to_owned(),
                    from_region: ins.from_region.clone(),
                    to_region: ins.to_region.clone(),
                    amount: ins.amount.clone(),
                    reference: format!("DEMO-BANK-{round_id}-{}", i + 1),
                })
                .await
                .with_context(|| format!("recording transfer {} of {round_id}", i + 1))?
                .into_inner();
        }
    }
    while !(r.state == "SETTLED" && r.cleared.len() >= CITIES.len()) {
        if std::time::Instant::now() > deadline {
            bail!(
                "round {round_id} did not reach SETTLED at every node: {} cleared at {:?}",
                r.state,
                r.cleared
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = c.run_round(rr(round_id)).await?.into_inner();
    }
    Ok((r, st))
}

pub(super) async fn clear(ctx: &Ctx) -> anyhow::Result<Cleared> {
    let mut c = ctx.coordinator.clone();
    let mut notes = Vec::new();
    // A round an interrupted earlier run left unfinished is finished first.
    let rounds = c
        .list_rounds(proto::ListRoundsRequest {})
        .await?
        .into_inner()
        .rounds;
    for r in rounds.iter().filter(|r| !finished(&r.state)) {
        notes.push(format!(
            "finished round {} ({}) left {} by an earlier run",
            r.round_id, r.period, r.state
        ));
        drive_round(ctx, &r.round_id, &mut notes).await?;
    }
    let now = Period::of(chrono::Utc::now());
    let last = rounds
        .iter()
        .filter(|r| r.state == "SETTLED")
        .filter_map(|r| Period::parse(&r.period, "period").ok().map(|p| (p, r)))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.round_id.cmp(&b.1.round_id)))
        .map(|(p, r)| (p, r.round_id.clone()));
    let first = rounds
        .iter()
        .filter(|r| r.state == "SETTLED")
        .filter_map(|r| Period::parse(&r.period, "period").ok())
        .min()
        .unwrap_or(now);
    let uncleared = uncleared_records(ctx, first, now).await?;
    let opened = match plan(last.as_ref().map(|l| l.0), now, uncleared) {
        Plan::Open => {
            println!(
                "clearing: opening a round for {now} (early: the month is not over; later records go to the next round)"
            );
            open(ctx, now).await?
        }
        Plan::Again => {
            notes.push(format!(
                "{now} was cleared early by an earlier run; this round clears the {uncleared} record(s) that came in since"
            ));
            println!(
                "clearing: opening another early round for {now} ({uncleared} record(s) not yet cleared)"
            );
            open(ctx, now).await?
        }
        Plan::Nothing => {
            let id = last.map(|l| l.1).unwrap_or_default();
            println!(
                "clearing: nothing new to clear in {now}: every record was cleared by round {id}; no round opened"
            );
            notes.push(format!(
                "nothing new to clear in {now}; the statement below is round {id}'s"
            ));
            id
        }
    };
    let (round, statement) = drive_round(ctx, &opened, &mut notes).await?;
    let mut history = Vec::new();
    for r in c
        .list_rounds(proto::ListRoundsRequest {})
        .await?
        .into_inner()
        .rounds
        .into_iter()
        .filter(|r| r.state == "SETTLED")
    {
        let st = c.get_statement(rr(&r.round_id)).await?.into_inner();
        history.push((r, st));
    }
    Ok(Cleared {
        round,
        statement,
        history,
        notes,
    })
}

/// What a run's clearing step does, from the last settled period, the current one and
/// how many records the nodes hold uncleared up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// No round of the current month yet: open one (early).
    Open,
    /// The current month was cleared early and records came in since: another early
    /// round of it clears only those (the nodes freeze records not yet cleared).
    Again,
    /// The current month was cleared and nothing came in since: no round.
    Nothing,
}

/// Never a future period: the coordinator refuses them, and a round for a month that
/// has not begun would be a fiction.
fn plan(last_settled: Option<Period>, now: Period, uncleared: u64) -> Plan {
    match last_settled {
        Some(p) if p >= now && uncleared == 0 => Plan::Nothing,
        Some(p) if p >= now => Plan::Again,
        _ => Plan::Open,
    }
}

/// Records the nodes hold, in `first..=last`, that no round has cleared.
async fn uncleared_records(ctx: &Ctx, first: Period, last: Period) -> anyhow::Result<u64> {
    let mut n = 0;
    for node in &ctx.nodes {
        let mut p = first;
        loop {
            let l = node.ledger(p).await?;
            for pos in &l.positions {
                n += (pos.receivable_count + pos.payable_count).saturating_sub(pos.cleared);
            }
            if p >= last {
                break;
            }
            p = p.next();
        }
    }
    Ok(n)
}

async fn open(ctx: &Ctx, period: Period) -> anyhow::Result<String> {
    Ok(ctx
        .coordinator
        .clone()
        .open_round(proto::OpenRoundRequest {
            request_id: format!("demo-open-{period}-r{}", ctx.run),
            period: period.to_string(),
            early: true,
            allow_empty: false,
        })
        .await
        .context("opening the clearing round")?
        .into_inner()
        .round_id)
}

fn net_of(st: &proto::Statement, region: &str) -> Decimal {
    st.nets
        .iter()
        .find(|n| n.region == region)
        .map(|n| dec(&n.net))
        .unwrap_or_default()
}

fn check(failures: &mut u32, ok: bool, line: String) {
    println!("CHECK {line} {}", if ok { "ok" } else { "FAILED" });
    if !ok {
        *failures += 1;
    }
}

/// Prints the ledgers, the statement and the checks; returns how many checks failed.
pub(super) async fn print_clearing(
    ctx: &Ctx,
    cl: &Cleared,
    extras: &Extras,
) -> anyhow::Result<u32> {
    let r = &cl.round;
    let st = &cl.statement;
    for n in &cl.notes {
        println!("note: {n}");
    }
    if let Some(d) = &extras.deduction {
        println!(
            "audit deduction (审核扣款) by {}: {} on {} (owed by {})",
            city_name(d.settlement_id.get(..6).unwrap_or_default()),
            d.amount,
            d.settlement_id,
            city_name(&d.home_region)
        );
    }
    if let Some(m) = &extras.reserve {
        println!(
            "reserve (储备金) {} → {}: balance {}{}",
            city_name(&m.home_region),
            city_name(&m.treatment_region),
            m.balance,
            if m.alarm {
                " (below its alarm threshold)"
            } else {
                ""
            }
        );
    }

    // Every period this run's ledgers could hold records of: from the first settled
    // round's period to this round's.
    let first = cl
        .history
        .iter()
        .filter_map(|(r, _)| Period::parse(&r.period, "period").ok())
        .min()
        .unwrap_or(Period::parse(&r.period, "period")?);
    let last = Period::parse(&r.period, "period")?;
    let mut periods = vec![first];
    while let Some(p) = periods.last().copied()
        && p < last
    {
        periods.push(p.next());
    }

    let lang = ctx.lang;
    let l = |key| lang.label(key);
    println!("\n{}", l("demo.ledgers_of_the_nodes_adminservice_getled"));
    let mut lt = table(&[
        l("demo.node"),
        l("demo.period"),
        l("demo.counterparty"),
        l("demo.receivable_as_treatment_region"),
        l("demo.payable_as_home_region"),
        l("demo.net"),
        l("demo.cleared_records"),
    ]);
    let mut ledger_net: BTreeMap<&str, Decimal> = BTreeMap::new();
    let mut records: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for n in &ctx.nodes {
        for p in &periods {
            let l = n.ledger(p).await?;
            *ledger_net.entry(n.region()).or_default() += dec(&l.net);
            for pos in &l.positions {
                let e = records.entry(n.region()).or_default();
                e.0 += pos.cleared;
                e.1 += pos.receivable_count + pos.payable_count;
                lt.add_row(vec![
                    Cell::new(region_label(n.region())),
                    Cell::new(&l.period),
                    Cell::new(region_label(&pos.counterparty)),
                    right(format!("{} ({})", pos.receivable_sum, pos.receivable_count)),
                    right(format!("{} ({})", pos.payable_sum, pos.payable_count)),
                    right(&pos.net),
                    right(format!(
                        "{}/{}",
                        pos.cleared,
                        pos.receivable_count + pos.payable_count
                    )),
                ]);
            }
        }
    }
    println!("{lt}");

    println!(
        "\n{} {} ({} {}), {} {}:",
        l("demo.statement_of_round"),
        st.round_id,
        l("demo.period"),
        st.period,
        l("demo.digest"),
        &st.digest[..st.digest.len().min(16)]
    );
    let mut gt = table(&[
        l("demo.debtor_home_region"),
        l("demo.owes_creditor_treatment_region"),
        l("demo.records"),
        l("demo.amount"),
    ]);
    for g in &st.gross {
        gt.add_row(vec![
            Cell::new(region_label(&g.debtor)),
            Cell::new(region_label(&g.creditor)),
            right(g.count),
            right(&g.amount),
        ]);
    }
    println!("{}\n{gt}", l("demo.gross_positions"));
    // What "payable" is made of: claims, cancellations, audit deductions and reserve
    // top-ups, each Σ to the gross amounts above.
    let pairs = crate::cli::statement::by_kind(st)?;
    println!(
        "{}\n{}",
        l("demo.by_record_kind_amount_records"),
        crate::cli::statement::kind_table(&pairs, lang, region_label)
    );
    let mut nt = table(&[
        l("demo.region"),
        l("demo.receivable"),
        l("demo.payable"),
        l("demo.net"),
        "",
    ]);
    let mut sum = Decimal::ZERO;
    for n in &st.nets {
        let net = dec(&n.net);
        sum += net;
        nt.add_row(vec![
            Cell::new(region_label(&n.region)),
            right(&n.receivable),
            right(&n.payable),
            right(&n.net),
            Cell::new(if net > Decimal::ZERO {
                l("demo.creditor_is_paid")
            } else if net < Decimal::ZERO {
                l("demo.debtor_pays")
            } else {
                l("demo.even")
            }),
        ]);
    }
    println!("{}\n{nt}", l("demo.net_positions"));
    println!("Σ net = {}", fmt(sum));
    let mut it = table(&["#", l("demo.from"), l("demo.to"), l("demo.amount")]);
    for (i, ins) in st.instructions.iter().enumerate() {
        it.add_row(vec![
            right(i + 1),
            Cell::new(region_label(&ins.from_region)),
            Cell::new(region_label(&ins.to_region)),
            right(&ins.amount),
        ]);
    }
    println!(
        "{}\n{it}",
        t!(
            "demo.payment_instructions",
            locale = lang.code(),
            account = st.clearing_account,
            netted = st.netted_transfers,
            bilateral = st.bilateral_transfers
        )
    );
    for res in &st.reserves {
        println!(
            "reserve of {} held by {}: {}{}",
            city_name(&res.home_region),
            city_name(&res.treatment_region),
            res.balance,
            if res.alarm {
                " — ALARM: below threshold"
            } else {
                ""
            }
        );
    }
    println!(
        "round {}: {} — confirmed by {}; {}/{} transfers recorded; cleared at {}",
        r.round_id,
        r.state,
        r.confirmed.join(", "),
        r.transfers_recorded,
        r.transfers_expected,
        r.cleared.join(", ")
    );

    println!();
    let mut failures = 0;
    let n = CITIES.len();
    check(
        &mut failures,
        r.state == "SETTLED"
            && r.confirmed.len() == n
            && r.cleared.len() == n
            && r.transfers_recorded == r.transfers_expected,
        format!(
            "round {} {} confirmed={}/{n} transfers={}/{} cleared={}/{n}",
            r.round_id,
            r.state,
            r.confirmed.len(),
            r.transfers_recorded,
            r.transfers_expected,
            r.cleared.len()
        ),
    );
    check(
        &mut failures,
        sum == Decimal::ZERO,
        format!("statement {} Σ net = {}", st.round_id, fmt(sum)),
    );
    // The breakdown by kind covers every gross pair and adds up to it (by_kind drops a
    // pair's breakdown that does not).
    let pairs = crate::cli::statement::by_kind(st)?;
    let totals = crate::cli::statement::kind_totals(&pairs);
    let gross: Decimal = st.gross.iter().map(|g| dec(&g.amount)).sum();
    let by_kind: Decimal = totals.values().map(|(_, a)| *a).sum();
    check(
        &mut failures,
        pairs.iter().all(|p| !p.groups.is_empty()) && by_kind == gross,
        format!(
            "statement {} by kind: {} = gross {}",
            st.round_id,
            crate::i18n::KindGroup::ALL
                .iter()
                .filter_map(|g| totals.get(g).map(|(n, a)| format!(
                    "{} {} ({n})",
                    g.code(),
                    fmt(*a)
                )))
                .collect::<Vec<_>>()
                .join(" + "),
            fmt(gross)
        ),
    );
    let paid_in: Decimal = st
        .instructions
        .iter()
        .filter(|i| i.to_region == st.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    let paid_out: Decimal = st
        .instructions
        .iter()
        .filter(|i| i.from_region == st.clearing_account)
        .map(|i| dec(&i.amount))
        .sum();
    check(
        &mut failures,
        paid_in == paid_out,
        format!("clearing account in={} out={}", fmt(paid_in), fmt(paid_out)),
    );
    // Each node's books against the statements: cumulative over every settled round
    // (a re-run's round clears the records that came in since an earlier run's).
    let rounds = cl.history.len();
    let mut ledger_sum = Decimal::ZERO;
    for node in &ctx.nodes {
        let region = node.region();
        let statement: Decimal = cl.history.iter().map(|(_, s)| net_of(s, region)).sum();
        let ledger = ledger_net.get(region).copied().unwrap_or_default();
        ledger_sum += ledger;
        check(
            &mut failures,
            ledger == statement,
            format!(
                "ledger {region} net={} statement={}{}",
                fmt(ledger),
                fmt(statement),
                if rounds > 1 {
                    format!(" (over {rounds} rounds)")
                } else {
                    String::new()
                }
            ),
        );
        let (cleared, total) = records.get(region).copied().unwrap_or_default();
        check(
            &mut failures,
            cleared == total,
            format!("cleared {region} records={cleared}/{total}"),
        );
    }
    check(
        &mut failures,
        ledger_sum == Decimal::ZERO,
        format!("Σ ledger nets = {}", fmt(ledger_sum)),
    );
    Ok(failures)
}

/// Scrapes every node's metrics and compares the settle answers it counted with the
/// Settle calls the demo sent it.
pub(super) async fn check_metrics(ctx: &Ctx, calls: [u64; 3]) -> u32 {
    let mut failures = 0;
    for n in &ctx.nodes {
        let Some(addr) = n.metrics else {
            continue;
        };
        let body = match yidi_node::metrics::scrape(addr).await {
            Ok(b) => b,
            Err(e) => {
                check(&mut failures, false, format!("metrics {}: {e}", n.region()));
                continue;
            }
        };
        let counted: u64 = body
            .lines()
            .filter(|l| l.starts_with("yidi_settlements_total{") && l.contains("op=\"settle\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        let outbox = body
            .lines()
            .find(|l| l.starts_with("yidi_outbox_depth"))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_owned();
        check(
            &mut failures,
            counted == calls[n.index],
            format!(
                "metrics {} settle answers={counted} calls={} outbox_depth={outbox}",
                n.region(),
                calls[n.index]
            ),
        );
    }
    failures
}

pub(super) fn print_explore(layout: &Layout, ctx: &Ctx) {
    let hz = super::url(layout.nodes[0]);
    let nb = super::url(layout.nodes[1]);
    let coord = super::url(layout.coordinator);
    let period = Period::of(chrono::Utc::now());
    let patient = ctx.cities[0]
        .sample_persons
        .iter()
        .find(|p| p.status == "active" && !p.card_no.is_empty());
    let nb_hospital = ctx.cities[1]
        .institutions
        .iter()
        .find(|i| i.usable && i.kind == yidi_common::types::InstitutionKind::Hospital)
        .map_or("H33020001", |i| i.code.as_str());
    println!(
        "\nThe federation keeps running until Ctrl-C. Explore it from another terminal \
         (`yidi` is target/release/yidi, or `cargo run --release --`):\n"
    );
    // Every command names its party's certificate: the demo serves mutual TLS only.
    let flags = |id: Identity| {
        ctx.pki
            .flags(&id)
            .unwrap_or_else(|e| format!("<no certificate: {e:#}>"))
    };
    let operator = |r: &str, role| {
        flags(Identity::Operator {
            region: RegionCode::parse(r, "region").expect("demo region"),
            role,
        })
    };
    let (hz_op, nb_op) = (
        operator(CITIES[0].region, Role::Admin),
        operator(CITIES[1].region, Role::Admin),
    );
    println!("  yidi admin --node {hz} {hz_op} info");
    println!("  yidi admin --node {hz} {hz_op} person list --limit 5");
    println!("  yidi admin --node {hz} {hz_op} filing list --limit 5");
    println!("  yidi admin --node {nb} {nb_op} ledger --period {period}");
    println!("  yidi admin --node {nb} {nb_op} outbox");
    if let Some(p) = patient {
        let desk = flags(Identity::Institution {
            region: RegionCode::parse(CITIES[1].region, "region").expect("demo region"),
            code: nb_hospital.to_owned(),
        });
        println!(
            "  yidi hospital --node {nb} {desk} --institution {nb_hospital} identify --card-no {} --card-region {}",
            p.card_no, CITIES[0].region
        );
    }
    println!(
        "  yidi clearing --coordinator {coord} {} status",
        operator(PROVINCE, Role::Clearing)
    );
    if let Some(a) = layout.node_metrics {
        println!("  curl -s http://{}/metrics | grep yidi_settlements", a[1]);
    }
    println!(
        "  grpcurl {} {} list",
        ctx.pki
            .party(&Identity::Operator {
                region: RegionCode::parse(CITIES[0].region, "region").expect("demo region"),
                role: Role::Admin,
            })
            .map(|p| format!(
                "-cacert {} -cert {} -key {}",
                p.ca.display(),
                p.cert.display(),
                p.key.display()
            ))
            .unwrap_or_default(),
        layout.nodes[0]
    );
    println!("\nCtrl-C stops every node and the coordinator gracefully.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_read_in_chinese() {
        assert_eq!(
            refusal_zh(
                "at settle: policy 330200 employee does not settle outpatient visits directly under filing type temporary"
            )
            .as_deref(),
            Some("结算：330200 职工政策对普通门诊不予直接结算（备案类型：临时外出）")
        );
        assert_eq!(refusal_zh("at settle: refused"), None);
    }

    #[test]
    fn a_round_is_only_ever_for_the_current_month() {
        let p = |s: &str| Period::parse(s, "period").expect("period");
        let now = p("2026-12");
        assert_eq!(plan(None, now, 0), Plan::Open);
        assert_eq!(plan(Some(p("2026-11")), now, 5), Plan::Open);
        assert_eq!(plan(Some(p("2026-11")), now, 0), Plan::Open);
        // Cleared early this month: another early round of it, or none at all; never
        // a round for 2027-01.
        assert_eq!(plan(Some(now), now, 3), Plan::Again);
        assert_eq!(plan(Some(now), now, 0), Plan::Nothing);
    }
}

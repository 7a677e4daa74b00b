//! `yidi quote` and `yidi bench-engine`: the benefit engine run offline from files, and
//! its single-core benchmark. `quote` is what an operator uses to check a policy file
//! against a real bill before publishing it, and what a clerk uses to explain a split;
//! it reads the same documents the node serves (policy TOML/JSON, a person with
//! accumulators, a visit with classified lines) and prints the split, the per-line
//! detail, the fund rows, the new accumulators and the trace — or all of it as JSON.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use yidi_common::engine::input::{Format, PersonInput, VisitInput};
use yidi_common::engine::{self, Accumulators, Line, PersonCtx, Quote, VisitCtx};
use yidi_common::money;

use crate::i18n::{self, Lang};
use rust_i18n::t;
use yidi_common::policy::Policy;
use yidi_common::types::{
    CatalogueClass, FilingType, HospitalLevel, InsuranceType, PersonType, VisitKind,
};

/// Arguments of `yidi quote`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuoteArgs {
    /// Benefit policy of the home region (TOML, or JSON when the name ends in .json);
    /// format reference: deploy/policy.sample.toml.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The person: insurance and person type, civil-servant flag, account balance and
    /// year-to-date accumulators (TOML or JSON); see deploy/examples/quote/person.toml.
    #[arg(long, value_name = "FILE")]
    pub person: PathBuf,
    /// The visit and its classified fee lines (TOML or JSON); see
    /// deploy/examples/quote/visit.toml.
    #[arg(long, value_name = "FILE")]
    pub visit: PathBuf,
    /// Print the result as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Language of the tables and the refusal line: en or zh (default: env YIDI_LANG,
    /// else zh when LC_ALL or LANG starts with zh). JSON keeps the codes.
    #[arg(long, value_enum)]
    pub lang: Option<Lang>,
}

/// Arguments of `yidi bench-engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    /// Fee lines per bill.
    #[arg(long, default_value_t = 20)]
    pub lines: usize,
    /// Run for this many seconds (ignored when --iterations is given).
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Run exactly this many quotes.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Policy to benchmark with (default: the built-in copy of deploy/policy.sample.toml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

fn read(path: &Path) -> anyhow::Result<(String, Format)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((text, Format::of_path(&path.to_string_lossy())))
}

/// Reads a policy file, TOML or JSON by extension, validated.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let (text, format) = read(path)?;
    let p = match format {
        Format::Toml => Policy::from_toml(&text),
        Format::Json => Policy::from_json(&text),
    };
    p.with_context(|| format!("policy {}", path.display()))
}

/// Exit codes of `yidi quote`: a split, refused by the policy, bad input, internal
/// error. Scripts tell a patient who must pay in full (refused) from a file to fix.
pub mod exit {
    pub const SPLIT: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const REFUSED: i32 = 3;
}

/// Why `yidi quote` gives no split.
#[derive(Debug)]
enum Failure {
    /// A file cannot be read, or a field is malformed or inconsistent.
    Input { file: PathBuf, error: anyhow::Error },
    /// Well-formed input the policy does not settle (not covered, no direct settlement).
    Refused { policy: Box<Policy>, reason: String },
    /// A bug: the engine panicked.
    Internal(String),
}

fn input(file: &Path) -> impl FnOnce(anyhow::Error) -> Failure + '_ {
    move |error| Failure::Input {
        file: file.to_owned(),
        error,
    }
}

/// Reads the three files and runs the engine.
fn evaluate(args: &QuoteArgs) -> Result<(Policy, Accumulators, Quote), Failure> {
    let policy = load_policy(&args.policy).map_err(input(&args.policy))?;
    let (text, format) = read(&args.person).map_err(input(&args.person))?;
    let (person, acc) = PersonInput::parse(&text, format)
        .and_then(|p| p.to_ctx())
        .map_err(|e| input(&args.person)(e.into()))?;
    let (text, format) = read(&args.visit).map_err(input(&args.visit))?;
    let (visit, lines) = VisitInput::parse(&text, format)
        .and_then(|v| v.to_ctx())
        .map_err(|e| input(&args.visit)(e.into()))?;
    // The engine is pure: a panic inside it leaves nothing half-done, and is reported
    // as what it is (an internal error) rather than as the process's crash.
    let quoted = std::panic::catch_unwind(|| engine::quote(&policy, &person, &acc, &visit, &lines))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Failure::Internal(format!("the benefit engine failed: {what}"))
        })?;
    match quoted {
        Ok(q) => Ok((policy, acc, q)),
        Err(yidi_common::Error::Precondition(reason)) => Err(Failure::Refused {
            policy: Box::new(policy),
            reason,
        }),
        // The engine names `visit.`, `person.`, `lines[i].` or `policy.` fields.
        Err(e) => Err(input(&args.visit)(e.into())),
    }
}

fn policy_json(policy: &Policy) -> Value {
    json!({
        "region": policy.region,
        "insurance_type": policy.insurance_type.as_str(),
        "name": policy.name,
        "effective_from": policy.effective_from.to_string(),
        "digest": policy.digest(),
    })
}

/// Runs `yidi quote` and returns its exit code ([`exit`]). With `--json` every outcome
/// is one JSON document on stdout; a refusal or an error is also one line on stderr.
#[must_use]
pub fn run(args: &QuoteArgs) -> i32 {
    let printed = match evaluate(args) {
        Ok((policy, acc, q)) => {
            if args.json {
                serde_json::to_string_pretty(&to_json(&policy, &acc, &q))
                    .map(|text| println!("{text}"))
                    .map_err(anyhow::Error::from)
            } else {
                print_tables(&policy, &acc, &q, Lang::resolve(args.lang));
                Ok(())
            }
        }
        Err(Failure::Refused { policy, reason }) => {
            let lang = Lang::resolve(args.lang);
            eprintln!(
                "{}",
                t!("quote.refused", locale = lang.code(), reason = reason)
            );
            if args.json {
                println!(
                    "{}",
                    json!({
                        "outcome": "refused",
                        "refused_by": "policy",
                        "reason": reason,
                        "policy": policy_json(&policy),
                    })
                );
            }
            return exit::REFUSED;
        }
        Err(Failure::Input { file, error }) => {
            eprintln!("error: {}: {error:#}", file.display());
            if args.json {
                let (field, reason) = match error.downcast_ref::<yidi_common::Error>() {
                    Some(yidi_common::Error::Invalid { field, reason }) => {
                        (field.clone(), reason.clone())
                    }
                    _ => (String::new(), format!("{error:#}")),
                };
                println!(
                    "{}",
                    json!({
                        "outcome": "bad_input",
                        "file": file.display().to_string(),
                        "field": field,
                        "reason": reason,
                    })
                );
            }
            return exit::BAD_INPUT;
        }
        Err(Failure::Internal(reason)) => Err(anyhow::anyhow!(reason)),
    };
    match printed {
        Ok(()) => exit::SPLIT,
        Err(e) => {
            eprintln!("internal error: {e:#} (a bug: please report it with the three files)");
            if args.json {
                println!(
                    "{}",
                    json!({"outcome": "internal_error", "reason": format!("{e:#}")})
                );
            }
            exit::INTERNAL
        }
    }
}

/// The split's fields with their NHSA names and Chinese labels, in wire order.
fn split_fields(q: &Quote) -> [(&'static str, &'static str, Decimal); 16] {
    [
        ("medfee_sumamt", "医疗费总额", q.medfee_sumamt),
        ("fulamt_ownpay_amt", "全自费金额", q.fulamt_ownpay_amt),
        ("overlmt_selfpay", "超限价自费", q.overlmt_selfpay),
        ("preselfpay_amt", "先行自付金额", q.preselfpay_amt),
        ("inscp_scp_amt", "符合范围金额", q.inscp_scp_amt),
        ("act_pay_dedc", "实际支付起付线", q.act_pay_dedc),
        ("hifp_pay", "统筹基金支出", q.hifp_pay),
        ("hifmi_pay", "大病保险支出", q.hifmi_pay),
        ("hifob_pay", "大额医疗补助", q.hifob_pay),
        ("cvlserv_pay", "公务员医疗补助", q.cvlserv_pay),
        ("maf_pay", "医疗救助", q.maf_pay),
        ("fund_pay_sumamt", "基金支付总额", q.fund_pay_sumamt),
        ("hosp_part_amt", "医院负担金额", q.hosp_part_amt),
        ("psn_part_amt", "个人负担总额", q.psn_part_amt),
        ("acct_pay", "个人账户支出", q.acct_pay),
        ("psn_cash_pay", "个人现金支出", q.psn_cash_pay),
    ]
}

fn acc_fields(a: &Accumulators) -> [(&'static str, String); 9] {
    [
        ("year", a.year.to_string()),
        ("version", a.version.to_string()),
        ("pool_paid", money::format(a.pool_paid)),
        (
            "outpatient_pool_paid",
            money::format(a.outpatient_pool_paid),
        ),
        ("chronic_pool_paid", money::format(a.chronic_pool_paid)),
        (
            "serious_illness_paid",
            money::format(a.serious_illness_paid),
        ),
        (
            "outpatient_deductible_paid",
            money::format(a.outpatient_deductible_paid),
        ),
        ("admissions", a.admissions.to_string()),
        ("inscope_total", money::format(a.inscope_total)),
    ]
}

fn filing_name(f: Option<FilingType>) -> &'static str {
    f.map_or("local", FilingType::as_str)
}

fn to_json(policy: &Policy, before: &Accumulators, q: &Quote) -> Value {
    let mut split = serde_json::Map::new();
    for (name, _, v) in split_fields(q) {
        split.insert(name.to_owned(), Value::String(money::format(v)));
    }
    split.insert(
        "pool_ratio".to_owned(),
        Value::String(money::format_ratio(q.pool_ratio)),
    );
    split.insert(
        "applied_filing_type".to_owned(),
        Value::String(filing_name(q.applied_filing_type).to_owned()),
    );
    let acc = |a: &Accumulators| {
        let mut m = serde_json::Map::new();
        for (name, v) in acc_fields(a) {
            // Counts as numbers, money as strings (never through a float).
            let value = match name {
                "year" | "version" | "admissions" => {
                    v.parse::<u64>().map_or(Value::Null, Value::from)
                }
                _ => Value::String(v),
            };
            m.insert(name.to_owned(), value);
        }
        Value::Object(m)
    };
    json!({
        "outcome": "split",
        "policy": {
            "region": policy.region,
            "insurance_type": policy.insurance_type.as_str(),
            "name": policy.name,
            "effective_from": policy.effective_from.to_string(),
            "digest": policy.digest(),
        },
        "split": split,
        "lines": q.lines.iter().map(|l| json!({
            "line_no": l.line_no,
            "amount": money::format(l.amount),
            "overlmt_selfpay": money::format(l.overlmt_selfpay),
            "preselfpay_amt": money::format(l.preselfpay_amt),
            "fulamt_ownpay_amt": money::format(l.fulamt_ownpay_amt),
            "inscp_scp_amt": money::format(l.inscp_scp_amt),
            "reason": l.reason.as_str(),
        })).collect::<Vec<_>>(),
        "funds": q.funds.iter().map(|f| json!({
            "fund": f.fund.as_str(),
            "amount": money::format(f.amount),
            "description": f.description,
        })).collect::<Vec<_>>(),
        "accumulators_before": acc(before),
        "accumulators_after": acc(&q.accumulators),
        "trace": q.trace,
    })
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn right(t: &mut Table, cols: &[usize]) {
    for &c in cols {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn print_tables(policy: &Policy, before: &Accumulators, q: &Quote, lang: Lang) {
    let l = |key| lang.label(key);
    let insurance = match lang {
        Lang::En => policy.insurance_type.as_str(),
        Lang::Zh => policy.insurance_type.zh_name(),
    };
    println!(
        "{} {} {} \"{}\" ({} {}, {} {})",
        l("quote.policy"),
        policy.region,
        insurance,
        policy.name,
        l("quote.from"),
        policy.effective_from,
        l("quote.digest"),
        &policy.digest()[..12]
    );
    let mut t = table(&[l("quote.field"), "名称", l("quote.amount")]);
    for (name, label, v) in split_fields(q) {
        t.add_row(vec![name.to_owned(), label.to_owned(), money::format(v)]);
    }
    t.add_row(vec![
        "pool_ratio".to_owned(),
        "统筹支付比例".to_owned(),
        money::format_ratio(q.pool_ratio),
    ]);
    t.add_row(vec![
        "applied_filing_type".to_owned(),
        "备案类型".to_owned(),
        match lang {
            Lang::En => filing_name(q.applied_filing_type).to_owned(),
            Lang::Zh => q
                .applied_filing_type
                .map_or("本地就医", FilingType::zh_name)
                .to_owned(),
        },
    ]);
    right(&mut t, &[2]);
    println!("{t}");

    let mut t = table(&[
        l("quote.line"),
        l("quote.amount"),
        l("quote.overlmt_selfpay"),
        l("quote.preselfpay_amt"),
        l("quote.fulamt_ownpay_amt"),
        l("quote.inscp_scp_amt"),
        l("quote.reason"),
    ]);
    for ln in &q.lines {
        t.add_row(vec![
            ln.line_no.clone(),
            money::format(ln.amount),
            money::format(ln.overlmt_selfpay),
            money::format(ln.preselfpay_amt),
            money::format(ln.fulamt_ownpay_amt),
            money::format(ln.inscp_scp_amt),
            i18n::line_reason_label(ln.reason, lang),
        ]);
    }
    right(&mut t, &[1, 2, 3, 4, 5]);
    println!("{t}");

    if !q.funds.is_empty() {
        let mut t = table(&[l("quote.fund"), l("quote.amount"), l("quote.description")]);
        for f in &q.funds {
            t.add_row(vec![
                i18n::fund_label(f.fund, lang),
                money::format(f.amount),
                f.description.clone(),
            ]);
        }
        right(&mut t, &[1]);
        println!("{t}");
    }

    let mut t = table(&[l("quote.accumulator"), l("quote.before"), l("quote.after")]);
    for ((name, b), (_, a)) in acc_fields(before)
        .into_iter()
        .zip(acc_fields(&q.accumulators))
    {
        t.add_row(vec![i18n::code_label(lang, "accumulator", name), b, a]);
    }
    right(&mut t, &[1, 2]);
    println!("{t}");

    println!("{}", l("quote.trace"));
    for (i, s) in q.trace.iter().enumerate() {
        println!("  {:>2}. {s}", i + 1);
    }
}

/// A realistic bill of `n` lines: mostly class A, every third class B with a first
/// self-pay share, every seventh class C, every fifth above its price cap.
pub fn bench_bill(n: usize) -> Vec<Line> {
    (0..n)
        .map(|i| {
            let i64i = i64::try_from(i).unwrap_or(0);
            let class = if i % 7 == 6 {
                CatalogueClass::C
            } else if i % 3 == 2 {
                CatalogueClass::B
            } else {
                CatalogueClass::A
            };
            let quantity = Decimal::from(1 + i64i % 4);
            let unit_price = Decimal::new(1_250 + 3_717 * i64i, 2);
            Line {
                line_no: (i + 1).to_string(),
                item_code: format!("ITEM{i:04}"),
                class,
                first_selfpay_ratio: if class == CatalogueClass::B {
                    Decimal::new(10, 2)
                } else {
                    Decimal::ZERO
                },
                price_cap: (i % 5 == 4).then(|| unit_price - Decimal::new(500, 2)),
                quantity,
                unit_price,
                amount: money::round_fen(quantity * unit_price),
            }
        })
        .collect()
}

fn bench_inputs() -> (PersonCtx, Accumulators, VisitCtx) {
    let person = PersonCtx {
        insurance_type: InsuranceType::Employee,
        person_type: PersonType::Retired,
        civil_servant: true,
        account_balance: Decimal::new(150_000, 2),
    };
    let acc = Accumulators {
        admissions: 1,
        pool_paid: Decimal::new(1_234_500, 2),
        inscope_total: Decimal::new(2_500_000, 2),
        ..Accumulators::new(2026)
    };
    let visit = VisitCtx {
        visit_kind: VisitKind::Inpatient,
        level: HospitalLevel::Level3,
        institution_code: "330200-H0001".to_owned(),
        visit_date: chrono::NaiveDate::from_ymd_opt(2026, 3, 14).unwrap_or_default(),
        treatment_region: "330200".to_owned(),
        home_region: String::new(),
        filing: Some(engine::FilingCtx {
            filing_type: FilingType::Referral,
            treatment_region: "330200".to_owned(),
            institutions: Vec::new(),
            valid_from: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default(),
            valid_to: None,
        }),
        use_account: true,
    };
    (person, acc, visit)
}

/// Runs `yidi bench-engine`: single-threaded quotes of one bill, with throughput and
/// per-quote latency percentiles.
pub fn run_engine_bench(args: &EngineBenchArgs) -> anyhow::Result<()> {
    if args.lines == 0 {
        bail!("--lines must be at least 1");
    }
    let policy = match &args.policy {
        Some(p) => load_policy(p)?,
        None => Policy::from_toml(include_str!("../../../deploy/policy.sample.toml"))?,
    };
    let (mut person, acc, mut visit) = bench_inputs();
    person.insurance_type = policy.insurance_type;
    if !policy.person_types.contains(&person.person_type) {
        person.person_type = *policy
            .person_types
            .iter()
            .next()
            .context("policy covers no person type")?;
    }
    visit.home_region.clone_from(&policy.region);
    let lines = bench_bill(args.lines);
    // One quote up front: fails fast on a policy that cannot settle the bench visit, and
    // warms caches.
    let q = engine::quote(&policy, &person, &acc, &visit, &lines)?;
    for _ in 0..10_000 {
        black_box(engine::quote(
            black_box(&policy),
            &person,
            &acc,
            &visit,
            black_box(&lines),
        )?);
    }
    let limit = Duration::from_secs(args.seconds.max(1));
    let mut lat_ns: Vec<u64> = Vec::with_capacity(4_000_000);
    let start = Instant::now();
    loop {
        let t0 = Instant::now();
        black_box(engine::quote(
            black_box(&policy),
            &person,
            &acc,
            &visit,
            black_box(&lines),
        )?);
        let t1 = Instant::now();
        lat_ns.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
        let done = match args.iterations {
            Some(n) => lat_ns.len() as u64 >= n,
            None => t1 - start >= limit,
        };
        if done {
            break;
        }
    }
    let elapsed_ns = start.elapsed().as_nanos().max(1);
    let n = lat_ns.len();
    lat_ns.sort_unstable();
    let pick = |per_mille: usize| lat_ns[(n * per_mille / 1000).min(n - 1)];
    let per_sec = u128::try_from(n).unwrap_or(u128::MAX) * 1_000_000_000 / elapsed_ns;
    let us = |ns: u64| format!("{}.{:02} µs", ns / 1000, (ns % 1000) / 10);
    println!(
        "engine: {} quotes of a {}-line {} bill (policy {} {}), one thread",
        n, args.lines, visit.visit_kind, policy.region, policy.insurance_type
    );
    println!(
        "  split: total {} funds {} personal {}",
        money::format(q.medfee_sumamt),
        money::format(q.fund_pay_sumamt),
        money::format(q.psn_part_amt)
    );
    // Wall-clock throughput drops when other processes share the core; the median
    // latency does not, so its inverse is printed too (what an uncontended core does).
    let p50 = pick(500).max(1);
    println!(
        "  throughput: {per_sec} quotes/s wall clock; {} quotes/s at the median latency",
        1_000_000_000 / p50
    );
    println!(
        "  latency: p50 {}  p99 {}  p99.9 {}  max {}",
        us(pick(500)),
        us(pick(990)),
        us(pick(999)),
        us(lat_ns[n - 1])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accumulator_row_has_a_chinese_label() {
        for (name, _) in acc_fields(&Accumulators::default()) {
            let zh = i18n::code_label(Lang::Zh, "accumulator", name);
            assert_ne!(zh, name, "no Chinese label for accumulator {name}");
            assert_eq!(i18n::code_label(Lang::En, "accumulator", name), name);
        }
    }
}

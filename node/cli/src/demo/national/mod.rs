//! `yidi demo --national`: two provinces and the national level on loopback, in this
//! process — Zhejiang (330000: Hangzhou 330100, Ningbo 330200) and Jiangsu (320000:
//! Nanjing 320100, Suzhou 320500), a coordinator per province and the national
//! coordinator (000000), every party over mutual TLS with the demo's certificates; the
//! nodes find each other through the federation directory, with no peers file.
//! Loads a policy, a hospital, a catalogue and a few filed persons per city through the
//! real AdminService; drives visits of every city's people in every other city through
//! the real HospitalService (across the province boundary and within it, with a
//! cancellation and a 冲正 of cross-province claims); runs each province's round (its own
//! cities' pairs) and then the national round (province against province, through the
//! provincial coordinators); prints every statement and `CHECK … ok` lines: Σ net = 0 at
//! each level, each province's cities summing to its national position, every node's
//! ledger equal to its rows of both statements, every round settled and cleared.
//!
//! Each run starts from empty stores under `<data-dir>/national`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use yidi_common::{
    money::{self},
    netting::statement_digest,
    proto::{self},
    region::NATIONAL,
};

use super::{DemoArgs, pki::Pki, url};

/// A city of the national demo.
struct City {
    region: &'static str,
    name: &'static str,
    /// Its level-3 hospital.
    hospital: &'static str,
    employee_policy: &'static str,
}

/// A province: its coordinator's code and its cities.
struct Province {
    code: &'static str,
    name: &'static str,
    cities: [City; 2],
}

const PROVINCES: [Province; 2] = [
    Province {
        code: "330000",
        name: "浙江 Zhejiang",
        cities: [
            City {
                region: "330100",
                name: "杭州 Hangzhou",
                hospital: "H33010001",
                employee_policy: include_str!(
                    "../../../../../deploy/policies/330100-employee.toml"
                ),
            },
            City {
                region: "330200",
                name: "宁波 Ningbo",
                hospital: "H33020001",
                employee_policy: include_str!(
                    "../../../../../deploy/policies/330200-employee.toml"
                ),
            },
        ],
    },
    Province {
        code: "320000",
        name: "江苏 Jiangsu",
        cities: [
            City {
                region: "320100",
                name: "南京 Nanjing",
                hospital: "H32010001",
                employee_policy: include_str!(
                    "../../../../../deploy/policies/320100-employee.toml"
                ),
            },
            City {
                region: "320500",
                name: "苏州 Suzhou",
                hospital: "H32050001",
                employee_policy: include_str!(
                    "../../../../../deploy/policies/320500-employee.toml"
                ),
            },
        ],
    },
];

/// How often every party refreshes the federation directory: the demo starts all of
/// them at once, so the documents reach every node within a few refreshes.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(1);

/// Persons per city; each is treated once in one of the other three cities.
const PERSONS: u16 = 9;

fn cities() -> impl Iterator<Item = (&'static Province, &'static City)> {
    PROVINCES
        .iter()
        .flat_map(|p| p.cities.iter().map(move |c| (p, c)))
}

mod checks;
mod federation;
mod parties;

use checks::*;
use federation::*;
use parties::*;

/// `yidi demo --national`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = args.data_dir.join("national");
    prepare(&dir)?;
    let layout = Layout::new(dir.clone(), args.base_port);
    let files = configure_federation(&layout)?;
    let clients = Clients {
        pki: tokio::task::block_in_place(|| Pki::open(&dir))?,
        layout,
    };
    println!(
        "yidi demo --national: Zhejiang 330000 (Hangzhou 330100, Ningbo 330200), Jiangsu 320000 (Nanjing 320100, Suzhou 320500), national coordinator 000000"
    );
    // Every certificate before anything serves: issuing is blocking file work.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for i in 0..4 {
            clients.admin(i)?;
            clients.hospital(i)?;
        }
        for code in ["330000", "320000", "000000"] {
            clients.coordinator(code)?;
        }
        Ok(())
    })?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks = start(&clients, &files, &rx).await?;
    let outcome = drive(&clients).await;
    if matches!(outcome, Ok(true)) && !args.once {
        println!(
            "\nthe federation keeps running until Ctrl-C: the national coordinator on {}, Zhejiang's on {}, Jiangsu's on {}, the nodes on {} (certificates under {})",
            url(clients.layout.national),
            url(clients.layout.provinces[0]),
            url(clients.layout.provinces[1]),
            clients
                .layout
                .nodes
                .iter()
                .map(|a| url(*a))
                .collect::<Vec<_>>()
                .join(", "),
            dir.join("certs").display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(true);
    for (name, t) in tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(Ok(()))) => {}
            other => tracing::warn!(party = %name, "stopped with {other:?}"),
        }
    }
    let passed = outcome?;
    println!(
        "\nyidi demo --national: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !passed {
        bail!("a CHECK failed (see above)");
    }
    Ok(())
}

/// Loads, settles, clears and checks; Ok(false) when a check failed.
async fn drive(clients: &Clients) -> anyhow::Result<bool> {
    // Wait until every party answers.
    let until = Instant::now() + Duration::from_secs(30);
    for i in 0..4 {
        let mut a = clients.admin(i)?;
        while a.get_node_info(proto::GetNodeInfoRequest {}).await.is_err() {
            if Instant::now() > until {
                bail!("node {i} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_for_directory(&clients.layout).await?;
    println!(
        "every node found all four cities in the federation directory (each province's coordinator publishes its cities; the national coordinator relays them)"
    );
    let mut people = Vec::new();
    for i in 0..4 {
        people.push(load_city(clients, i).await?);
    }
    println!(
        "loaded 4 cities: a policy, a level-3 hospital, 2 catalogue items and {PERSONS} filed employees each"
    );

    let mut settled = Vec::new();
    for (home, persons) in people.iter().enumerate() {
        for (k, (id, treatment)) in persons.iter().enumerate() {
            let k = u16::try_from(k).unwrap_or_default();
            let s = visit(clients, home, *treatment, id, k).await?;
            if s.state != "settled" {
                bail!("{id} at {treatment}: {} ({})", s.state, s.note);
            }
            settled.push((home, *treatment, s));
        }
    }
    let cross = settled.iter().filter(|(_, _, s)| s.cross_province).count();
    println!(
        "settled {} visits through HospitalService: {cross} across the province boundary, {} within a province",
        settled.len(),
        settled.len() - cross
    );
    // A cancellation and a 冲正 of cross-province claims.
    let mut crossing = settled.iter().filter(|(_, _, s)| s.cross_province);
    let (_, t1, s1) = crossing.next().context("a cross-province claim")?;
    let (_, t2, s2) = crossing.next().context("a second cross-province claim")?;
    let (_, tc1) = cities().nth(*t1).context("city")?;
    let (_, tc2) = cities().nth(*t2).context("city")?;
    let cancelled = clients
        .hospital(*t1)?
        .cancel_settlement(proto::CancelSettlementRequest {
            request_id: format!("natdemo-cancel-{}", s1.settlement_id),
            institution_code: tc1.hospital.into(),
            settlement_id: s1.settlement_id.clone(),
            reason: "患者要求撤销".into(),
        })
        .await?
        .into_inner();
    let reversed = clients
        .hospital(*t2)?
        .reverse_request(proto::ReverseRequestRequest {
            request_id: format!("natdemo-reverse-{}", s2.settlement_id),
            institution_code: tc2.hospital.into(),
            original_request_id: format!("natdemo-settle-{}-{}", s2.id_number, tc2.region),
        })
        .await?
        .into_inner();
    println!(
        "cancelled {} (reversal {}), 冲正 of {}: {}",
        s1.settlement_id, cancelled.settlement_id, s2.settlement_id, reversed.outcome
    );
    drained(clients).await?;
    let period = settled
        .first()
        .map(|(_, _, s)| s.period.clone())
        .context("no settlement")?;

    // Level 1: each province clears its own cities' pairs.
    let mut ok = true;
    let mut provincial = Vec::new();
    for p in &PROVINCES {
        let (r, s) = clear(clients, p.code, &period).await?;
        print_statement(
            &format!("provincial statement {} {}", p.code, p.name),
            &s,
            false,
        );
        ok &= check(
            sum_net(&s).is_zero() && statement_digest(&s) == s.digest,
            format!(
                "provincial {} round {}: Σ net = {} digest verified",
                p.code,
                r.round_id,
                money::format(sum_net(&s))
            ),
        );
        ok &= check(
            r.cleared.len() == 2,
            format!(
                "provincial {} round {} SETTLED cleared={}/2",
                p.code,
                r.round_id,
                r.cleared.len()
            ),
        );
        provincial.push(s);
    }
    // Level 2: the national round, province against province.
    let (nr, ns) = clear(clients, NATIONAL.as_str(), &period).await?;
    print_statement("national statement 000000", &ns, false);
    let (into, out) = paid(&ns);
    ok &= check(
        sum_net(&ns).is_zero() && into == out && statement_digest(&ns) == ns.digest,
        format!(
            "national round {}: Σ net = {} paid in {} = paid out {} digest verified",
            nr.round_id,
            money::format(sum_net(&ns)),
            money::format(into),
            money::format(out)
        ),
    );
    ok &= check(
        nr.cleared.len() == 2,
        format!(
            "national round {} SETTLED cleared={}/2",
            nr.round_id,
            nr.cleared.len()
        ),
    );
    for (k, p) in PROVINCES.iter().enumerate() {
        let ps = clients
            .coordinator(p.code)?
            .get_statement(proto::RoundRequest {
                round_id: nr.round_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        print_statement(
            &format!(
                "{} {}: the national round through the provincial account",
                p.code, p.name
            ),
            &ps,
            true,
        );
        ok &= check(
            cities_net(&ps) == net_of(&ns, p.code) && sum_net(&ps).is_zero(),
            format!(
                "{} cities' cross-province nets sum to its national net {} (Σ with 000000 = {})",
                p.code,
                money::format(net_of(&ns, p.code)),
                money::format(sum_net(&ps))
            ),
        );
        for (j, c) in p.cities.iter().enumerate() {
            let ledger = clients
                .admin(k * 2 + j)?
                .get_ledger(proto::GetLedgerRequest {
                    period: period.clone(),
                })
                .await?
                .into_inner();
            let (within, across) = (ledger_net(&ledger, false), ledger_net(&ledger, true));
            ok &= check(
                within == net_of(&provincial[k], c.region),
                format!(
                    "ledger {} within-province net={} provincial statement={}",
                    c.region,
                    money::format(within),
                    money::format(net_of(&provincial[k], c.region))
                ),
            );
            ok &= check(
                across == net_of(&ps, c.region),
                format!(
                    "ledger {} cross-province net={} national-round statement={}",
                    c.region,
                    money::format(across),
                    money::format(net_of(&ps, c.region))
                ),
            );
        }
    }
    Ok(ok)
}

//! A property test at the API edge: random and malformed requests of every RPC of every
//! service (HospitalService, AdminService, PeerService, ClearingParticipant at a node of
//! three in-process cities; CoordinatorService at an in-process coordinator). Requests
//! are generated from the protocol's descriptor set, so a new RPC or field is fuzzed
//! without touching this file: strings empty, short, any Unicode, huge, or a value the
//! federation holds (real ids, codes, dates, amounts); numbers and enums anything; any
//! field missing; repeated fields empty, a few, or past their count limit.
//!
//! Each call must answer without the server panicking, a refusal must carry a specific
//! code (never UNKNOWN, never INTERNAL) and a short message, and the called server's
//! store must be the same after a refusal as before it.

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use bytes::{Buf, BufMut};
use proptest::{
    prelude::*,
    strategy::Union,
    test_runner::{Config, TestCaseError, TestRunner},
};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use prost_types::{
    DescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use yidi_common::proto::FILE_DESCRIPTOR_SET;
use yidi_tests::{
    fixtures::{Desk, VISIT_OPENED, inst, three_cities, wait_outbox_drained},
    harness::TestCoordinator,
};

use super::edge::{db_fingerprint, settled_at_nb};

const HZ: &str = "330100";
const NB: &str = "330200";
/// Cases per service.
const CASES: u32 = 96;
/// Nesting depth of generated messages.
const DEPTH: u32 = 3;
/// The longest refusal message accepted (a value is quoted by 32 characters at most).
const MAX_MESSAGE: usize = 600;

// ------------------------------------------------------------------ raw calls

/// A codec of encoded messages as they are: the request is sent as generated, the
/// answer's bytes are not looked at.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn call(channel: Channel, path: &str, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("client not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_str(path).expect("method path");
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(drop)
}

// ------------------------------------------------------------------ generation

/// (service, method path, input type).
type Method = (String, String, String);

/// Every message of the protocol by full name, and every method as (service, method
/// path, input type).
fn protocol() -> (HashMap<String, DescriptorProto>, Vec<Method>) {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = HashMap::new();
    let mut methods = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for m in &file.message_type {
            messages.insert(format!("{package}.{}", m.name()), m.clone());
        }
        for s in &file.service {
            for m in &s.method {
                methods.push((
                    s.name().to_owned(),
                    format!("/{package}.{}/{}", s.name(), m.name()),
                    m.input_type().trim_start_matches('.').to_owned(),
                ));
            }
        }
    }
    (messages, methods)
}

/// The values strings are drawn from besides random ones: any value the federation
/// holds, and for the fields that gate a request (who calls, which request, which
/// record) mostly a right one, so that requests get past the first check.
struct Values {
    any: Vec<String>,
    by_field: HashMap<&'static str, Vec<String>>,
}

/// Strings: empty, short ASCII, any printable Unicode, huge, or a value the federation
/// knows; for a gating field mostly one of its right values.
fn text(values: &Values, field: &str) -> BoxedStrategy<String> {
    let random = prop_oneof![
        2 => Just(String::new()),
        3 => "[A-Za-z0-9 ._:-]{1,12}",
        2 => "\\PC{1,24}",
        4 => proptest::sample::select(values.any.clone()),
        1 => (1usize..100_000, "\\PC").prop_map(|(n, c)| c.repeat(n)),
    ];
    match (field, values.by_field.get(field)) {
        // A fresh request id each time, or one already used.
        ("request_id", _) => prop_oneof![
            3 => "[a-z0-9-]{1,16}",
            1 => random,
        ]
        .boxed(),
        (_, Some(right)) => prop_oneof![
            3 => proptest::sample::select(right.clone()),
            1 => random,
        ]
        .boxed(),
        _ => random.boxed(),
    }
}

/// Varints: small, any, or a negative 32-bit number (an enum out of range).
fn number() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => 0u64..5,
        1 => any::<u64>(),
        1 => any::<i32>().prop_map(|n| i64::from(n).cast_unsigned()),
    ]
    .boxed()
}

fn entry(number: u32, wire: WireType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(number, wire, &mut out);
    if wire == WireType::LengthDelimited {
        encode_varint(payload.len() as u64, &mut out);
    }
    out.extend_from_slice(payload);
    out
}

/// The encoding of a random message of type `name`.
fn message(
    all: &HashMap<String, DescriptorProto>,
    name: &str,
    values: &Arc<Values>,
    depth: u32,
) -> BoxedStrategy<Vec<u8>> {
    let Some(m) = all.get(name) else {
        return Just(Vec::new()).boxed();
    };
    if depth == 0 {
        return Just(Vec::new()).boxed();
    }
    let mut fields: Vec<BoxedStrategy<Vec<u8>>> = Vec::new();
    for f in &m.field {
        let n = u32::try_from(f.number()).unwrap();
        let one: BoxedStrategy<Vec<u8>> = match f.r#type() {
            Type::String | Type::Bytes => text(values, f.name())
                .prop_map(move |s| entry(n, WireType::LengthDelimited, s.as_bytes()))
                .boxed(),
            Type::Message => {
                let inner = f.type_name().trim_start_matches('.').to_owned();
                message(all, &inner, values, depth - 1)
                    .prop_map(move |b| entry(n, WireType::LengthDelimited, &b))
                    .boxed()
            }
            Type::Double | Type::Fixed64 | Type::Sfixed64 => any::<[u8; 8]>()
                .prop_map(move |b| entry(n, WireType::SixtyFourBit, &b))
                .boxed(),
            Type::Float | Type::Fixed32 | Type::Sfixed32 => any::<[u8; 4]>()
                .prop_map(move |b| entry(n, WireType::ThirtyTwoBit, &b))
                .boxed(),
            _ => number()
                .prop_map(move |v| {
                    let mut b = Vec::new();
                    encode_varint(v, &mut b);
                    entry(n, WireType::Varint, &b)
                })
                .boxed(),
        };
        let field = if f.label() == Label::Repeated && depth == DEPTH {
            // Past every count limit, at the top only and with small elements: a list
            // of lists of huge values would be gigabytes.
            prop_oneof![
                6 => proptest::collection::vec(one.clone(), 0..4).prop_map(|v| v.concat()),
                1 => one.prop_map(|e| if e.len() <= 1024 { e.repeat(2_001) } else { e }),
            ]
            .boxed()
        } else if f.label() == Label::Repeated {
            proptest::collection::vec(one, 0..3)
                .prop_map(|v| v.concat())
                .boxed()
        } else {
            one
        };
        fields.push(
            proptest::option::weighted(0.6, field)
                .prop_map(Option::unwrap_or_default)
                .boxed(),
        );
    }
    fields.prop_map(|parts| parts.concat()).boxed()
}

/// Any request of any method of `service`: (method path, encoded request).
fn requests(
    service: &str,
    all: &HashMap<String, DescriptorProto>,
    methods: &[Method],
    values: &Arc<Values>,
) -> Union<BoxedStrategy<(String, Vec<u8>)>> {
    let arms: Vec<BoxedStrategy<(String, Vec<u8>)>> = methods
        .iter()
        .filter(|(s, _, _)| s == service)
        .map(|(_, path, input)| {
            let path = path.clone();
            message(all, input, values, DEPTH)
                .prop_map(move |b| (path.clone(), b))
                .boxed()
        })
        .collect();
    assert!(!arms.is_empty(), "no methods of {service}");
    Union::new(arms)
}

// ------------------------------------------------------------------ the test

/// The tables of a store that a refusal may change: none, except that the home node
/// records every peer access in its audit log, refusals included (after the answer, so
/// an entry may land during a later call).
fn audited(service: &str) -> &'static [&'static str] {
    if service == "PeerService" {
        &["audit_log", "sqlite_sequence"]
    } else {
        &[]
    }
}

/// Fuzzes `service` at `channel`, checking `db` after each refusal; `quiesce` runs after
/// each accepted call (background work it started must finish before the next check).
fn fuzz<Q, F>(
    rt: &tokio::runtime::Runtime,
    service: &str,
    channel: &Channel,
    db: &std::path::Path,
    values: &Arc<Values>,
    quiesce: Q,
) where
    Q: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let (all, methods) = protocol();
    let strategy = requests(service, &all, &methods, values);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        // Each step of shrinking is a call; a failure is reported after at most these.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let fingerprint = || {
        let mut f = db_fingerprint(db);
        f.retain(|t, _| !audited(service).contains(&t.as_str()));
        f
    };
    let result = runner.run(&strategy, |(path, body)| {
        let before = fingerprint();
        let answer = rt.block_on(call(channel.clone(), &path, body));
        match answer {
            Ok(()) => {
                rt.block_on(quiesce());
                Ok(())
            }
            Err(e) => {
                prop_assert!(
                    !matches!(e.code(), Code::Unknown | Code::Internal),
                    "{path}: {:?} {:?}",
                    e.code(),
                    e.message()
                );
                prop_assert!(
                    !e.message().is_empty() && e.message().len() <= MAX_MESSAGE,
                    "{path}: a message of {} bytes: {:.200}",
                    e.message().len(),
                    e.message()
                );
                let after = fingerprint();
                if after != before {
                    let changed: Vec<&String> = after
                        .iter()
                        .filter(|(t, v)| before.get(*t) != Some(v))
                        .map(|(t, _)| t)
                        .collect();
                    return Err(TestCaseError::fail(format!(
                        "{path} was refused ({:?} {}) but the store changed: {changed:?}",
                        e.code(),
                        e.message()
                    )));
                }
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        panic!("{service}: {e}");
    }
}

#[test]
fn random_requests_of_every_rpc_are_refused_specifically_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fed, settled, reversal) = rt.block_on(async {
        let fed = three_cities(dir.path(), |_, _| {}).await;
        let mut desk = Desk::at(fed.node(NB), inst::NB_H3).await;
        let s = settled_at_nb(&fed, &mut desk).await;
        let r = desk.cancel("cancel-1", &s.settlement_id, "").await.unwrap();
        wait_outbox_drained(fed.node(NB), Duration::from_secs(10)).await;
        (fed, s, r)
    });
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let by_field = HashMap::from([
        ("institution_code", own(&[inst::NB_H3])),
        ("home_region", own(&[HZ, NB])),
        ("card_region", own(&[HZ])),
        ("treatment_region", own(&[NB, HZ])),
        ("counterparty", own(&[HZ, "330300"])),
        ("id_number", own(&[&settled.id_number])),
        ("visit_id", own(&[&settled.visit_id])),
        (
            "settlement_id",
            own(&[&settled.settlement_id, &reversal.settlement_id]),
        ),
        ("original_request_id", own(&["settle-1", "cancel-1"])),
        ("admitted_at", own(&[VISIT_OPENED])),
        ("discharged_at", own(&["2026-03-20T10:00:00+08:00"])),
        ("item_code", own(&["NB-A"])),
        ("service_date", own(&["2026-03-10"])),
        ("from_date", own(&["2026-01-01"])),
        ("to_date", own(&["2026-12-31"])),
        ("period", own(&["2026-03"])),
        ("amount", own(&["1.00", "2000.00"])),
        ("quantity", own(&["1", "0.5"])),
        ("unit_price", own(&["1.00", "2000.00"])),
    ]);
    let values = Arc::new(Values {
        any: own(&[
            inst::NB_H3,
            inst::HZ_H3,
            HZ,
            NB,
            "330300",
            "330000",
            "NB-A",
            "HZ-A",
            "1",
            "2026-03-10",
            "2026-03",
            VISIT_OPENED,
            "1.00",
            "2000.00",
            "-5.00",
            "0.85",
            "settle-1",
            "cancel-1",
            "receivable",
            "payable",
            "reserve",
            &settled.settlement_id,
            &settled.visit_id,
            &settled.id_number,
            &reversal.settlement_id,
        ]),
        by_field,
    });
    let nb = fed.node(NB);
    let channel = rt.block_on(nb.channel());
    let db = nb.data_dir.join("node.db");
    let quiesce = || wait_outbox_drained(nb, Duration::from_secs(10));
    // PeerService last: its refusals' audit entries are written after the answer, and
    // may land while a later service's refusal is checked.
    for service in [
        "HospitalService",
        "AdminService",
        "ClearingParticipant",
        "PeerService",
    ] {
        fuzz(&rt, service, &channel, &db, &values, quiesce);
    }

    let coord = rt.block_on(TestCoordinator::start(
        dir.path().join("coordinator"),
        fed.peers_file.clone(),
    ));
    let channel = rt.block_on(async {
        yidi_node::tls::endpoint(&format!("http://{}", coord.addr), None)
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    // An answer means the coordinator's store is open and migrated.
    rt.block_on(async {
        coord
            .client()
            .await
            .list_rounds(yidi_common::proto::ListRoundsRequest {})
            .await
            .unwrap()
    });
    let db = coord.data_dir.join("coordinator.db");
    fuzz(
        &rt,
        "CoordinatorService",
        &channel,
        &db,
        &values,
        || async {},
    );
    rt.block_on(async {
        coord.stop().await;
        drop(fed);
    });
}

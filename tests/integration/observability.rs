//! What a process exposes to its operator's tools: server reflection (v1 and v1alpha)
//! listing exactly the services it serves plus health, and the logs of a real `yidi
//! node` written to a file — no colour codes, JSON fields as plain values — with its
//! `/metrics` (process families, build info, documented counters at 0) before any
//! traffic.

use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};
use yidi_tests::{
    harness::{TestCoordinator, TestNode},
    process::{NodeProcess, free_port},
};

/// The services listed by reflection v1 at `ch`, sorted.
async fn list_v1(ch: Channel) -> Vec<String> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection v1")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The same with reflection v1alpha, and whether it describes `symbol`.
async fn list_v1alpha(ch: Channel, symbol: &str) -> (Vec<String>, bool) {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = |m| v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([
            req(MessageRequest::ListServices(String::new())),
            req(MessageRequest::FileContainingSymbol(symbol.to_owned())),
        ]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let first = answers.message().await.expect("answer").expect("list");
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("not a service list: {first:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let second = answers.message().await.expect("answer").expect("file");
    let described = matches!(
        second.message_response,
        Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty()
    );
    (names, described)
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_what_each_process_serves_and_health() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start("330100", tmp.path().join("330100")).await;
    let want_node = sorted(&[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "yidi.v1.AdminService",
        "yidi.v1.ClearingParticipant",
        "yidi.v1.HospitalService",
        "yidi.v1.PeerService",
    ]);
    assert_eq!(list_v1(node.channel().await).await, want_node);
    let (names, health) = list_v1alpha(node.channel().await, "grpc.health.v1.Health").await;
    assert_eq!(names, want_node);
    assert!(health, "the health service is described");

    let peers = tmp.path().join("peers.toml");
    std::fs::write(&peers, "").expect("peers file");
    let coord = TestCoordinator::start(tmp.path().join("330000"), peers).await;
    let ch = || async {
        yidi_node::tls::endpoint(&format!("http://{}", coord.addr), None)
            .expect("url")
            .connect()
            .await
            .expect("connect")
    };
    let want_coord = sorted(&[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "yidi.v1.CoordinatorService",
    ]);
    assert_eq!(list_v1(ch().await).await, want_coord);
    let (names, described) = list_v1alpha(ch().await, "yidi.v1.CoordinatorService").await;
    assert_eq!(names, want_coord);
    assert!(described);
    coord.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logging_to_a_file_has_no_colour_codes_and_plain_json_values() {
    for json in [false, true] {
        let metrics_port = free_port();
        let mut extra = vec![
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        if json {
            extra.extend(["--log-format".to_owned(), "json".to_owned()]);
        }
        let node =
            tokio::task::block_in_place(|| NodeProcess::start_with("330100", free_port(), extra));
        let addr = format!("127.0.0.1:{metrics_port}");
        // The metrics port is bound before the node answers gRPC, which start_with
        // waited for.
        let body = yidi_node::metrics::scrape(addr.parse().expect("addr"))
            .await
            .expect("scrape");
        // Every documented family before any traffic, process families and build info.
        for series in [
            r#"yidi_settlements_total{region="330100",op="settle",kind="outpatient",outcome="settled",code="ok"} 0"#,
            r#"yidi_metrics_scrape_errors_total{region="330100"} 0"#,
            r#"yidi_store_transactions_total{region="330100"} "#,
            r#"yidi_outbox_depth{region="330100"} 0"#,
            r#"yidi_build_info{region="330100",version=""#,
            r#"process_cpu_seconds_total{region="330100"} "#,
            r#"process_resident_memory_bytes{region="330100"} "#,
            r#"process_open_fds{region="330100"} "#,
            r#"process_start_time_seconds{region="330100"} "#,
        ] {
            assert!(body.contains(series), "{series} missing from\n{body}");
        }

        // The metrics line is written before the listener accepts, so it is in the log.
        let log = node.log();
        assert!(log.contains("metrics serving on /metrics"), "{log}");
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file:\n{log}"
        );
        if json {
            let line = log
                .lines()
                .find(|l| l.contains("metrics serving"))
                .expect("metrics line");
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(v["fields"]["addr"], addr.as_str(), "{line}");
        } else {
            assert!(log.contains(&format!("addr={addr}")), "{log}");
        }
    }
}

//! The NHSA gateway end to end: three cities over mutual TLS, Ningbo's node serving the
//! gateway on its own HTTPS listener, an HIS speaking plain HTTP/1.1 JSON with its
//! institution certificate (hyper's client over rustls, nothing of yidi's). Each
//! transaction's answer is checked against the node's records and against the same
//! operation made over gRPC.

use std::{net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use yidi_common::proto::{
    self, InsuranceType as It, PersonType as Pt, hospital_service_client::HospitalServiceClient,
};
use yidi_node::identity::node_server_name;
use yidi_tests::{
    fixtures::{
        Desk, fee_line, id_number, inst, institution as register, person, publish_policies,
        standard_items,
    },
    harness::Federation,
    pki::{self, Party, Pki, institution},
};

pub(super) const HZ: &str = "330100";
pub(super) const NB: &str = "330200";
const WZ: &str = "330300";

/// An HIS: HTTPS with its institution certificate, one connection per request (as
/// the simplest HIS HTTP stacks do).
pub(super) struct His {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    code: String,
    seq: u32,
    /// The provincial gateway's paasid and secret: every request is signed with a fresh
    /// nonce (x-tif-* headers), the last headers kept in `signed` to replay.
    pub(super) tif: Option<yidi_node::nhsa::TifKeys>,
    pub(super) signed: std::sync::Mutex<Vec<(String, String)>>,
}

impl His {
    pub(super) fn new(addr: SocketAddr, party: &Party, code: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&party.ca).expect("ca") {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&party.cert)
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&party.key).expect("key");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
        Self {
            addr,
            tls: Arc::new(tls),
            code: code.to_owned(),
            seq: 0,
            tif: None,
            signed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fresh msgid: institution code + time + sequence.
    pub(super) fn msgid(&mut self) -> String {
        self.seq += 1;
        format!(
            "{}{}{:04}",
            self.code,
            Utc::now().format("%Y%m%d%H%M%S"),
            self.seq
        )
    }

    /// The envelope of `infno` with `input`.
    pub(super) fn envelope(&self, infno: &str, msgid: &str, insuplc: &str, input: Value) -> Value {
        json!({
            "infno": infno, "msgid": msgid, "mdtrtarea_admvs": NB, "insuplc_admdvs": insuplc,
            "recer_sys_code": "YBXT", "dev_no": "", "dev_safe_info": "", "cainfo": "", "signtype": "",
            "infver": "V1.0", "opter_type": "1", "opter": "1001", "opter_name": "王丽",
            "inf_time": Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            "fixmedins_code": self.code, "fixmedins_name": "宁波测试医院", "sign_no": "",
            "input": input,
        })
    }

    /// The x-tif headers of one request when `tif` is set (remembered for replay
    /// tests), none otherwise.
    fn tif_headers(&self) -> Vec<(String, String)> {
        let Some(keys) = &self.tif else {
            return Vec::new();
        };
        let ts = Utc::now().timestamp().to_string();
        let nonce = format!("{}n{}", self.code, uuid_like());
        let sig = yidi_node::nhsa::tif::signature(&ts, &keys.secret, &nonce);
        let headers = vec![
            ("x-tif-paasid".to_owned(), keys.paasid.clone()),
            ("x-tif-timestamp".to_owned(), ts),
            ("x-tif-nonce".to_owned(), nonce),
            ("x-tif-signature".to_owned(), sig),
        ];
        *self.signed.lock().expect("signed") = headers.clone();
        headers
    }

    /// POSTs raw bytes to `path` (signed when `tif` is set); the HTTP status and the
    /// body as JSON.
    pub(super) async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let headers = self.tif_headers();
        self.post_with(path, body, &headers).await
    }

    /// POSTs raw bytes to `path` with these extra headers; the status and the body as JSON.
    pub(super) async fn post_with(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> (u16, Value) {
        let (status, _, bytes) = self.post_bytes_with(path, body, headers).await;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, v)
    }

    /// POSTs raw bytes to `path` (signed when `tif` is set); the HTTP status, the
    /// content type and the body.
    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, String, Bytes) {
        let headers = self.tif_headers();
        self.post_bytes_with(path, body, &headers).await
    }

    /// POSTs raw bytes to `path` with these extra headers; the HTTP status, the
    /// content type and the body.
    async fn post_bytes_with(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> (u16, String, Bytes) {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect gateway");
        let name = ServerName::try_from(node_server_name(NB.parse().expect("region")))
            .expect("server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the gateway");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("http1 handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::post(path)
            .header("host", "yidi")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, kind, bytes)
    }

    /// Sends one transaction; the answer envelope.
    pub(super) async fn call(
        &mut self,
        infno: &str,
        msgid: &str,
        insuplc: &str,
        input: Value,
    ) -> Value {
        let env = self.envelope(infno, msgid, insuplc, input);
        let (status, v) = self
            .post_raw(
                "/fsi/api/rsfComIfsService/callService",
                serde_json::to_vec(&env).expect("json"),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Sends one transaction that must succeed; its `output`.
    pub(super) async fn ok(&mut self, infno: &str, insuplc: &str, input: Value) -> (String, Value) {
        let msgid = self.msgid();
        let v = self.call(infno, &msgid, insuplc, input).await;
        assert_eq!(v["infcode"], json!(0), "{infno}: {v}");
        assert_eq!(v["inf_refmsgid"].as_str().map(str::len), Some(30), "{v}");
        (msgid, v["output"].clone())
    }
}

/// A nonce unique in this process.
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{}{:08}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `infcode` -1 whose err_msg names `field` (and carries Chinese and English).
pub(super) fn refused(v: &Value, field: &str) -> String {
    assert_eq!(v["infcode"], json!(-1), "{v}");
    assert!(v["output"].is_null(), "{v}");
    let msg = v["err_msg"].as_str().expect("err_msg").to_owned();
    assert!(msg.contains(field), "err_msg names {field}: {msg}");
    assert!(msg.contains('；'), "Chinese then English: {msg}");
    msg
}

/// A JSON amount's text (two decimals).
pub(super) fn amt(v: &Value) -> String {
    assert!(v.is_number(), "amount is a JSON number: {v}");
    v.to_string()
}

pub(super) fn cst_now_minus_hours(h: i64) -> String {
    (Utc::now() - chrono::Duration::hours(h))
        .with_timezone(&yidi_common::period::cst())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub(super) struct World {
    pub(super) fed: Federation,
    pub(super) pki: Pki,
    pub(super) gateway: SocketAddr,
    /// Ningbo's metrics.
    pub(super) metrics: SocketAddr,
    /// Two Hangzhou retirees with the same profile, filed for Ningbo: one settles
    /// through the gateway, its twin over gRPC.
    pub(super) ids: (String, String),
}

pub(super) async fn world(root: &Path) -> World {
    world_with(root, |_| {}).await
}

/// The world, with Ningbo's config adjusted further (test hooks, x-tif keys).
pub(super) async fn world_with(
    root: &Path,
    adjust: impl Fn(&mut yidi_node::config::NodeConfig),
) -> World {
    use proto::{HospitalLevel as Hl, InstitutionKind as Ik};
    let pki = Pki::new(&root.join("pki"));
    // Held from here until Ningbo serves on them: no other process can take them.
    let prebound = yidi_node::prebound::Prebound::default();
    let (gateway, metrics) = (prebound.loopback(), prebound.loopback());
    let fed = pki::federation(root, &pki, &[HZ, NB, WZ], |r, c| {
        if r == NB {
            c.nhsa_listen = Some(gateway);
            c.metrics_listen = Some(metrics);
            c.prebound = prebound.clone();
            adjust(c);
        }
    })
    .await;
    for n in &fed.nodes {
        publish_policies(n).await;
    }
    register(fed.node(NB), inst::NB_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    register(fed.node(HZ), inst::HZ_H3, Ik::Hospital, Hl::HospitalLevel3).await;
    standard_items(fed.node(NB), "NB").await;
    let mut ids = Vec::new();
    for seq in [7, 8] {
        let id = person(
            fed.node(HZ),
            &id_number(HZ, "1960-05-05", seq),
            It::Employee,
            Pt::Retired,
            "500.00",
            false,
        )
        .await;
        yidi_tests::fixtures::filing(
            fed.node(HZ),
            &id,
            proto::FilingType::ResettledRetiree,
            NB,
            &[],
            "2026-01-01",
        )
        .await;
        ids.push(id);
    }
    World {
        fed,
        pki,
        gateway,
        metrics,
        ids: (ids[0].clone(), ids[1].clone()),
    }
}

impl World {
    pub(super) fn his(&self, code: &str) -> His {
        let party = self.pki.issue(&institution(NB, code));
        His::new(self.gateway, &party, code)
    }

    pub(super) async fn desk(&self, code: &str) -> Desk {
        let tls = self.pki.client(&institution(NB, code));
        Desk {
            client: HospitalServiceClient::new(pki::channel(self.fed.node(NB), tls)),
            inst: code.to_owned(),
        }
    }
}

/// 2201: an outpatient registration of `psn` two hours ago, visit number `no`; the
/// visit's mdtrt_id.
pub(super) async fn outpatient_visit(his: &mut His, psn: &str, no: &str) -> String {
    let (_, out) = his
        .ok(
            "2201",
            HZ,
            json!({"data": {"psn_no": psn, "insutype": "310", "begntime": cst_now_minus_hours(2),
            "mdtrt_cert_type": "02", "mdtrt_cert_no": psn, "ipt_otp_no": no}}),
        )
        .await;
    out["data"]["mdtrt_id"]
        .as_str()
        .expect("mdtrt_id")
        .to_owned()
}

/// 2401: an admission of `psn` three hours ago for pneumonia, inpatient number
/// `ipt_no`; the stay's mdtrt_id.
pub(super) async fn admit(his: &mut His, psn: &str, ipt_no: &str) -> String {
    let (_, out) = his
        .ok("2401", HZ, json!({
            "mdtrtinfo": {"psn_no": psn, "insutype": "310", "begntime": cst_now_minus_hours(3),
                "mdtrt_cert_type": "02", "mdtrt_cert_no": psn, "med_type": "21", "ipt_no": ipt_no,
                "atddr_no": "D1", "chfpdr_name": "李明", "adm_diag_dscr": "肺炎", "adm_dept_codg": "HX",
                "adm_dept_name": "呼吸科", "adm_bed": "12", "dscg_maindiag_code": "J18.9", "dscg_maindiag_name": "肺炎"},
            "diseinfo": [{"psn_no": psn, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": 1, "diag_code": "J18.9",
                "diag_name": "肺炎", "diag_dept": "呼吸科", "dise_dor_no": "D1", "dise_dor_name": "李明",
                "diag_time": cst_now_minus_hours(3)}]
        }))
        .await;
    out["data"]["mdtrt_id"]
        .as_str()
        .expect("mdtrt_id")
        .to_owned()
}

/// The three lines of the outpatient bill (68.00), amounts written as an HIS might.
pub(super) fn feedetail(visit: &str, psn: &str) -> Value {
    let t = cst_now_minus_hours(1);
    json!([
        {"feedetl_sn": "F1", "mdtrt_id": visit, "psn_no": psn, "chrg_bchno": "B1", "rx_circ_flag": "0",
         "fee_ocur_time": t, "med_list_codg": "NB-A", "medins_list_codg": "ZL1",
         "det_item_fee_sumamt": 25, "cnt": 1, "pric": 25.0,
         "bilg_dept_codg": "NK", "bilg_dept_name": "内科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明", "hosp_appr_flag": "1"},
        {"feedetl_sn": "F2", "mdtrt_id": visit, "psn_no": psn, "chrg_bchno": "B1", "rx_circ_flag": "0",
         "fee_ocur_time": t, "med_list_codg": "NB-B", "medins_list_codg": "YP1",
         "det_item_fee_sumamt": 25.00, "cnt": 2, "pric": 12.500000,
         "bilg_dept_codg": "NK", "bilg_dept_name": "内科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明", "hosp_appr_flag": "1"},
        {"feedetl_sn": "F3", "mdtrt_id": visit, "psn_no": psn, "chrg_bchno": "B1", "rx_circ_flag": "0",
         "fee_ocur_time": t, "med_list_codg": "NB-C", "medins_list_codg": "ZL2",
         "det_item_fee_sumamt": 1.8e1, "cnt": 1.0, "pric": 18,
         "bilg_dept_codg": "NK", "bilg_dept_name": "内科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明", "hosp_appr_flag": "1"}
    ])
}

/// Every settlement of NB_H3 around today.
pub(super) fn list_all() -> proto::ListSettlementsRequest {
    let today = yidi_common::period::today();
    proto::ListSettlementsRequest {
        institution_code: inst::NB_H3.into(),
        from_date: (today - chrono::Days::new(1)).to_string(),
        to_date: (today + chrono::Days::new(1)).to_string(),
        page: None,
    }
}

/// The split fields of `setlinfo` equal a gRPC split to the fen.
fn assert_same_split(setlinfo: &Value, split: &proto::Split) {
    for (name, grpc) in [
        ("medfee_sumamt", &split.medfee_sumamt),
        ("fulamt_ownpay_amt", &split.fulamt_ownpay_amt),
        ("overlmt_selfpay", &split.overlmt_selfpay),
        ("preselfpay_amt", &split.preselfpay_amt),
        ("inscp_scp_amt", &split.inscp_scp_amt),
        ("act_pay_dedc", &split.act_pay_dedc),
        ("hifp_pay", &split.hifp_pay),
        ("hifmi_pay", &split.hifmi_pay),
        ("hifob_pay", &split.hifob_pay),
        ("cvlserv_pay", &split.cvlserv_pay),
        ("maf_pay", &split.maf_pay),
        ("fund_pay_sumamt", &split.fund_pay_sumamt),
        ("hosp_part_amt", &split.hosp_part_amt),
        ("psn_part_amt", &split.psn_part_amt),
        ("acct_pay", &split.acct_pay),
        ("psn_cash_pay", &split.psn_cash_pay),
    ] {
        assert_eq!(amt(&setlinfo[name]), *grpc, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpatient_day_through_the_gateway_matches_grpc_to_the_fen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, twin) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);

    // 9001 sign-in.
    let (_, out) = his
        .ok(
            "9001",
            "",
            json!({"signIn": {"opter_no": "1001", "mac": "00-E0-70-64-C3-D2", "ip": "10.0.0.8"}}),
        )
        .await;
    assert_eq!(
        out["signinoutb"]["sign_no"].as_str().map(str::len),
        Some(30),
        "{out}"
    );

    // 1101 by ID number: the home region to put in insuplc_admdvs.
    let (_, out) = his
        .ok("1101", "", json!({"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": id, "psn_cert_type": "01", "certno": id}}))
        .await;
    assert_eq!(out["baseinfo"]["psn_no"], json!(id), "{out}");
    assert_eq!(out["baseinfo"]["brdy"], json!("1960-05-05"));
    let name = out["baseinfo"]["psn_name"].clone();
    assert_eq!(
        name,
        json!(format!("测试{}", &id[14..])),
        "the home register's name"
    );
    assert_eq!(out["insuinfo"][0]["insuplc_admdvs"], json!(HZ));
    assert_eq!(out["insuinfo"][0]["insutype"], json!("310"));
    assert_eq!(out["insuinfo"][0]["psn_type"], json!("1201"));
    assert_eq!(amt(&out["insuinfo"][0]["balc"]), "500.00");

    // 2201 registration.
    let (_, out) = his
        .ok(
            "2201",
            HZ,
            json!({"data": {"psn_no": id, "insutype": "310", "begntime": cst_now_minus_hours(2),
            "mdtrt_cert_type": "02", "mdtrt_cert_no": id, "ipt_otp_no": "MZ0001", "atddr_no": "D1",
            "dr_name": "李明", "dept_code": "NK", "dept_name": "内科", "caty": "A03"}}),
        )
        .await;
    let visit = out["data"]["mdtrt_id"]
        .as_str()
        .expect("mdtrt_id")
        .to_owned();
    assert_eq!(out["data"]["ipt_otp_no"], json!("MZ0001"));

    // 2204 fee upload: classes and self-pay ratios per line.
    let (_, out) = his
        .ok("2204", HZ, json!({"feedetail": feedetail(&visit, &id)}))
        .await;
    let result = out["result"].as_array().expect("result[]");
    assert_eq!(result.len(), 3);
    let lv: Vec<&str> = result
        .iter()
        .map(|r| r["chrgitm_lv"].as_str().unwrap())
        .collect();
    assert_eq!(lv, ["01", "02", "03"]);
    assert_eq!(amt(&result[1]["pric"]), "12.50");
    assert_eq!(result[1]["selfpay_prop"].to_string(), "0.10");
    assert_eq!(amt(&result[2]["det_item_fee_sumamt"]), "18.00");

    // The twin's identical visit over gRPC.
    let mut desk = w.desk(inst::NB_H3).await;
    let tv = desk
        .open(
            "twin-open",
            &twin,
            HZ,
            proto::VisitKind::Outpatient,
            &chrono::Utc::now().to_rfc3339(),
        )
        .await
        .expect("twin visit");
    desk.fees(
        "twin-fees",
        &tv.visit_id,
        vec![
            fee_line("F1", "NB-A", "1", "25.00", "25.00"),
            fee_line("F2", "NB-B", "2", "12.50", "25.00"),
            fee_line("F3", "NB-C", "1", "18.00", "18.00"),
        ],
    )
    .await
    .expect("twin fees");

    // 2206 pre-settlement = gRPC PreSettle.
    let settle_input = |amount: Value, acct: &str| {
        json!({"data": {"psn_no": id, "mdtrt_cert_type": "02", "mdtrt_cert_no": id, "med_type": "11",
            "medfee_sumamt": amount, "psn_setlway": "01", "mdtrt_id": visit, "chrg_bchno": "B1",
            "acct_used_flag": acct, "insutype": "310"}})
    };
    let (_, pre) = his.ok("2206", HZ, settle_input(json!(68), "1")).await;
    let grpc_pre = desk
        .pre_settle(&tv.visit_id, true)
        .await
        .expect("twin pre-settle");
    assert_same_split(&pre["setlinfo"], grpc_pre.split.as_ref().expect("split"));
    assert!(
        pre["setlinfo"].get("setl_id").is_none(),
        "no setl_id before settling"
    );
    assert_eq!(amt(&pre["setlinfo"]["medfee_sumamt"]), "68.00");

    // 2206 with a total that is not the bill's: refused, naming the field.
    let msgid = his.msgid();
    let v = his
        .call("2206", &msgid, HZ, settle_input(json!(68.01), "1"))
        .await;
    let msg = refused(&v, "medfee_sumamt");
    assert!(msg.contains("68.00") && msg.contains("不一致"), "{msg}");

    // 2207 settlement = gRPC Settle.
    let settle_msgid = his.msgid();
    let v = his
        .call("2207", &settle_msgid, HZ, settle_input(json!(68.0), "1"))
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    let setl = v["output"]["setlinfo"].clone();
    let setl_id = setl["setl_id"].as_str().expect("setl_id").to_owned();
    let grpc = desk
        .settle("twin-settle", &tv.visit_id, true)
        .await
        .expect("twin settle");
    let split = grpc.split.clone().expect("split");
    assert_same_split(&setl, &split);
    assert_eq!(setl["medins_setl_id"], json!(settle_msgid));
    // The name the home node gave with its eligibility answer at registration.
    assert_eq!(setl["psn_name"], name, "{setl}");
    assert_eq!(setl["clr_type"], json!("11"));
    assert_eq!(setl["clr_optins"], json!(NB));
    let detail = v["output"]["setldetail"].as_array().expect("setldetail");
    assert_eq!(detail.len(), split.funds.len());
    let codes: std::collections::HashMap<&str, &str> = [
        ("hifp", "310100"),
        ("acct", "310200"),
        ("hifob", "330100"),
        ("cvlserv", "320100"),
        ("maf", "610100"),
    ]
    .into_iter()
    .collect();
    for (row, fund) in detail.iter().zip(&split.funds) {
        assert_eq!(
            row["fund_pay_type"],
            json!(codes[fund.fund.as_str()]),
            "{row}"
        );
        assert_eq!(amt(&row["fund_payamt"]), fund.amount, "{row}");
    }
    // The same message again: the original answer, nothing new.
    let before = desk
        .client
        .list_settlements(list_all())
        .await
        .expect("list")
        .into_inner()
        .settlements
        .len();
    let again = his
        .call("2207", &settle_msgid, HZ, settle_input(json!(68.0), "1"))
        .await;
    assert_eq!(
        again["output"], v["output"],
        "same msgid, same input: the original answer"
    );
    // The same msgid with a different input: refused, nothing changes.
    let conflict = his
        .call("2207", &settle_msgid, HZ, settle_input(json!(68.0), "0"))
        .await;
    refused(&conflict, "msgid");
    let after = desk
        .client
        .list_settlements(list_all())
        .await
        .expect("list")
        .into_inner()
        .settlements;
    assert_eq!(
        after.len(),
        before,
        "nothing recorded by the repeat or the conflict"
    );
    let mine = after
        .iter()
        .find(|s| s.settlement_id == setl_id)
        .expect("recorded");
    assert_eq!(mine.state, "settled");
    assert_eq!(
        mine.split.as_ref().expect("split").psn_cash_pay,
        amt(&setl["psn_cash_pay"])
    );

    // 2208 cancel: the reversal record, negated, with both cash spellings.
    let (_, out) = his
        .ok(
            "2208",
            HZ,
            json!({"data": {"setl_id": setl_id, "mdtrt_id": visit, "psn_no": id}}),
        )
        .await;
    let rev = &out["setlinfo"];
    assert_ne!(rev["setl_id"], json!(setl_id), "a new settlement id");
    assert_eq!(amt(&rev["medfee_sumamt"]), "-68.00");
    let negated = -split
        .fund_pay_sumamt
        .parse::<rust_decimal::Decimal>()
        .expect("decimal");
    assert_eq!(
        amt(&rev["fund_pay_sumamt"]),
        yidi_common::money::format(negated)
    );
    assert_eq!(rev["pdn_cash_pay"], rev["psn_cash_pay"]);
    assert_eq!(rev["refd_setl_flag"], json!("1"));
    let rdetail = out["setldetail"].as_array().expect("setldetail");
    assert_eq!(rdetail.len(), detail.len(), "the reversal's fund rows");
    for (r, d) in rdetail.iter().zip(detail) {
        assert_eq!(r["fund_pay_type"], d["fund_pay_type"]);
        assert_eq!(
            amt(&r["fund_payamt"]),
            format!("-{}", amt(&d["fund_payamt"]))
        );
    }
    let got = desk
        .client
        .get_settlement(proto::GetSettlementRequest {
            institution_code: inst::NB_H3.into(),
            settlement_id: setl_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refusals_name_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, _) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let visit = outpatient_visit(&mut his, &id, "MZ0002").await;

    // fixmedins_code other than the certificate's institution.
    let msgid = his.msgid();
    let mut env = his.envelope(
        "2204",
        &msgid,
        HZ,
        json!({"feedetail": feedetail(&visit, &id)}),
    );
    env["fixmedins_code"] = json!(inst::NB_H1);
    let (_, v) = his
        .post_raw(
            "/fsi/api/rsfComIfsService/callService",
            serde_json::to_vec(&env).unwrap(),
        )
        .await;
    let msg = refused(&v, "fixmedins_code");
    assert!(msg.contains(inst::NB_H3), "{msg}");

    // Unknown infno.
    let msgid = his.msgid();
    let v = his.call("9999", &msgid, "", json!({})).await;
    refused(&v, "infno");

    // Malformed envelopes: not JSON, no msgid, infno differing from the path's.
    let (status, v) = his
        .post_raw(
            "/fsi/api/rsfComIfsService/callService",
            b"{\"infno\":".to_vec(),
        )
        .await;
    assert_eq!(status, 200);
    refused(&v, "JSON");
    let mut env = his.envelope("2201", "x", HZ, json!({}));
    env.as_object_mut().unwrap().remove("msgid");
    let (_, v) = his
        .post_raw(
            "/fsi/api/rsfComIfsService/callService",
            serde_json::to_vec(&env).unwrap(),
        )
        .await;
    refused(&v, "msgid");
    let env = his.envelope("2204", "M-path-1", HZ, json!({}));
    let (_, v) = his
        .post_raw(
            "/fsi/api/rsfComIfsService/callService/2207",
            serde_json::to_vec(&env).unwrap(),
        )
        .await;
    refused(&v, "infno");
    let (status, v) = his.post_raw("/elsewhere", b"{}".to_vec()).await;
    assert_eq!(status, 404);
    refused(&v, "/fsi/api/rsfComIfsService/callService");

    // Bad input: a price in thousandths of a yuan, a missing node, a missing person region.
    let mut lines = feedetail(&visit, &id);
    lines[0]["pric"] = json!(25.005);
    let msgid = his.msgid();
    let v = his
        .call("2204", &msgid, HZ, json!({"feedetail": lines}))
        .await;
    let msg = refused(&v, "feedetail[0].pric");
    assert!(msg.contains("单价"), "{msg}");
    let msgid = his.msgid();
    let v = his.call("2206", &msgid, HZ, json!({})).await;
    refused(&v, "input.data");
    let msgid = his.msgid();
    let v = his
        .call("2201", &msgid, "", json!({"data": {"psn_no": id, "begntime": cst_now_minus_hours(1), "ipt_otp_no": "MZ0003"}}))
        .await;
    refused(&v, "insuplc_admdvs");
    // A domain refusal in NHSA names: an item not in the catalogue.
    let mut lines = feedetail(&visit, &id);
    lines[1]["med_list_codg"] = json!("NB-NOPE");
    let msgid = his.msgid();
    let v = his
        .call("2204", &msgid, HZ, json!({"feedetail": lines}))
        .await;
    let msg = refused(&v, "feedetail[1].med_list_codg");
    assert!(msg.contains("医疗目录编码"), "{msg}");

    // Nothing of the refused uploads reached the visit.
    let mut desk = w.desk(inst::NB_H3).await;
    let err = desk.pre_settle(&visit, false).await.expect_err("no lines");
    assert!(err.message().contains("no fee lines"), "{err:?}");
    // The path with /{infno} appended works.
    let msgid = his.msgid();
    let env = his.envelope(
        "2204",
        &msgid,
        HZ,
        json!({"feedetail": feedetail(&visit, &id)}),
    );
    let (_, v) = his
        .post_raw(
            "/fsi/api/rsfComIfsService/callService/2204",
            serde_json::to_vec(&env).unwrap(),
        )
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpatient_stay_reversal_reconciliation_and_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, twin) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let mut desk = w.desk(inst::NB_H3).await;

    // 2401 admission with its diagnoses.
    let (_, out) = his
        .ok("2401", HZ, json!({
            "mdtrtinfo": {"psn_no": id, "insutype": "310", "begntime": cst_now_minus_hours(3),
                "mdtrt_cert_type": "02", "mdtrt_cert_no": id, "med_type": "21", "ipt_no": "ZY0001",
                "atddr_no": "D1", "chfpdr_name": "李明", "adm_diag_dscr": "肺炎", "adm_dept_codg": "HX",
                "adm_dept_name": "呼吸科", "adm_bed": "12", "dscg_maindiag_code": "J18.9", "dscg_maindiag_name": "肺炎"},
            "diseinfo": [{"psn_no": id, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": 1, "diag_code": "J18.9",
                "diag_name": "肺炎", "diag_dept": "呼吸科", "dise_dor_no": "D1", "dise_dor_name": "李明",
                "diag_time": cst_now_minus_hours(3)}]
        }))
        .await;
    let visit = out["result"]["mdtrt_id"]
        .as_str()
        .expect("result.mdtrt_id")
        .to_owned();
    assert_eq!(out["data"]["mdtrt_id"], json!(visit));

    // 2301 inpatient fees.
    let t = cst_now_minus_hours(2);
    let (_, out) = his
        .ok("2301", HZ, json!({"feedetail": [
            {"feedetl_sn": "Z1", "mdtrt_id": visit, "psn_no": id, "med_type": "21", "fee_ocur_time": t,
             "med_list_codg": "NB-A", "medins_list_codg": "ZL1", "det_item_fee_sumamt": 3000, "cnt": 10, "pric": 300,
             "bilg_dept_codg": "HX", "bilg_dept_name": "呼吸科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明"},
            {"feedetl_sn": "Z2", "mdtrt_id": visit, "psn_no": id, "med_type": "21", "fee_ocur_time": t,
             "med_list_codg": "NB-B", "medins_list_codg": "YP1", "det_item_fee_sumamt": 1200.0, "cnt": 3, "pric": 400,
             "bilg_dept_codg": "HX", "bilg_dept_name": "呼吸科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明"}
        ]}))
        .await;
    assert_eq!(out["result"].as_array().map(Vec::len), Some(2));

    // 2303 pre-settlement before discharge is a quote; 2304 needs the discharge first.
    let input = |flag: &str| {
        json!({"data": {"psn_no": id, "mdtrt_cert_type": "02", "mdtrt_cert_no": id, "medfee_sumamt": 4200,
            "psn_setlway": "01", "mdtrt_id": visit, "acct_used_flag": flag, "insutype": "310", "mid_setl_flag": "0",
            "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0, "preselfpay_amt": 0, "inscp_scp_amt": 0}})
    };
    let (_, pre) = his.ok("2303", HZ, input("0")).await;
    assert_eq!(amt(&pre["setlinfo"]["medfee_sumamt"]), "4200.00");
    assert_eq!(pre["setlinfo"]["clr_type"], json!("21"));
    let msgid = his.msgid();
    let v = his.call("2304", &msgid, HZ, input("0")).await;
    let msg = refused(&v, "2402");
    assert!(msg.contains("当前状态不允许"), "{msg}");

    // 2402 discharge, then 2304 settles what 2303 quoted.
    his.ok("2402", HZ, json!({"dscginfo": {"mdtrt_id": visit, "psn_no": id, "insutype": "310",
        "endtime": cst_now_minus_hours(1), "dscg_dept_codg": "HX", "dscg_dept_name": "呼吸科", "dscg_way": "1"}}))
        .await;
    let (settle_msgid, out) = his.ok("2304", HZ, input("0")).await;
    let setl = out["setlinfo"].clone();
    let setl_id = setl["setl_id"].as_str().expect("setl_id").to_owned();
    for f in [
        "medfee_sumamt",
        "fund_pay_sumamt",
        "psn_cash_pay",
        "hifp_pay",
    ] {
        assert_eq!(
            setl[f], pre["setlinfo"][f],
            "{f}: the settlement is what 2303 quoted"
        );
    }
    assert_eq!(setl["medins_setl_id"], json!(settle_msgid));

    // Counted in the node's metrics as a gRPC settle is.
    let text = yidi_node::metrics::scrape(w.metrics).await.expect("scrape");
    for line in [
        r#"yidi_settlements_total{region="330200",op="settle",kind="inpatient",outcome="settled",code="ok"} 1"#,
        r#"yidi_settlements_total{region="330200",op="settle",kind="unknown",outcome="error",code="failed_precondition"} 1"#,
        r#"yidi_settlements_total{region="330200",op="pre_settle",kind="inpatient",outcome="presettled",code="ok"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // 5203 finds it as recorded; 5204 lists the visit's lines.
    let (_, q) = his
        .ok(
            "5203",
            HZ,
            json!({"data": {"psn_no": id, "setl_id": setl_id, "mdtrt_id": visit}}),
        )
        .await;
    for f in [
        "setl_id",
        "medfee_sumamt",
        "fund_pay_sumamt",
        "psn_cash_pay",
        "acct_pay",
        "clr_type",
    ] {
        assert_eq!(q["setlinfo"][f], setl[f], "5203 {f}");
    }
    assert_eq!(q["setlinfo"]["psn_pay"], setl["psn_part_amt"]);
    let (_, q) = his
        .ok(
            "5204",
            HZ,
            json!({"data": {"psn_no": id, "setl_id": setl_id, "mdtrt_id": visit}}),
        )
        .await;
    let lines = q["data"].as_array().expect("data[]");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["feedetl_sn"], json!("Z1"));
    assert_eq!(amt(&lines[1]["det_item_fee_sumamt"]), "1200.00");
    assert_eq!(lines[1]["chrgitm_lv"], json!("02"));

    // 2305 cancels it.
    let (_, out) = his
        .ok(
            "2305",
            HZ,
            json!({"data": {"mdtrt_id": visit, "setl_id": setl_id, "psn_no": id}}),
        )
        .await;
    assert_eq!(amt(&out["setlinfo"]["medfee_sumamt"]), "-4200.00");

    // 2601 of a 2207 whose answer was lost: the twin's outpatient visit.
    let tvisit = outpatient_visit(&mut his, &twin, "MZ0009").await;
    his.ok("2204", HZ, json!({"feedetail": feedetail(&tvisit, &twin)}))
        .await;
    let lost = his.msgid();
    let v = his
        .call(
            "2207",
            &lost,
            HZ,
            json!({"data": {"psn_no": twin, "mdtrt_cert_type": "02", "med_type": "11",
            "medfee_sumamt": 68, "psn_setlway": "01", "mdtrt_id": tvisit, "chrg_bchno": "B1",
            "acct_used_flag": "1", "insutype": "310"}}),
        )
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    let lost_setl = v["output"]["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let (_, out) = his
        .ok(
            "2601",
            HZ,
            json!({"data": {"psn_no": twin, "omsgid": lost, "oinfno": "2207"}}),
        )
        .await;
    assert_eq!(out, json!({}));
    let got = desk
        .client
        .get_settlement(proto::GetSettlementRequest {
            institution_code: inst::NB_H3.into(),
            settlement_id: lost_setl,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, "cancelled", "2601 reversed the lost settlement");
    // 2601 of a message that never arrived: nothing to undo, and it is barred.
    let never = his.msgid();
    let msgid = his.msgid();
    let v = his
        .call(
            "2601",
            &msgid,
            HZ,
            json!({"data": {"psn_no": twin, "omsgid": never, "oinfno": "2207"}}),
        )
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert!(
        v["warn_msg"]
            .as_str()
            .unwrap_or_default()
            .contains("never took effect"),
        "{v}"
    );
    // 2601 of a transaction that is not reversible.
    let msgid = his.msgid();
    let v = his
        .call(
            "2601",
            &msgid,
            HZ,
            json!({"data": {"psn_no": twin, "omsgid": never, "oinfno": "2204"}}),
        )
        .await;
    refused(&v, "oinfno");

    // 3201: the node's totals, matching its records and the gRPC reconciliation.
    let today = yidi_common::period::today().to_string();
    let recon = |cnt: Value, medfee: Value, fund: Value, acct: Value| {
        json!({"data": {"insutype": "310", "clr_type": "11", "setl_optins": NB, "stmt_begndate": today,
            "stmt_enddate": today, "medfee_sumamt": medfee, "fund_pay_sumamt": fund, "acct_pay": acct,
            "fixmedins_setl_cnt": cnt}})
    };
    let (_, out) = his
        .ok("3201", "", recon(json!(0), json!(0), json!(0), json!(0)))
        .await;
    let info = out["stmtinfo"].clone();
    assert_eq!(info["stmt_rslt"], json!("1"), "{info}");
    let grpc = desk
        .client
        .reconcile_totals(proto::ReconcileTotalsRequest {
            institution_code: inst::NB_H3.into(),
            from_date: today.clone(),
            to_date: today.clone(),
            count: 0,
            medfee_sumamt: "0.00".into(),
            fund_pay_sumamt: "0.00".into(),
            acct_pay: "0.00".into(),
        })
        .await
        .expect("reconcile")
        .into_inner();
    assert_eq!(info["fixmedins_setl_cnt"], json!(grpc.count));
    assert_eq!(amt(&info["medfee_sumamt"]), grpc.medfee_sumamt);
    assert_eq!(amt(&info["fund_pay_sumamt"]), grpc.fund_pay_sumamt);
    assert_eq!(amt(&info["acct_pay"]), grpc.acct_pay);
    let (_, out) = his
        .ok(
            "3201",
            "",
            recon(
                info["fixmedins_setl_cnt"].clone(),
                info["medfee_sumamt"].clone(),
                info["fund_pay_sumamt"].clone(),
                info["acct_pay"].clone(),
            ),
        )
        .await;
    assert_eq!(out["stmtinfo"]["stmt_rslt"], json!("0"), "{out}");
    assert_eq!(out["stmtinfo"]["stmt_rslt_dscr"], json!("对账一致"));
}

/// An example message of tests/data/nhsa-examples (copied from the reference sheet's
/// examples) with the sample data's codes replaced by this federation's, as text: the
/// numbers stay exactly as written there.
fn example(name: &str, subst: &[(&str, String)]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/nhsa-examples")
        .join(name);
    let mut text = std::fs::read_to_string(&path).expect("example file");
    // The person's home region, before Hangzhou's code becomes Ningbo's.
    text = text.replace(
        "\"insuplc_admdvs\": \"330200\"",
        "\"insuplc_admdvs\": \"@HOME@\"",
    );
    for (from, to) in subst {
        text = text.replace(from, to);
    }
    text = text
        .replace("330100", NB)
        .replace("@HOME@", HZ)
        .replace("H33010600123", inst::NB_H3);
    text.into_bytes()
}

/// The keys of an example answer's output nodes are all in ours.
fn assert_keys_as_example(name: &str, ours: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/nhsa-examples")
        .join(name);
    let example: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("json");
    let out = example["output"].as_object().expect("output");
    for (node, v) in out {
        let sample = match v {
            Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        let mine = match &ours[node] {
            Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        if let Value::Object(keys) = sample {
            for k in keys.keys() {
                assert!(
                    mine.get(k).is_some(),
                    "{name}: output.{node}.{k} is missing from {mine}"
                );
            }
        }
    }
}

/// POSTs an example message; the answer (HTTP 200 always).
async fn post(his: &His, body: Vec<u8>) -> Value {
    let (status, v) = his
        .post_raw("/fsi/api/rsfComIfsService/callService", body)
        .await;
    assert_eq!(status, 200);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sheets_example_messages_are_accepted_as_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, _) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let person = [
        ("330203198506121233", id.clone()),
        ("33020000000000123456", id.clone()),
    ];
    let v = post(&his, example("1101-request.json", &person)).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("1101-response.json", &v["output"]);

    // Two visits (2201 is not among the examples): A is settled and cancelled, B
    // settled and reversed by 2601, each with the examples' messages.
    let mut visits = Vec::new();
    for no in ["MZ-A", "MZ-B"] {
        visits.push(outpatient_visit(&mut his, &id, no).await);
    }
    let fee_time = cst_now_minus_hours(1);
    let subst = |visit: &str, prefix: &str| {
        let mut s: Vec<(&str, String)> = person.to_vec();
        s.extend([
            ("330100240415000000888", visit.to_owned()),
            ("001102000010000", "NB-A".to_owned()),
            ("XJ01CAA040A001010100001", "NB-B".to_owned()),
            ("003101000010000", "NB-C".to_owned()),
            ("2024-04-15 09:41:00", fee_time.clone()),
            ("2024-04-15 09:45:30", fee_time.clone()),
            ("2024-04-15 09:47:10", fee_time.clone()),
            (
                "\"msgid\": \"H33010600123",
                format!("\"msgid\": \"{prefix}H33010600123"),
            ),
            (
                "\"omsgid\": \"H33010600123",
                format!("\"omsgid\": \"{prefix}H33010600123"),
            ),
        ]);
        s
    };
    let a = subst(&visits[0], "");
    let v = post(&his, example("2204-request.json", &a)).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("2204-response.json", &v["output"]);
    let v = post(&his, example("2206-request.json", &a)).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("2206-response.json", &v["output"]);
    let v = post(&his, example("2207-request.json", &a)).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("2207-response.json", &v["output"]);
    let setl_id = v["output"]["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let mut a2 = a.clone();
    a2.push(("330100240415000009921", setl_id.clone()));
    let v = post(&his, example("2208-request.json", &a2)).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("2208-response.json", &v["output"]);

    let b = subst(&visits[1], "B-");
    for f in ["2204-request.json", "2207-request.json"] {
        let v = post(&his, example(f, &b)).await;
        assert_eq!(v["infcode"], json!(0), "{f}: {v}");
        if f.starts_with("2207") {
            let s = v["output"]["setlinfo"]["setl_id"]
                .as_str()
                .expect("setl_id")
                .to_owned();
            let v = post(&his, example("2601-request.json", &b)).await;
            assert_eq!(v["infcode"], json!(0), "{v}");
            let mut desk = w.desk(inst::NB_H3).await;
            let got = desk
                .client
                .get_settlement(proto::GetSettlementRequest {
                    institution_code: inst::NB_H3.into(),
                    settlement_id: s,
                })
                .await
                .expect("get")
                .into_inner();
            assert_eq!(
                got.state, "cancelled",
                "the example 2601 reversed the example 2207"
            );
        }
    }

    let today = yidi_common::period::today().to_string();
    let v = post(&his, example("3201-request.json", &[("2024-04-15", today)])).await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    assert_keys_as_example("3201-response.json", &v["output"]);
    assert_eq!(
        v["output"]["stmtinfo"]["stmt_rslt"],
        json!("1"),
        "the example's totals are not this node's"
    );
}

/// 2202 / 2404 (CancelVisit) and 2405 (ReopenVisit): refused while the visit has a live
/// settlement, naming it, with nothing changed; allowed once it is cancelled; a cancelled
/// visit takes no fees and no settlement; the same over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_cancel_and_discharge_undo_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, twin) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let mut desk = w.desk(inst::NB_H3).await;

    // An outpatient visit, billed and settled.
    let visit = outpatient_visit(&mut his, &id, "MZ0101").await;
    his.ok("2204", HZ, json!({"feedetail": feedetail(&visit, &id)}))
        .await;
    let (_, out) = his
        .ok(
            "2207",
            HZ,
            json!({"data": {"psn_no": id, "mdtrt_cert_type": "02", "med_type": "11",
            "medfee_sumamt": 68, "psn_setlway": "01", "mdtrt_id": visit, "chrg_bchno": "B1",
            "acct_used_flag": "0", "insutype": "310"}}),
        )
        .await;
    let setl_id = out["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let cancel_input =
        |psn: &str, no: &str| json!({"data": {"psn_no": psn, "mdtrt_id": visit, "ipt_otp_no": no}});

    // 2202 of a settled visit: refused, naming the settlement and the transaction to use.
    let msgid = his.msgid();
    let v = his
        .call("2202", &msgid, HZ, cancel_input(&id, "MZ0101"))
        .await;
    let msg = refused(&v, &setl_id);
    assert!(msg.contains("当前状态不允许此交易"), "{msg}");
    assert!(msg.contains("(2208/2305)"), "{msg}");
    assert!(
        msg.contains(&format!("visit {visit} has settlement {setl_id} (settled)")),
        "{msg}"
    );
    let got = desk.get(&setl_id).await.expect("get");
    assert_eq!(got.state, "settled");
    assert_eq!(
        got.split.as_ref().map(|s| s.medfee_sumamt.as_str()),
        Some("68.00")
    );
    // The wrong person or visit number: refused before anything is looked at further.
    let msgid = his.msgid();
    let v = his
        .call("2202", &msgid, HZ, cancel_input(&twin, "MZ0101"))
        .await;
    refused(&v, "input.data.psn_no");
    let msgid = his.msgid();
    let v = his
        .call("2202", &msgid, HZ, cancel_input(&id, "MZ9999"))
        .await;
    let msg = refused(&v, "input.data.ipt_otp_no");
    assert!(msg.contains("MZ0101"), "{msg}");

    // Its settlement cancelled (2208), the registration can be cancelled; the same
    // message again answers the same, a new one is refused.
    his.ok(
        "2208",
        HZ,
        json!({"data": {"psn_no": id, "setl_id": setl_id, "mdtrt_id": visit}}),
    )
    .await;
    let (cancel_msgid, out) = his.ok("2202", HZ, cancel_input(&id, "MZ0101")).await;
    assert_eq!(out, json!({}));
    let v = his
        .call("2202", &cancel_msgid, HZ, cancel_input(&id, "MZ0101"))
        .await;
    assert_eq!(v["infcode"], json!(0), "a repeated message: {v}");
    let msgid = his.msgid();
    let v = his
        .call("2202", &msgid, HZ, cancel_input(&id, "MZ0101"))
        .await;
    let msg = refused(&v, &format!("visit {visit} is already cancelled"));
    assert!(msg.contains("当前状态不允许此交易"), "{msg}");
    // Nothing more can be uploaded, quoted or settled on it.
    let msgid = his.msgid();
    let v = his
        .call(
            "2204",
            &msgid,
            HZ,
            json!({"feedetail": feedetail(&visit, &id)}),
        )
        .await;
    refused(&v, &format!("visit {visit} is cancelled"));
    let err = desk.pre_settle(&visit, false).await.expect_err("cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains(&format!(
            "visit {visit} is cancelled; it cannot be priced or settled"
        )),
        "{err:?}"
    );
    let err = desk
        .settle("S-after-cancel", &visit, false)
        .await
        .expect_err("cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // The one settlement is the cancelled one and its reversal.
    let got = desk.get(&setl_id).await.expect("get");
    assert_eq!(got.state, "cancelled");

    // An inpatient stay: admitted, billed, discharged, settled.
    let stay = admit(&mut his, &twin, "ZY0101").await;
    let t = cst_now_minus_hours(2);
    his.ok("2301", HZ, json!({"feedetail": [
        {"feedetl_sn": "Z1", "mdtrt_id": stay, "psn_no": twin, "med_type": "21", "fee_ocur_time": t,
         "med_list_codg": "NB-A", "medins_list_codg": "ZL1", "det_item_fee_sumamt": 3000, "cnt": 10, "pric": 300,
         "bilg_dept_codg": "HX", "bilg_dept_name": "呼吸科", "bilg_dr_codg": "D1", "bilg_dr_name": "李明"}
    ]}))
    .await;
    let discharge = json!({"dscginfo": {"mdtrt_id": stay, "psn_no": twin, "insutype": "310",
        "endtime": cst_now_minus_hours(1), "dscg_dept_codg": "HX", "dscg_dept_name": "呼吸科", "dscg_way": "1"}});
    his.ok("2402", HZ, discharge.clone()).await;
    let settle = json!({"data": {"psn_no": twin, "mdtrt_cert_type": "02", "mdtrt_cert_no": twin,
        "medfee_sumamt": 3000, "psn_setlway": "01", "mdtrt_id": stay, "acct_used_flag": "0",
        "insutype": "310", "mid_setl_flag": "0"}});
    let (_, out) = his.ok("2304", HZ, settle.clone()).await;
    let stay_setl = out["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let undo = json!({"data": {"mdtrt_id": stay, "psn_no": twin}});

    // 2405 and 2404 while settled: refused, naming the settlement; it stays settled.
    for infno in ["2405", "2404"] {
        let msgid = his.msgid();
        let v = his.call(infno, &msgid, HZ, undo.clone()).await;
        let msg = refused(
            &v,
            &format!("visit {stay} has settlement {stay_setl} (settled)"),
        );
        assert!(msg.contains("(2208/2305)"), "{infno}: {msg}");
    }
    let got = desk.get(&stay_setl).await.expect("get");
    assert_eq!(got.state, "settled");
    assert_eq!(
        got.split.as_ref().map(|s| s.medfee_sumamt.as_str()),
        Some("3000.00")
    );

    // Its settlement cancelled (2305), the discharge is undone (2405): the stay is open,
    // so 2304 wants a discharge again, and 2402 discharges it again.
    his.ok(
        "2305",
        HZ,
        json!({"data": {"mdtrt_id": stay, "setl_id": stay_setl, "psn_no": twin}}),
    )
    .await;
    let (_, out) = his.ok("2405", HZ, undo.clone()).await;
    assert_eq!(out, json!({}));
    let msgid = his.msgid();
    let v = his.call("2304", &msgid, HZ, settle.clone()).await;
    refused(&v, "must be discharged (2402)");
    let msgid = his.msgid();
    let v = his.call("2405", &msgid, HZ, undo.clone()).await;
    refused(
        &v,
        &format!("visit {stay} is open; only a closed (discharged) visit can be reopened"),
    );
    his.ok("2402", HZ, discharge.clone()).await;
    // 2404: the admission cancelled (closed, unsettled: allowed); then nothing moves it.
    his.ok("2404", HZ, undo.clone()).await;
    let msgid = his.msgid();
    let v = his.call("2405", &msgid, HZ, undo.clone()).await;
    refused(&v, &format!("visit {stay} is cancelled; only a closed"));
    let msgid = his.msgid();
    let v = his.call("2304", &msgid, HZ, settle).await;
    refused(&v, &format!("visit {stay} is cancelled"));

    // gRPC: the same operations, with the same answers.
    let fresh = desk
        .open(
            "G-OPEN-1",
            &id,
            HZ,
            proto::VisitKind::Outpatient,
            &yidi_common::period::format_ts(Utc::now() - chrono::Duration::hours(1)),
        )
        .await
        .expect("open");
    let req = |rid: &str, reason: &str| proto::CancelVisitRequest {
        request_id: rid.into(),
        institution_code: inst::NB_H3.into(),
        visit_id: fresh.visit_id.clone(),
        reason: reason.into(),
    };
    let v = desk
        .client
        .cancel_visit(req("G-CANCEL-1", "registered twice"))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(v.state, "cancelled");
    assert_eq!(v.visit_id, fresh.visit_id);
    let again = desk
        .client
        .cancel_visit(req("G-CANCEL-1", "registered twice"))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(again, v);
    let err = desk
        .client
        .cancel_visit(req("G-CANCEL-1", "another reason"))
        .await
        .expect_err("a used request id");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let err = desk
        .client
        .reopen_visit(proto::ReopenVisitRequest {
            request_id: "G-REOPEN-1".into(),
            institution_code: inst::NB_H3.into(),
            visit_id: fresh.visit_id.clone(),
        })
        .await
        .expect_err("cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!(
            "visit {} is cancelled; only a closed (discharged) visit can be reopened",
            fresh.visit_id
        )
    );
    let err = desk
        .client
        .cancel_visit(proto::CancelVisitRequest {
            visit_id: "330200-V-99999999".into(),
            ..req("G-CANCEL-2", "")
        })
        .await
        .expect_err("no such visit");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

/// 2203 (visit information) and 2403 (admission change): UpdateVisit with the main
/// diagnosis and, for 2403, the visit number; refused on a settled visit with nothing
/// changed; the same over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_information_and_admission_change_through_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path()).await;
    let (id, twin) = w.ids.clone();
    let mut his = w.his(inst::NB_H3);
    let mut desk = w.desk(inst::NB_H3).await;
    let update = |visit: &str, rid: &str, diag: &str, ext: &str| proto::UpdateVisitRequest {
        request_id: rid.into(),
        institution_code: inst::NB_H3.into(),
        visit_id: visit.into(),
        diagnosis_code: diag.into(),
        external_visit_no: ext.into(),
    };

    let visit = outpatient_visit(&mut his, &id, "MZ0201").await;
    let info = |psn: &str, diseinfo: Value| {
        json!({"mdtrtinfo": {"mdtrt_id": visit, "psn_no": psn, "med_type": "11",
            "begntime": cst_now_minus_hours(2), "main_cond_dscr": "头晕", "dise_codg": "", "dise_name": ""},
            "diseinfo": diseinfo})
    };
    let diseinfo = json!([
        {"diag_type": "1", "diag_srt_no": 2, "diag_code": "I10", "diag_name": "高血压", "diag_dept": "内科",
         "dise_dor_no": "D1", "dise_dor_name": "李明", "diag_time": cst_now_minus_hours(2), "vali_flag": "1"},
        {"diag_type": "1", "diag_srt_no": 1, "diag_code": "E11.9", "diag_name": "2型糖尿病", "diag_dept": "内科",
         "dise_dor_no": "D1", "dise_dor_name": "李明", "diag_time": cst_now_minus_hours(2), "vali_flag": "1"}
    ]);
    let (_, out) = his.ok("2203", HZ, info(&id, diseinfo.clone())).await;
    assert_eq!(out, json!({}));
    // The node keeps diag_srt_no 1 as the main diagnosis (seen through gRPC's answer).
    let v = desk
        .client
        .update_visit(update(&visit, "G-UPD-1", "", "MZ0201-B"))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        (
            v.diagnosis_code.as_str(),
            v.external_visit_no.as_str(),
            v.state.as_str()
        ),
        ("E11.9", "MZ0201-B", "open")
    );

    // Refusals, each naming the field, nothing changed.
    let msgid = his.msgid();
    let v = his
        .call("2203", &msgid, HZ, info(&twin, diseinfo.clone()))
        .await;
    refused(&v, "input.mdtrtinfo.psn_no");
    let msgid = his.msgid();
    let v = his.call("2203", &msgid, HZ, info(&id, json!([]))).await;
    refused(&v, "input.diseinfo");
    let mut long = diseinfo.clone();
    long[1]["diag_code"] = json!("E".repeat(31));
    let msgid = his.msgid();
    let v = his.call("2203", &msgid, HZ, info(&id, long)).await;
    let msg = refused(&v, "diag_code");
    assert!(msg.contains("at most 30"), "{msg}");

    // Settled: refused, naming what to do; after 2208 the visit is as it was.
    his.ok("2204", HZ, json!({"feedetail": feedetail(&visit, &id)}))
        .await;
    let (_, out) = his
        .ok(
            "2207",
            HZ,
            json!({"data": {"psn_no": id, "mdtrt_cert_type": "02", "med_type": "11",
            "medfee_sumamt": 68, "psn_setlway": "01", "mdtrt_id": visit, "chrg_bchno": "B1",
            "acct_used_flag": "0", "insutype": "310"}}),
        )
        .await;
    let setl_id = out["setlinfo"]["setl_id"]
        .as_str()
        .expect("setl_id")
        .to_owned();
    let mut other = diseinfo.clone();
    other[1]["diag_code"] = json!("J06.9");
    let msgid = his.msgid();
    let v = his.call("2203", &msgid, HZ, info(&id, other)).await;
    let msg = refused(
        &v,
        &format!(
            "visit {visit} is settled; cancel its settlement (2208/2305) before changing the visit"
        ),
    );
    assert!(msg.contains("当前状态不允许此交易"), "{msg}");
    let err = desk
        .client
        .update_visit(update(&visit, "G-UPD-2", "J06.9", ""))
        .await
        .expect_err("settled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    his.ok(
        "2208",
        HZ,
        json!({"data": {"psn_no": id, "setl_id": setl_id, "mdtrt_id": visit}}),
    )
    .await;
    let v = desk
        .client
        .update_visit(update(&visit, "G-UPD-3", "", "MZ0201-C"))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        (v.diagnosis_code.as_str(), v.external_visit_no.as_str()),
        ("E11.9", "MZ0201-C"),
        "the refused changes left the visit as it was"
    );

    // 2403: the admission's visit number and main diagnosis (maindiag_flag 1).
    let stay = admit(&mut his, &twin, "ZY0201").await;
    his.ok("2403", HZ, json!({
        "adminfo": {"mdtrt_id": stay, "psn_no": twin, "med_type": "21", "begntime": cst_now_minus_hours(3),
            "ipt_otp_no": "ZY0201-X", "atddr_no": "D2", "chfpdr_name": "王强", "adm_dept_codg": "HX",
            "adm_dept_name": "呼吸科", "adm_bed": "14", "dscg_maindiag_code": "J18.9"},
        "diseinfo": [
            {"mdtrt_id": stay, "psn_no": twin, "diag_type": "1", "maindiag_flag": "0", "diag_srt_no": 1,
             "diag_code": "J18.9", "diag_name": "肺炎", "diag_dept": "呼吸科", "dise_dor_no": "D2",
             "dise_dor_name": "王强", "diag_time": cst_now_minus_hours(3)},
            {"mdtrt_id": stay, "psn_no": twin, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": 2,
             "diag_code": "J44.1", "diag_name": "慢阻肺急性加重", "diag_dept": "呼吸科", "dise_dor_no": "D2",
             "dise_dor_name": "王强", "diag_time": cst_now_minus_hours(2)}]
    }))
    .await;
    let v = desk
        .client
        .update_visit(update(&stay, "G-UPD-4", "", "ZY0201-X"))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        (v.diagnosis_code.as_str(), v.external_visit_no.as_str()),
        ("J44.1", "ZY0201-X")
    );

    // gRPC: nothing to change; a cancelled visit.
    let err = desk
        .client
        .update_visit(update(&stay, "G-UPD-5", "", ""))
        .await
        .expect_err("nothing to change");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("diagnosis_code"), "{err:?}");
    his.ok(
        "2404",
        HZ,
        json!({"data": {"mdtrt_id": stay, "psn_no": twin}}),
    )
    .await;
    let err = desk
        .client
        .update_visit(update(&stay, "G-UPD-6", "J18.9", ""))
        .await
        .expect_err("cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("visit {stay} is cancelled; it can no longer be changed")
    );
}

/// A zip holding one file, as an HIS builds the 3202 detail file.
fn zip_of(name: &str, text: &str, method: zip::CompressionMethod) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        name,
        zip::write::SimpleFileOptions::default().compression_method(method),
    )
    .expect("zip entry");
    w.write_all(text.as_bytes()).expect("zip write");
    w.finish().expect("zip").into_inner()
}

/// The text of the one file of a zip.
fn unzip(bytes: &[u8]) -> (String, String) {
    use std::io::Read as _;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    assert_eq!(z.len(), 1, "one file");
    let mut f = z.by_index(0).expect("entry");
    let mut text = String::new();
    f.read_to_string(&mut text).expect("text");
    (f.name().expect("name").to_string(), text)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The rows of the gateway's file table in Ningbo's store.
fn stored_files(w: &World) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        w.fed.node(NB).data_dir.join("node.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("node.db");
    db.prepare("SELECT file_qury_no, institution_code, kind FROM nhsa_files ORDER BY file_qury_no")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("read")
}

/// 9101 → 3202 → 9102 against settlements made over gRPC: a file that agrees, then one
/// with a changed amount, a missing and an extra settlement, each named in the result
/// file; a foreign institution's file number, oversized and garbage uploads refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_reconciliation_with_file_upload_and_download() {
    use proto::{HospitalLevel as Hl, InstitutionKind as Ik};
    use rust_decimal::Decimal;
    let dir = tempfile::tempdir().expect("dir");
    let w = world(dir.path()).await;
    register(
        w.fed.node(NB),
        inst::NB_H1,
        Ik::Hospital,
        Hl::HospitalLevel1,
    )
    .await;
    let (a, b) = w.ids.clone();
    let mut desk = w.desk(inst::NB_H3).await;
    let mut setl = Vec::new();
    for (i, id) in [&a, &b, &a].into_iter().enumerate() {
        let v = desk
            .open(
                &format!("r{i}-open"),
                id,
                HZ,
                proto::VisitKind::Outpatient,
                &Utc::now().to_rfc3339(),
            )
            .await
            .expect("open");
        desk.fees(
            &format!("r{i}-fees"),
            &v.visit_id,
            vec![
                fee_line("F1", "NB-A", "1", "25.00", "25.00"),
                fee_line("F2", "NB-B", "2", "12.50", "25.00"),
            ],
        )
        .await
        .expect("fees");
        setl.push(
            desk.settle(&format!("r{i}-settle"), &v.visit_id, i == 0)
                .await
                .expect("settle"),
        );
    }
    let split = |s: &proto::Settlement| s.split.clone().expect("split");
    assert_ne!(
        split(&setl[0]).acct_pay,
        "0.00",
        "one paid from the account"
    );
    let line = |s: &proto::Settlement| {
        let p = split(s);
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t0\n",
            s.settlement_id,
            s.visit_id,
            s.id_number,
            p.medfee_sumamt,
            p.fund_pay_sumamt,
            p.acct_pay
        )
    };
    let dec = |t: &str| t.parse::<Decimal>().expect("decimal");
    let today = yidi_common::period::today().to_string();
    let reconcile = |no: &str, cnt: usize, medfee: Decimal, fund: Decimal| {
        json!({"data": {"setl_optins": NB, "file_qury_no": no, "stmt_begndate": today,
            "stmt_enddate": today, "medfee_sumamt": serde_json::Number::from_string_unchecked(medfee.to_string()),
            "fund_pay_sumamt": serde_json::Number::from_string_unchecked(fund.to_string()),
            "cash_payamt": 0, "fixmedins_setl_cnt": cnt, "clr_type": "11", "refd_setl_flag": "0"}})
    };
    let upload = |zip: &[u8], name: &str, code: &str| json!({"fsUploadIn": {"in": b64(zip), "filename": name, "fixmedins_code": code}});
    let mut his = w.his(inst::NB_H3);

    // A file that agrees with the node: balanced, and an empty result file.
    let text: String = setl.iter().map(line).collect();
    let (_, up) = his
        .ok(
            "9101",
            "",
            upload(
                &zip_of("detail.txt", &text, zip::CompressionMethod::Deflated),
                "detail.zip",
                inst::NB_H3,
            ),
        )
        .await;
    let no = up["file_qury_no"]
        .as_str()
        .expect("file_qury_no")
        .to_owned();
    assert_eq!(no, format!("{NB}-F-0000000001"));
    assert_eq!(up["filename"], json!("detail.zip"));
    assert_eq!(up["fileinfo"]["file_qury_no"], json!(no));
    assert_eq!(up["dld_endtime"].as_str().map(str::len), Some(19), "{up}");
    let medfee: Decimal = setl.iter().map(|s| dec(&split(s).medfee_sumamt)).sum();
    let fund: Decimal = setl.iter().map(|s| dec(&split(s).fund_pay_sumamt)).sum();
    let (m3202, out) = his.ok("3202", "", reconcile(&no, 3, medfee, fund)).await;
    assert_eq!(out["stmtinfo"]["stmt_rslt"], json!("0"), "{out}");
    assert_eq!(out["stmtinfo"]["fixmedins_setl_cnt"], json!(3));
    let result_no = out["fileinfo"]["file_qury_no"]
        .as_str()
        .expect("no")
        .to_owned();
    assert_eq!(
        out["fileinfo"]["filename"],
        json!(format!("{no}-result.zip"))
    );
    // The same message again: the same answer, nothing new stored.
    let again = his
        .call("3202", &m3202, "", reconcile(&no, 3, medfee, fund))
        .await;
    assert_eq!(again["output"], out, "{again}");
    // The same msgid with another input is refused.
    let mut changed_input = reconcile(&no, 3, medfee, fund);
    changed_input["data"]["clr_type"] = json!("21");
    let other = his.call("3202", &m3202, "", changed_input).await;
    let msg = refused(&other, "msgid");
    assert!(msg.contains("already used"), "{msg}");
    let download = |no: &str, code: &str| json!({"fsDownloadIn": {"file_qury_no": no, "filename": "result.zip", "fixmedins_code": code}});
    let msgid = his.msgid();
    let env = his.envelope("9102", &msgid, "", download(&result_no, inst::NB_H3));
    let (status, kind, body) = his
        .post_bytes(
            "/fsi/api/rsfComIfsService/callService",
            serde_json::to_vec(&env).expect("json"),
        )
        .await;
    assert_eq!((status, kind.as_str()), (200, "application/zip"));
    assert_eq!(unzip(&body), ("result.txt".to_owned(), String::new()));

    // Declared totals that are not the file's are refused, naming the field.
    let msgid = his.msgid();
    let v = his
        .call("3202", &msgid, "", reconcile(&no, 2, medfee, fund))
        .await;
    let msg = refused(&v, "input.data.fixmedins_setl_cnt");
    assert!(msg.contains("differs from the 3 lines of file"), "{msg}");
    let msgid = his.msgid();
    let v = his
        .call(
            "3202",
            &msgid,
            "",
            reconcile(&no, 3, medfee + Decimal::ONE, fund),
        )
        .await;
    let msg = refused(&v, "input.data.medfee_sumamt");
    assert!(
        msg.contains(&format!("differs from the total {medfee:.2}")),
        "{msg}"
    );

    // One amount changed, one settlement left out, one the node never made, through
    // the per-service paths of URL shape C.
    let changed = split(&setl[0]);
    let text = format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t0\n{}{}\t{}\t{}\t10.00\t5.00\t0.00\t0\n",
        setl[0].settlement_id,
        setl[0].visit_id,
        a,
        dec(&changed.medfee_sumamt) + Decimal::ONE,
        changed.fund_pay_sumamt,
        changed.acct_pay,
        line(&setl[2]),
        "330200-S-9999999999",
        "330200-V-9999999999",
        b,
    );
    let msgid = his.msgid();
    let env = his.envelope(
        "9101",
        &msgid,
        "",
        upload(
            &zip_of("detail.txt", &text, zip::CompressionMethod::Deflated),
            "detail2.zip",
            inst::NB_H3,
        ),
    );
    let (status, up) = his
        .post_raw(
            "/fsi/api/fileupload/upload",
            serde_json::to_vec(&env).expect("json"),
        )
        .await;
    assert_eq!((status, &up["infcode"]), (200, &json!(0)), "{up}");
    let no2 = up["output"]["file_qury_no"]
        .as_str()
        .expect("no")
        .to_owned();
    let medfee2 = dec(&changed.medfee_sumamt)
        + Decimal::ONE
        + dec(&split(&setl[2]).medfee_sumamt)
        + dec("10.00");
    let fund2 = dec(&changed.fund_pay_sumamt) + dec(&split(&setl[2]).fund_pay_sumamt) + dec("5.00");
    let msgid = his.msgid();
    let env = his.envelope("3202", &msgid, "", reconcile(&no2, 3, medfee2, fund2));
    let (_, v) = his
        .post_raw(
            "/fsi/api/ybSettlementStmtService/stmtDetail",
            serde_json::to_vec(&env).expect("json"),
        )
        .await;
    assert_eq!(v["infcode"], json!(0), "{v}");
    let info = &v["output"]["stmtinfo"];
    assert_eq!(info["stmt_rslt"], json!("1"), "{v}");
    assert_eq!(
        (
            &info["amount_differs"],
            &info["missing_at_node"],
            &info["missing_at_institution"]
        ),
        (&json!(1), &json!(1), &json!(1))
    );
    let result2 = v["output"]["fileinfo"]["file_qury_no"]
        .as_str()
        .expect("no")
        .to_owned();
    let msgid = his.msgid();
    let env = his.envelope("9102", &msgid, "", download(&result2, inst::NB_H3));
    let (status, kind, body) = his
        .post_bytes(
            "/fsi/api/fileupload/download",
            serde_json::to_vec(&env).expect("json"),
        )
        .await;
    assert_eq!((status, kind.as_str()), (200, "application/zip"));
    let (name, result) = unzip(&body);
    assert_eq!(name, "result.txt");
    let cols = |s: &proto::Settlement, msgid: &str, memo: &str| {
        let p = split(s);
        format!(
            "{}\t{}\t{}\t{msgid}\t1\t0\t{memo}\t{}\t{}\t{}",
            s.id_number,
            s.visit_id,
            s.settlement_id,
            p.medfee_sumamt,
            p.fund_pay_sumamt,
            p.acct_pay
        )
    };
    let expected = [
        cols(
            &setl[0],
            "r0-settle",
            &format!(
                "金额不一致，医药机构为 医疗费总额 {m} 基金支付 {f} 个人账户 {c} / amount_differs: the institution has medfee_sumamt {m} fund_pay_sumamt {f} acct_pay {c}",
                m = dec(&changed.medfee_sumamt) + Decimal::ONE,
                f = changed.fund_pay_sumamt,
                c = changed.acct_pay
            ),
        ),
        cols(
            &setl[1],
            "r1-settle",
            "医药机构无此结算 / missing_at_institution: settled at the node, not in the uploaded file",
        ),
        format!(
            "{b}\t330200-V-9999999999\t330200-S-9999999999\t\t1\t0\t经办机构无此结算 / missing_at_node: the node has no such settlement of this institution in the period\t10.00\t5.00\t0.00"
        ),
    ];
    assert_eq!(result.lines().collect::<Vec<_>>(), expected);

    // Another institution may use neither the upload nor the result.
    let mut other = w.his(inst::NB_H1);
    let msgid = other.msgid();
    let v = other
        .call("3202", &msgid, "", reconcile(&no2, 3, medfee2, fund2))
        .await;
    let msg = refused(&v, "input.data.file_qury_no");
    assert!(msg.contains("belongs to another institution"), "{msg}");
    let msgid = other.msgid();
    let v = other
        .call("9102", &msgid, "", download(&result2, inst::NB_H1))
        .await;
    let msg = refused(&v, "input.fsDownloadIn.file_qury_no");
    assert!(msg.contains("belongs to another institution"), "{msg}");

    // Oversized and garbage uploads are refused, naming the field; nothing is stored.
    let before = stored_files(&w);
    assert_eq!(before.len(), 4, "{before:?}");
    let big = zip_of(
        "detail.txt",
        &"0".repeat(2 * 1024 * 1024 + 1),
        zip::CompressionMethod::Stored,
    );
    let msgid = his.msgid();
    let v = his
        .call("9101", &msgid, "", upload(&big, "big.zip", inst::NB_H3))
        .await;
    let msg = refused(&v, "input.fsUploadIn.in");
    assert!(msg.contains("at most 2097152 bytes are accepted"), "{msg}");
    let msgid = his.msgid();
    let v = his
        .call(
            "9101",
            &msgid,
            "",
            upload(b"not a zip at all", "x.zip", inst::NB_H3),
        )
        .await;
    let msg = refused(&v, "input.fsUploadIn.in");
    assert!(msg.contains("the upload is not a zip archive"), "{msg}");
    let msgid = his.msgid();
    let bad_line = zip_of(
        "d.txt",
        "S1\tV1\tP1\t12.345\t0\t0\t0\n",
        zip::CompressionMethod::Deflated,
    );
    let v = his
        .call("9101", &msgid, "", upload(&bad_line, "d.zip", inst::NB_H3))
        .await;
    let msg = refused(&v, "input.fsUploadIn.in");
    assert!(
        msg.contains("line 1 column medfee_sumamt \"12.345\""),
        "{msg}"
    );
    assert_eq!(stored_files(&w), before, "nothing stored");
}

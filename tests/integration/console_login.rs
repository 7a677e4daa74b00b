//! Console login links (node/src/console/login.rs): signed by an operator's own key,
//! for one console, expiring, single use. Here rather than beside the code because the
//! test CA that issues the certificates lives in the CLI crate.
use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use yidi_cli::certs::{self, Validity};
use yidi_common::region::RegionCode;
use yidi_node::{
    console::login::*,
    identity::{Identity, Role},
};

struct Fixture {
    _dir: tempfile::TempDir,
    roots: Arc<rustls::RootCertStore>,
    cert: Vec<u8>,
    key: Vec<u8>,
    serial: String,
}

fn province() -> Identity {
    Identity::Coordinator {
        province: RegionCode::parse("330000", "r").unwrap(),
    }
}

fn fixture(who: &Identity) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    certs::create_ca(&ca, 30, "test CA").unwrap();
    let issued = certs::issue(&ca, &dir.path().join("op"), who, Validity::days(5), &[]).unwrap();
    let roots = Arc::new(yidi_node::tls::load_roots(&ca.join(certs::CA_CERT)).unwrap());
    Fixture {
        roots,
        cert: std::fs::read(&issued.cert).unwrap(),
        key: std::fs::read(&issued.key).unwrap(),
        serial: issued.serial,
        _dir: dir,
    }
}

fn operator() -> Identity {
    Identity::Operator {
        region: RegionCode::parse("330000", "r").unwrap(),
        role: Role::Clearing,
    }
}

#[test]
fn a_link_signs_in_once_and_only_while_valid_and_only_here() {
    let f = fixture(&operator());
    let now = chrono::Utc::now().timestamp();
    let v = Verifier::new(&province(), now - 10);
    let token = sign(&f.cert, &f.key, &province(), now, 300).unwrap();
    let ok = v.accept(&token, &f.roots, |_| false, now + 5).unwrap();
    assert_eq!(ok.cert.identity, operator());
    assert_eq!(
        v.accept(&token, &f.roots, |_| false, now + 6).unwrap_err(),
        LinkError::Used
    );
    // Expired: a fresh verifier has not seen the nonce, the clock says why.
    let v2 = Verifier::new(&province(), now - 10);
    assert_eq!(
        v2.accept(&token, &f.roots, |_| false, now + 301)
            .unwrap_err(),
        LinkError::Expired(1)
    );
    // For another console.
    let node = Identity::Node {
        region: RegionCode::parse("330100", "r").unwrap(),
    };
    let other = Verifier::new(&node, now - 10);
    assert!(matches!(
        other
            .accept(&token, &f.roots, |_| false, now + 5)
            .unwrap_err(),
        LinkError::WrongConsole(_)
    ));
    // Issued before the console started: a used nonce may have been forgotten.
    let restarted = Verifier::new(&province(), now + 1);
    assert_eq!(
        restarted
            .accept(&token, &f.roots, |_| false, now + 5)
            .unwrap_err(),
        LinkError::BeforeStart
    );
    // Revoked.
    let v3 = Verifier::new(&province(), now - 10);
    let serial = f.serial.clone();
    assert!(matches!(
        v3.accept(&token, &f.roots, |s| s == serial, now + 5).unwrap_err(),
        LinkError::Certificate(m) if m.contains("revoked")
    ));
}

#[test]
fn a_tampered_or_foreign_link_is_refused() {
    let f = fixture(&operator());
    let now = chrono::Utc::now().timestamp();
    let v = Verifier::new(&province(), now - 10);
    let token = sign(&f.cert, &f.key, &province(), now, 300).unwrap();
    // Another payload under the same signature: a longer validity.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = Claims {
        aud: province().urn(),
        iat: now,
        exp: now + 900,
        nonce: "00".into(),
    };
    let forged = format!(
        "v1.{}.{}.{}",
        B64.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2],
        parts[3]
    );
    assert_eq!(
        v.accept(&forged, &f.roots, |_| false, now).unwrap_err(),
        LinkError::Signature
    );
    // A certificate of another CA.
    let stranger = fixture(&operator());
    let token = sign(&stranger.cert, &stranger.key, &province(), now, 300).unwrap();
    assert!(matches!(
        v.accept(&token, &f.roots, |_| false, now).unwrap_err(),
        LinkError::Certificate(_)
    ));
    assert!(matches!(
        v.accept("v1.x", &f.roots, |_| false, now).unwrap_err(),
        LinkError::Malformed(_)
    ));
    // Too long a validity is refused when signing.
    let e = sign(&f.cert, &f.key, &province(), now, MAX_TTL_SECS + 1).unwrap_err();
    assert!(e.to_string().contains("valid-for"), "{e}");
}

#[test]
fn only_an_operator_certificate_signs_links() {
    let node = Identity::Node {
        region: RegionCode::parse("330100", "r").unwrap(),
    };
    let f = fixture(&node);
    let e = sign(&f.cert, &f.key, &province(), 1_900_000_000, 60).unwrap_err();
    assert!(e.to_string().contains("not an operator"), "{e}");
}

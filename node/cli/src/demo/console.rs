//! The demo's web consoles: the clearing desk at the coordinator and each city's
//! agency console, on `--console-base-port` and the three ports after it, and the login
//! links printed for the province's clearing operator and each city's admin operator.

use std::net::SocketAddr;

use yidi_common::region::RegionCode;

use super::{CITIES, Layout, PROVINCE, pki::Pki};
use yidi_node::{
    console::login,
    identity::{Identity, Role},
};

/// The consoles' addresses: the coordinator's, then Hangzhou's, Ningbo's, Wenzhou's.
pub(super) fn addresses(base: u16) -> (SocketAddr, [SocketAddr; 3]) {
    let at = |k: u16| SocketAddr::from(([127, 0, 0, 1], base + k));
    (at(0), [at(1), at(2), at(3)])
}

/// A login link for `operator` at the console `addr` serving as `console`.
fn link(pki: &Pki, operator: &Identity, console: &Identity, addr: SocketAddr) -> String {
    let made = pki.party(operator).and_then(|p| {
        login::sign(
            &std::fs::read(&p.cert)?,
            &std::fs::read(&p.key)?,
            console,
            chrono::Utc::now().timestamp(),
            login::DEFAULT_TTL_SECS,
        )
    });
    match made {
        Ok(token) => format!("https://{addr}/login?t={token}"),
        Err(e) => format!("<no link: {e:#}>"),
    }
}

/// Prints where the consoles are and a login link for each (valid a few minutes,
/// single use), with the command that prints a fresh one.
pub(super) fn print_links(layout: &Layout, pki: &Pki) {
    let Some((coord, nodes)) = layout.consoles else {
        return;
    };
    let province = RegionCode::parse(PROVINCE, "region").expect("demo province");
    println!(
        "\nWeb consoles (HTTPS with the demo CA: your browser warns; docs/console.md). Each link signs in once within {} minutes:",
        login::DEFAULT_TTL_SECS / 60
    );
    let desk_op = Identity::Operator {
        region: province,
        role: Role::Clearing,
    };
    println!(
        "  clearing desk   {}",
        link(pki, &desk_op, &Identity::Coordinator { province }, coord)
    );
    for (c, addr) in CITIES.iter().zip(nodes) {
        let region = RegionCode::parse(c.region, "region").expect("demo region");
        let op = Identity::Operator {
            region,
            role: Role::Admin,
        };
        println!(
            "  {} {:<9} {}",
            c.region,
            c.name,
            link(pki, &op, &Identity::Node { region }, addr)
        );
    }
    let flags = pki.flags(&desk_op).unwrap_or_default();
    println!(
        "  a fresh link: yidi clearing {flags} console-login --console-url https://{coord}   (yidi admin … console-login for a city)"
    );
}

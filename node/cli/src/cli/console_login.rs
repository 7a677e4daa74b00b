//! `yidi clearing console-login` and `yidi admin console-login`: print a login link for
//! the web console, signed with the operator's own key (yidi_node::console::login). The
//! link is for one console — the coordinator of the operator's province, or the node
//! of the operator's city — expires after `--valid-for` seconds and signs in once.

use std::path::PathBuf;

use clap::Args;

use yidi_node::{
    console::login::{self, DEFAULT_TTL_SECS, MAX_TTL_SECS},
    identity::{CertInfo, Identity},
};

/// Flags of `console-login`.
#[derive(Debug, Clone, Args)]
pub struct ConsoleLoginArgs {
    /// The console's address, e.g. https://127.0.0.1:7180 (the server's console_listen).
    #[arg(long, env = "YIDI_CONSOLE_URL")]
    pub console_url: String,
    /// Seconds the link stays valid (it also signs in only once).
    #[arg(long, default_value_t = DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_SECS))]
    pub valid_for: i64,
}

/// Which console a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The coordinator of the operator's province.
    Coordinator,
    /// The node of the operator's city.
    Node,
}

/// The login link for the operator of `cert`/`key` (PEM files).
pub fn link(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    args: &ConsoleLoginArgs,
    target: Target,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let (Some(cert), Some(key)) = (cert, key) else {
        anyhow::bail!(
            "console-login needs your operator certificate and key: --cert and --key (or YIDI_CERT, YIDI_KEY)"
        );
    };
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("invalid cert: cannot read {}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("invalid key: cannot read {}", key.display()))?;
    let der = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| anyhow::anyhow!("invalid cert: {}: {e}", cert.display()))?
    };
    let info = CertInfo::from_der(&der).map_err(|e| anyhow::anyhow!("invalid cert: {e}"))?;
    let Identity::Operator { region, .. } = info.identity else {
        anyhow::bail!(
            "invalid cert: {} is {}, not an operator; console links are for operators (yidi certs operator)",
            cert.display(),
            info.identity
        );
    };
    let aud = match target {
        Target::Coordinator if region.is_province() => Identity::Coordinator { province: region },
        Target::Coordinator => anyhow::bail!(
            "invalid cert: operator of {region} is a city's; the clearing desk is for the province's operators (yidi admin console-login for the node's console)"
        ),
        Target::Node if !region.is_province() => Identity::Node { region },
        Target::Node => anyhow::bail!(
            "invalid cert: operator of {region} is the province's; a node's console is for its city's operators (yidi clearing console-login for the clearing desk)"
        ),
    };
    let base = args.console_url.trim_end_matches('/');
    anyhow::ensure!(
        base.starts_with("https://"),
        "invalid console-url {base:?}: the console is served over HTTPS, e.g. https://127.0.0.1:7180"
    );
    let token = login::sign(
        &cert_pem,
        &key_pem,
        &aud,
        chrono::Utc::now().timestamp(),
        args.valid_for,
    )?;
    Ok(format!("{base}/login?t={token}"))
}

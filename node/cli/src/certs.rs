//! `yidi certs …`: the federation's own small certificate authority, so that running
//! mutual TLS needs no openssl. It creates the federation CA, issues certificates whose
//! one `urn:yidi:` URI names the holder (see [`yidi_node::identity`]), keeps the revocation
//! list of serials beside the CA, and shows what a certificate file says.
//!
//! Files are written the way a careful operator expects: private keys `0600`, a
//! directory created here `0700`, each file replaced atomically (written beside, then
//! renamed) so that a node watching its certificate never reads half a file.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use chrono::{Datelike, Days, NaiveDate, Utc};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use yidi_common::region::RegionCode;

use yidi_node::identity::{CertInfo, Identity, Role, normalize_serial, validate_institution_code};
/// The revocation list's format is the node's: it reads the list at start and on reload.
pub use yidi_node::revoked::{parse_revoked, read_revoked};

/// The CA's certificate file name inside its directory (also copied next to every
/// certificate issued, since every party needs it to verify the others).
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key file name.
pub const CA_KEY: &str = "ca.key";
/// The revocation list: one serial (hex) per line, `#` starts a comment.
pub const REVOKED: &str = "revoked.txt";

/// Flags of `yidi certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// Where an issued certificate comes from and goes to.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory of the federation CA (ca.crt, ca.key), made by `yidi certs ca`.
    #[arg(long, env = "YIDI_CERTS_CA")]
    pub ca: PathBuf,
    /// Directory to write `<name>.crt` and `<name>.key` into (created 0700 if missing;
    /// ca.crt is copied there too).
    #[arg(long)]
    pub out: PathBuf,
    /// Days the certificate stays valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the federation CA: ca.crt and ca.key (0600) in --out. Refuses to replace
    /// an existing CA key.
    Ca {
        /// Directory for the CA (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
        /// Days the CA certificate stays valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// The CA's common name.
        #[arg(long, default_value = "yidi federation CA")]
        name: String,
    },
    /// Issue a node's certificate (server and client): urn:yidi:node:<region>, DNS
    /// localhost and node-<region>.yidi, IP 127.0.0.1, plus every --san.
    Node {
        /// The node's 6-digit city code, e.g. 330100.
        #[arg(long)]
        region: String,
        #[command(flatten)]
        issue: IssueArgs,
        /// Another DNS name or IP address the node is reached at (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue a hospital's or pharmacy's client certificate:
    /// urn:yidi:institution:<region>:<code>, valid only at the node of <region>.
    Hospital {
        /// The city code of the institution's node.
        #[arg(long)]
        region: String,
        /// The institution code registered at that node, e.g. H33020001.
        #[arg(long)]
        institution: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Issue the provincial coordinator's certificate (server and client):
    /// urn:yidi:coordinator:<province>, DNS localhost and coordinator-<province>.yidi,
    /// IP 127.0.0.1, plus every --san.
    Coordinator {
        /// The province code, e.g. 330000 (000000: the national coordinator).
        #[arg(long)]
        region: String,
        #[command(flatten)]
        issue: IssueArgs,
        /// Another DNS name or IP address the coordinator is reached at (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue an operator's client certificate: urn:yidi:operator:<region>:<role>. The
    /// region is a city code (operating that node) or the province code (operating the
    /// coordinator).
    Operator {
        /// City code of the node, or the province code for the coordinator.
        #[arg(long)]
        region: String,
        /// admin (everything) or clearing (ledgers, statements, clearing rounds).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Revoke a certificate by serial: appends it to revoked.txt in the CA directory.
    /// Copy that file to where each node's and the coordinator's `revoked_file` points;
    /// they re-read it within seconds (or on SIGHUP).
    Revoke {
        /// Directory of the federation CA.
        #[arg(long, env = "YIDI_CERTS_CA")]
        ca: PathBuf,
        /// The serial printed when the certificate was issued (hex; colons allowed).
        serial: String,
        /// Why, kept as a comment in revoked.txt.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show what a certificate file says: identity, serial, validity.
    Show {
        /// A PEM certificate file.
        file: PathBuf,
    },
    /// Connect to a running node or coordinator over mutual TLS and show the
    /// certificate it serves now (e.g. after replacing its files).
    Probe {
        /// host:port (an http:// or https:// prefix is ignored).
        address: String,
        /// The name its certificate must carry, e.g. node-330100.yidi (default: the host).
        #[arg(long)]
        server_name: Option<String>,
        /// The federation CA certificate.
        #[arg(long, env = "YIDI_CA")]
        ca: PathBuf,
        /// Your certificate (any identity of the federation).
        #[arg(long, env = "YIDI_CERT")]
        cert: PathBuf,
        /// Your private key.
        #[arg(long, env = "YIDI_KEY")]
        key: PathBuf,
    },
}

/// Validity of a certificate, in whole days (UTC midnights).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: NaiveDate,
    pub not_after: NaiveDate,
}

impl Validity {
    /// From yesterday (tolerating clocks a little behind) for `days` days from today.
    #[must_use]
    pub fn days(days: u32) -> Self {
        let today = Utc::now().date_naive();
        Self {
            not_before: today - Days::new(1),
            not_after: today + Days::new(u64::from(days)),
        }
    }
}

/// Sets a certificate's validity (rcgen takes `time` dates; this avoids naming them).
fn set_validity(params: &mut CertificateParams, v: Validity) -> anyhow::Result<()> {
    let ymd = |d: NaiveDate| -> anyhow::Result<(i32, u8, u8)> {
        Ok((d.year(), u8::try_from(d.month())?, u8::try_from(d.day())?))
    };
    let (y, m, d) = ymd(v.not_before)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(v.not_after)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

/// What an issue wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Normalised hex serial (as [`normalize_serial`] writes it).
    pub serial: String,
}

/// Creates `dir` 0700 if it is missing; warns when an existing one is open to others,
/// since keys will live there.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & 0o077 != 0 {
                eprintln!(
                    "warning: {} is accessible to other users (mode {:o}); keys belong in a 0700 directory",
                    dir.display(),
                    mode & 0o777
                );
            }
        }
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes `path` atomically: a temporary file beside it (mode `mode` from the start, so
/// a key is never readable by others, not even briefly), fsync, rename.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// A random positive serial of 16 bytes without a leading zero byte.
fn random_serial() -> [u8; 16] {
    let mut b = *uuid::Uuid::new_v4().as_bytes();
    // Positive in DER (top bit clear) and never starting with a zero byte, so the
    // printed hex is exactly what the certificate carries.
    b[0] = (b[0] & 0x3f) | 0x40;
    // A v4 UUID fixes 6 bits; mixing in a second one keeps the serial fully random.
    for (x, y) in b.iter_mut().skip(1).zip(uuid::Uuid::new_v4().as_bytes()) {
        *x ^= y.rotate_left(3);
    }
    b
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "yidi federation");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates the federation CA in `out`: `ca.crt` and `ca.key` (0600).
pub fn create_ca(out: &Path, days: u32, name: &str) -> anyhow::Result<Issued> {
    private_dir(out)?;
    let key_path = out.join(CA_KEY);
    if key_path.exists() {
        bail!(
            "{} already exists: refusing to replace the federation CA (every certificate issued by it would stop working)",
            key_path.display()
        );
    }
    let key = KeyPair::generate().context("generate the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    set_validity(&mut params, Validity::days(days))?;
    let cert = params
        .self_signed(&key)
        .context("sign the CA certificate")?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    let cert_path = out.join(CA_CERT);
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let revoked = out.join(REVOKED);
    if !revoked.exists() {
        write_atomic(
            &revoked,
            b"# Revoked certificate serials (hex), one per line; `yidi certs revoke` appends here.\n",
            0o644,
        )?;
    }
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial: normalize_serial(&hex::encode(serial)).unwrap_or_default(),
    })
}

fn san(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b));
    if !valid {
        bail!("--san {name:?} is neither an IP address nor a DNS name");
    }
    Ok(SanType::DnsName(name.to_ascii_lowercase().try_into()?))
}

/// Issues a certificate for `identity`, signed by the CA in `ca_dir`, into `out` as
/// `<identity file stem>.crt/.key`. Servers (nodes, the coordinator) also get DNS names
/// `localhost` and [`Identity::server_name`], IP 127.0.0.1 and `extra_sans`.
pub fn issue(
    ca_dir: &Path,
    out: &Path,
    identity: &Identity,
    validity: Validity,
    extra_sans: &[String],
) -> anyhow::Result<Issued> {
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_pem = fs::read_to_string(&ca_cert_path).with_context(|| {
        format!(
            "cannot read {} (create the CA with `yidi certs ca --out DIR`)",
            ca_cert_path.display()
        )
    })?;
    let ca_key_pem = fs::read_to_string(ca_dir.join(CA_KEY))
        .with_context(|| format!("cannot read {}", ca_dir.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("the CA key is unreadable")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("the CA certificate is unreadable")?;

    if !identity.is_server() && !extra_sans.is_empty() {
        bail!("--san applies to node and coordinator certificates only");
    }
    let mut sans = vec![SanType::URI(identity.urn().try_into()?)];
    if let Some(name) = identity.server_name() {
        let mut names: BTreeSet<String> = BTreeSet::new();
        names.insert("localhost".to_owned());
        names.insert(name);
        names.insert("127.0.0.1".to_owned());
        names.extend(extra_sans.iter().cloned());
        for n in &names {
            sans.push(san(n)?);
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&format!(
        "yidi {} {}",
        identity.kind(),
        identity.file_stem()
    ));
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if identity.is_server() {
        // Nodes and the coordinator serve and also call other parties.
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        // A hospital's or operator's certificate can never pass for a server.
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    set_validity(&mut params, validity)?;
    let key = KeyPair::generate().context("generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("sign the certificate")?;

    private_dir(out)?;
    let stem = identity.file_stem();
    let key_path = out.join(format!("{stem}.key"));
    let cert_path = out.join(format!("{stem}.crt"));
    // Key first: a watcher that sees the new certificate with the old key fails to
    // load the pair and keeps the previous one until the key arrives a moment later.
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let out_ca = out.join(CA_CERT);
    if fs::read_to_string(&out_ca).ok().as_deref() != Some(ca_pem.as_str()) {
        write_atomic(&out_ca, ca_pem.as_bytes(), 0o644)?;
    }
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial: normalize_serial(&hex::encode(serial)).unwrap_or_default(),
    })
}

/// Appends `serial` to the CA directory's revocation list. Returns false if it was
/// already there.
pub fn revoke(ca_dir: &Path, serial: &str, reason: &str) -> anyhow::Result<bool> {
    let Some(serial) = normalize_serial(serial) else {
        bail!("{serial:?} is not a hexadecimal serial number");
    };
    let path = ca_dir.join(REVOKED);
    if read_revoked(&path).unwrap_or_default().contains(&serial) {
        return Ok(false);
    }
    // A list edited by hand may lack its final newline: appending onto its last line
    // would hide the serial in that line's comment, or merge two serials into one.
    let unterminated = fs::read(&path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let reason = reason.replace(['\n', '\r'], " ");
    let line = if reason.trim().is_empty() {
        format!(
            "{serial}  # revoked {}\n",
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        )
    } else {
        format!(
            "{serial}  # revoked {}: {}\n",
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            reason.trim()
        )
    };
    if unterminated {
        f.write_all(b"\n")?;
    }
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    Ok(true)
}

/// Reads the first certificate of a PEM file and what it says.
pub fn show(file: &Path) -> anyhow::Result<CertInfo> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::pem_file_iter(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .next()
        .with_context(|| format!("{} holds no certificate", file.display()))?
        .with_context(|| format!("{} is not a PEM certificate", file.display()))?;
    CertInfo::from_der(&der).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn print_issued(what: &str, identity: Option<&Identity>, issued: &Issued) {
    println!("{what}");
    if let Some(id) = identity {
        println!("identity: {id}");
    }
    println!("serial:   {}", issued.serial);
    println!("cert:     {}", issued.cert.display());
    println!("key:      {} (0600)", issued.key.display());
}

fn print_info(info: &CertInfo) {
    println!("identity:   {}", info.identity);
    println!("serial:     {}", info.serial);
    println!("subject:    {}", info.subject);
    println!("not before: {}", timestamp(info.not_before));
    println!("not after:  {}", timestamp(info.not_after));
    if info.not_after < Utc::now().timestamp() {
        println!("status:     EXPIRED");
    }
}

/// Runs `yidi certs probe`.
async fn probe(
    address: &str,
    server_name: Option<String>,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let hostport = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/');
    let addr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))?;
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let name = server_name.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
    let info = yidi_node::tls::probe(addr, &name, ca, cert, key).await?;
    print_info(&info);
    Ok(())
}

/// Runs `yidi certs …`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let leaf = |identity: Identity, issue: &IssueArgs, sans: &[String]| -> anyhow::Result<()> {
        let issued = self::issue(
            &issue.ca,
            &issue.out,
            &identity,
            Validity::days(issue.days),
            sans,
        )?;
        print_issued(
            &format!(
                "issued a certificate ({}), valid for {} days",
                identity.kind(),
                issue.days
            ),
            Some(&identity),
            &issued,
        );
        Ok(())
    };
    let city =
        |r: &str| -> anyhow::Result<RegionCode> { Ok(RegionCode::parse_city(r, "--region")?) };
    match args.command {
        CertsCommand::Ca { out, days, name } => {
            let issued = create_ca(&out, days, &name)?;
            print_issued(
                &format!("created the federation CA {name:?}, valid for {days} days"),
                None,
                &issued,
            );
            println!(
                "next:     yidi certs node --ca {} --out DIR --region 330100",
                out.display()
            );
        }
        CertsCommand::Node {
            region,
            issue,
            sans,
        } => {
            leaf(
                Identity::Node {
                    region: city(&region)?,
                },
                &issue,
                &sans,
            )?;
        }
        CertsCommand::Hospital {
            region,
            institution,
            issue,
        } => {
            validate_institution_code(&institution).map_err(anyhow::Error::msg)?;
            leaf(
                Identity::Institution {
                    region: city(&region)?,
                    code: institution,
                },
                &issue,
                &[],
            )?;
        }
        CertsCommand::Coordinator {
            region,
            issue,
            sans,
        } => {
            let province = RegionCode::parse(&region, "--region")?;
            if !province.is_province() && !province.is_national() {
                bail!(
                    "--region {province} is not a province code like 330000 (or 000000, the national coordinator)"
                );
            }
            leaf(Identity::Coordinator { province }, &issue, &sans)?;
        }
        CertsCommand::Operator {
            region,
            role,
            issue,
        } => {
            let region = RegionCode::parse(&region, "--region")?;
            let role = Role::parse(&role).map_err(anyhow::Error::msg)?;
            leaf(Identity::Operator { region, role }, &issue, &[])?;
        }
        CertsCommand::Revoke { ca, serial, reason } => {
            let normalized = normalize_serial(&serial).unwrap_or_default();
            if revoke(&ca, &serial, &reason)? {
                println!(
                    "revoked {normalized}: appended to {}",
                    ca.join(REVOKED).display()
                );
            } else {
                println!(
                    "{normalized} was already revoked in {}",
                    ca.join(REVOKED).display()
                );
            }
            println!(
                "next:     copy {} to every node's and the coordinator's revoked_file (they re-read it within seconds, or on SIGHUP)",
                ca.join(REVOKED).display()
            );
        }
        CertsCommand::Show { file } => print_info(&show(&file)?),
        CertsCommand::Probe {
            address,
            server_name,
            ca,
            cert,
            key,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(probe(&address, server_name, &ca, &cert, &key))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_after_a_hand_edit_without_final_newline_still_revokes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(REVOKED), "ab  # lost laptop").expect("write");
        assert!(revoke(dir.path(), "4F3A", "stolen").expect("revoke"));
        let set = read_revoked(&dir.path().join(REVOKED)).expect("read");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["4f3a", "ab"]);
    }

    #[test]
    fn issues_certificates_naming_their_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        create_ca(&ca, 30, "test CA").expect("ca");
        assert!(
            create_ca(&ca, 30, "again").is_err(),
            "the CA key is never replaced"
        );
        let out = dir.path().join("node");
        let id = Identity::Node {
            region: RegionCode::parse_city("330100", "r").expect("region"),
        };
        let issued =
            issue(&ca, &out, &id, Validity::days(10), &["10.0.0.5".into()]).expect("issue");
        let info = show(&issued.cert).expect("show");
        assert_eq!(info.identity, id);
        assert_eq!(info.serial, issued.serial);
        assert!(out.join(CA_CERT).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_mode = fs::metadata(&issued.key).expect("key").permissions().mode();
            assert_eq!(key_mode & 0o777, 0o600);
            let dir_mode = fs::metadata(&out).expect("dir").permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        assert!(revoke(&ca, &issued.serial, "lost laptop").expect("revoke"));
        assert!(!revoke(&ca, &issued.serial, "").expect("again"));
        assert!(
            read_revoked(&ca.join(REVOKED))
                .expect("read")
                .contains(&issued.serial)
        );
    }
}

//! `yidi directory`: the federation directory from the command line (docs/national.md).
//! `add-region` and `add-province` append one entry to a coordinator's directory file —
//! checked, keeping the file's comments — which the coordinator publishes within two
//! seconds; `show` fetches what a coordinator serves, verifies every document's
//! signature against the federation CA and prints the cities.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use yidi_common::{
    proto::{GetDirectoryRequest, directory_service_client::DirectoryServiceClient},
    region::{RegionCode, province_of},
};
use yidi_node::{
    directory::{Book, DirectoryFile, Verifier},
    tls::ClientArgs,
};

/// Flags of `yidi directory`.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    #[command(subcommand)]
    pub command: DirectoryCommand,
    #[command(flatten)]
    pub tls: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Add a city to a provincial coordinator's directory file.
    AddRegion {
        /// The coordinator's directory file (its `directory_file`).
        #[arg(long)]
        file: PathBuf,
        /// The city's 6-digit code, e.g. 330400.
        #[arg(long)]
        region: String,
        /// The agency's name, e.g. Jiaxing.
        #[arg(long)]
        name: String,
        /// The node's gRPC address, e.g. https://node-330400.example.gov.cn:7101.
        #[arg(long)]
        address: String,
        /// The node's NHSA gateway address, if it serves one.
        #[arg(long)]
        nhsa: Option<String>,
        /// The agency console's address, if it serves one.
        #[arg(long)]
        console: Option<String>,
    },
    /// Add a province to the national level's directory file.
    AddProvince {
        /// The national level's directory file.
        #[arg(long)]
        file: PathBuf,
        /// The province's code, e.g. 320000.
        #[arg(long)]
        province: String,
        /// Its name, e.g. Jiangsu.
        #[arg(long)]
        name: String,
        /// Its coordinator's gRPC address.
        #[arg(long)]
        coordinator: String,
    },
    /// Print the directory a coordinator serves, every document verified.
    Show {
        /// The coordinator's address, e.g. https://127.0.0.1:7100.
        #[arg(long)]
        from: String,
        /// Only these provinces (repeatable).
        #[arg(long)]
        province: Vec<String>,
    },
}

fn toml_str(s: &str) -> String {
    // A TOML basic string: the same escapes as JSON's.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Appends `block` to the file after checking that the result parses with the entry in
/// it; written through a temporary file and a rename.
fn append(file: &Path, block: &str, province: Option<RegionCode>) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let next = format!("{text}{sep}\n{block}");
    DirectoryFile::parse(&next, file, province)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, &next).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

/// Adds a city to a provincial directory file.
pub fn add_region(
    file: &Path,
    region: &str,
    name: &str,
    address: &str,
    nhsa: Option<&str>,
    console: Option<&str>,
) -> anyhow::Result<()> {
    let code = RegionCode::parse_city(region, "region")?;
    let mut block = format!(
        "[[city]]\nregion = {}\nname = {}\naddress = {}\n",
        toml_str(code.as_str()),
        toml_str(name),
        toml_str(address)
    );
    if let Some(n) = nhsa {
        block.push_str(&format!("nhsa = {}\n", toml_str(n)));
    }
    if let Some(c) = console {
        block.push_str(&format!("console = {}\n", toml_str(c)));
    }
    // The file's province is its cities' (a new file's: the new city's).
    let province = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| toml::from_str::<DirectoryFile>(&t).ok())
        .and_then(|f| f.city.first().map(|c| province_of(&c.region)))
        .and_then(|p| RegionCode::parse(&p, "province").ok())
        .unwrap_or_else(|| code.province());
    append(file, &block, Some(province))
}

/// Adds a province to the national level's directory file.
pub fn add_province(
    file: &Path,
    province: &str,
    name: &str,
    coordinator: &str,
) -> anyhow::Result<()> {
    let code = RegionCode::parse(province, "province")?;
    if !code.is_province() || province_of(code.as_str()) != code.as_str() {
        bail!("invalid province: {code} is not a province code like 320000");
    }
    let block = format!(
        "[[province]]\nprovince = {}\nname = {}\ncoordinator = {}\n",
        toml_str(code.as_str()),
        toml_str(name),
        toml_str(coordinator)
    );
    append(file, &block, None)
}

/// Runs `yidi directory`.
pub async fn run(args: DirectoryArgs) -> anyhow::Result<()> {
    match args.command {
        DirectoryCommand::AddRegion {
            file,
            region,
            name,
            address,
            nhsa,
            console,
        } => {
            add_region(
                &file,
                &region,
                &name,
                &address,
                nhsa.as_deref(),
                console.as_deref(),
            )?;
            println!(
                "{region} {name} added to {}; the coordinator publishes it within 2 s",
                file.display()
            );
        }
        DirectoryCommand::AddProvince {
            file,
            province,
            name,
            coordinator,
        } => {
            add_province(&file, &province, &name, &coordinator)?;
            println!(
                "{province} {name} added to {}; the national level fetches its directory at its next refresh",
                file.display()
            );
        }
        DirectoryCommand::Show { from, province } => {
            let verifier = match &args.tls.ca {
                Some(ca) => Verifier::from_files(ca, None)?,
                None => Verifier::Insecure,
            };
            let channel = args
                .tls
                .endpoint(&from)?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {from}"))?;
            let answer = DirectoryServiceClient::new(channel)
                .get_directory(GetDirectoryRequest {
                    known: Vec::new(),
                    provinces: province,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{from}: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            let mut book = Book::default();
            for d in answer.directories {
                let p = d.province.clone();
                if let Err(r) = book.offer(d, &verifier) {
                    println!("REFUSED {p}: {r}");
                }
            }
            for (p, held) in book.held() {
                println!(
                    "province {p}  version {}  issued {}  coordinator {}",
                    held.doc.version,
                    held.doc.issued_at,
                    if held.doc.coordinator.is_empty() {
                        "-"
                    } else {
                        &held.doc.coordinator
                    }
                );
                for e in &held.doc.entries {
                    println!("  {}  {:<12} {}", e.region, e.name, e.address);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_region_appends_a_checked_city_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("directory.toml");
        std::fs::write(
            &file,
            "# Zhejiang's directory\n[[city]]\nregion = \"330100\"\nname = \"Hangzhou\"\naddress = \"https://10.0.0.1:7101\"\n",
        )
        .unwrap();
        add_region(
            &file,
            "330400",
            "Jiaxing",
            "https://10.0.0.4:7101",
            None,
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# Zhejiang's directory\n"), "{text}");
        let parsed = DirectoryFile::parse(
            &text,
            &file,
            Some(RegionCode::parse("330000", "p").unwrap()),
        )
        .unwrap();
        assert_eq!(
            parsed
                .city
                .iter()
                .map(|c| c.region.as_str())
                .collect::<Vec<_>>(),
            ["330100", "330400"]
        );
        // Twice, or a city of another province: refused, the file unchanged.
        let e = add_region(
            &file,
            "330400",
            "Jiaxing",
            "https://10.0.0.4:7101",
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("330400 is listed twice"), "{e}");
        let e = add_region(
            &file,
            "320100",
            "Nanjing",
            "https://10.0.0.5:7101",
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("320100 is not a city of 330000"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    }
}

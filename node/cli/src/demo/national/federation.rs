//! The national demo's federation on disk and on the wire: where every party listens,
//! the directory and identity files, and waiting until the directory holds every province.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use yidi_node::directory;

use super::super::url;

use super::*;

/// Where everything lives: the national coordinator on the base port, the provinces'
/// coordinators on the next two, the four nodes after them.
pub(super) struct Layout {
    pub(super) dir: PathBuf,
    pub(super) national: SocketAddr,
    pub(super) provinces: [SocketAddr; 2],
    pub(super) nodes: [SocketAddr; 4],
}

impl Layout {
    pub(super) fn new(dir: PathBuf, base: u16) -> Self {
        let at = |k: u16| SocketAddr::from(([127, 0, 0, 1], base + k));
        Self {
            dir,
            national: at(0),
            provinces: [at(1), at(2)],
            nodes: [at(3), at(4), at(5), at(6)],
        }
    }

    pub(super) fn province_addr(&self, code: &str) -> SocketAddr {
        if code == PROVINCES[0].code {
            self.provinces[0]
        } else {
            self.provinces[1]
        }
    }
}

/// The files the parties are configured with (see [`configure_federation`]).
pub(super) struct FederationFiles {
    /// Each province's directory file: its cities and where the national level is.
    pub(super) directories: [PathBuf; 2],
    /// The national level's directory file: the provinces' coordinators.
    pub(super) national_directory: PathBuf,
    /// Each province's participants: its nodes.
    pub(super) participants: [PathBuf; 2],
    /// The national coordinator's participants: the provinces' coordinators.
    pub(super) national: PathBuf,
}

pub(super) fn peer_entry(region: &str, name: &str, addr: SocketAddr) -> String {
    format!(
        "\n[[peer]]\nregion = \"{region}\"\nname = \"{name}\"\naddress = \"{}\"\n",
        url(addr)
    )
}

/// The one place the federation's topology is configured: who each node can reach and
/// who each coordinator clears with. Nodes keep no peers file: each follows its
/// province's coordinator, which publishes its cities in the federation directory and
/// relays the other province's through the national coordinator (docs/national.md).
/// The participants files say who each coordinator clears with.
pub(super) fn configure_federation(layout: &Layout) -> anyhow::Result<FederationFiles> {
    let head = "# Written by `yidi demo --national` at every start.\n";
    let files = FederationFiles {
        directories: [
            layout.dir.join("directory-330000.toml"),
            layout.dir.join("directory-320000.toml"),
        ],
        national_directory: layout.dir.join("directory-national.toml"),
        participants: [
            layout.dir.join("participants-330000.toml"),
            layout.dir.join("participants-320000.toml"),
        ],
        national: layout.dir.join("participants-national.toml"),
    };
    let national = url(layout.national);
    for (k, p) in PROVINCES.iter().enumerate() {
        let addrs: Vec<String> = (0..p.cities.len())
            .map(|j| url(layout.nodes[k * 2 + j]))
            .collect();
        let lines: Vec<(&str, &str, &str)> = p
            .cities
            .iter()
            .zip(&addrs)
            .map(|(c, a)| (c.region, c.name, a.as_str()))
            .collect();
        let text = directory::for_cities(Some(&url(layout.provinces[k])), Some(&national), &lines);
        std::fs::write(&files.directories[k], format!("{head}{text}"))?;
        let mut text = String::from(head);
        for (j, c) in p.cities.iter().enumerate() {
            text.push_str(&peer_entry(c.region, c.name, layout.nodes[k * 2 + j]));
        }
        std::fs::write(&files.participants[k], text)?;
    }
    let provinces = directory::DirectoryFile {
        province: PROVINCES
            .iter()
            .zip(layout.provinces)
            .map(|(p, addr)| directory::ProvinceLine {
                province: p.code.to_owned(),
                name: p.name.to_owned(),
                coordinator: url(addr),
            })
            .collect(),
        ..Default::default()
    };
    std::fs::write(
        &files.national_directory,
        format!("{head}{}", provinces.to_toml()),
    )?;
    let mut text = String::from(head);
    for (p, addr) in PROVINCES.iter().zip(layout.provinces) {
        text.push_str(&peer_entry(p.code, p.name, addr));
    }
    std::fs::write(&files.national, text)?;
    Ok(files)
}

/// Waits until every node holds both provinces' directory documents (its cache file,
/// written when a refresh brought something new, lists the provinces it holds), so that
/// the first cross-province visit finds its home node.
pub(super) async fn wait_for_directory(layout: &Layout) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    for (_, c) in cities() {
        let cache = layout.dir.join(c.region).join(directory::CACHE_FILE);
        while !holds_every_province(&cache) {
            if Instant::now() > until {
                bail!(
                    "node {} has not received the federation directory of both provinces within 30 s (see {})",
                    c.region,
                    cache.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Whether a node's directory cache holds a document of every demo province.
pub(super) fn holds_every_province(cache: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(cache) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let held: Vec<&str> = v["directories"]
        .as_array()
        .map(|d| d.iter().filter_map(|e| e["province"].as_str()).collect())
        .unwrap_or_default();
    PROVINCES.iter().all(|p| held.contains(&p.code))
}

/// Prepares `dir` (wiped: a national run always starts from empty stores; only a
/// directory the demo created is wiped).
pub(super) fn prepare(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(super::super::MARKER);
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !marker.exists() {
            bail!(
                "{} exists and was not created by `yidi demo` (no {} file); choose another --data-dir",
                dir.display(),
                super::super::MARKER
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &marker,
        "This directory belongs to `yidi demo --national`; every run wipes it.\n",
    )?;
    Ok(())
}

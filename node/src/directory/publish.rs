//! The coordinator's side of the directory: its directory file (TOML, edited by the
//! operator or `yidi directory add-region`, re-read when it changes), the version it
//! assigns to each change, its signature, and the DirectoryService it serves.
//!
//! A provincial coordinator's file lists its cities (`[[city]]`) and where the national
//! level is (`[national]`); the national level's file lists the provinces
//! (`[[province]]`: code and coordinator address). Either way the file is the one place
//! a city or a province is added.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use yidi_common::{
    proto::{self, directory_service_server::DirectoryService},
    region::RegionCode,
};

use super::{Document, Entry, Held, follow::write_atomic};
use crate::{Error, Result, identity::Identity, tls::TlsState};

/// The TLS name the national level's certificate carries unless the file says otherwise.
pub const NATIONAL_SERVER_NAME: &str = "coordinator-000000.yidi";

/// A city in the directory file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CityLine {
    pub region: String,
    #[serde(default)]
    pub name: String,
    pub address: String,
    /// Defaults to the region's province; any other value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    /// Defaults to `urn:yidi:node:<region>`; any other value is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhsa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

/// A province in the national level's directory file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvinceLine {
    pub province: String,
    #[serde(default)]
    pub name: String,
    /// The provincial coordinator's address.
    pub coordinator: String,
}

/// Where a provincial coordinator finds the national level.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NationalLine {
    pub address: String,
    /// The TLS name of the national level's certificate (default `coordinator-000000.yidi`, the national coordinator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A coordinator's directory file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFile {
    /// This coordinator's own address, published with its province.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national: Option<NationalLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub city: Vec<CityLine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub province: Vec<ProvinceLine>,
}

/// The directory file of a province's coordinator for the given cities (region, name,
/// address), with the national level at `national` if any: the hook `yidi demo` and
/// tests build a federation's directory with.
pub fn for_cities(
    coordinator: Option<&str>,
    national: Option<&str>,
    cities: &[(&str, &str, &str)],
) -> String {
    let file = DirectoryFile {
        coordinator: coordinator.map(str::to_owned),
        national: national.map(|a| NationalLine {
            address: a.to_owned(),
            server_name: None,
        }),
        city: cities
            .iter()
            .map(|(r, n, a)| CityLine {
                region: (*r).to_owned(),
                name: (*n).to_owned(),
                address: (*a).to_owned(),
                province: None,
                identity: None,
                nhsa: None,
                console: None,
            })
            .collect(),
        province: Vec::new(),
    };
    file.to_toml()
}

impl DirectoryFile {
    /// The file's text.
    #[must_use]
    pub fn to_toml(&self) -> String {
        // Serialising plain strings and tables cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a file: every city of `province` (a file listing cities needs
    /// one), every province line a province, nothing twice.
    pub fn parse(text: &str, path: &Path, province: Option<RegionCode>) -> Result<Self> {
        let file: DirectoryFile = toml::from_str(text)
            .map_err(|e| Error::invalid("directory_file", format!("{}: {e}", path.display())))?;
        file.entries(province)?;
        let mut seen = std::collections::HashSet::new();
        for (i, p) in file.province.iter().enumerate() {
            let field = format!("directory_file province[{i}]");
            let code = RegionCode::parse(&p.province, &format!("{field}.province"))?;
            if !code.is_province() {
                return Err(Error::invalid(
                    format!("{field}.province"),
                    format!("{code} is not a province code like 320000"),
                ));
            }
            if !seen.insert(code) {
                return Err(Error::invalid(
                    format!("{field}.province"),
                    format!("{code} is listed twice"),
                ));
            }
            super::check_address(&format!("{field}.coordinator"), &p.coordinator)?;
        }
        if let Some(n) = &file.national {
            super::check_address("directory_file national.address", &n.address)?;
        }
        Ok(file)
    }

    /// Reads and checks a file.
    pub fn read(path: &Path, province: Option<RegionCode>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                "directory_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text, path, province)
    }

    /// The cities as directory entries, sorted by region.
    pub fn entries(&self, province: Option<RegionCode>) -> Result<Vec<Entry>> {
        let mut out: Vec<Entry> = Vec::with_capacity(self.city.len());
        for (i, c) in self.city.iter().enumerate() {
            let field = format!("directory_file city[{i}]");
            let region = RegionCode::parse_city(&c.region, &format!("{field}.region"))?;
            let Some(own) = province else {
                return Err(Error::invalid(
                    format!("{field}.region"),
                    "only a provincial coordinator lists cities; the national level lists provinces ([[province]])",
                ));
            };
            if region.province() != own {
                return Err(Error::invalid(
                    format!("{field}.region"),
                    format!(
                        "{region} is not a city of {own}: a coordinator lists only its own province's cities"
                    ),
                ));
            }
            let mut e = Entry::for_city(region, &c.name, &c.address);
            if let Some(p) = &c.province {
                e.province.clone_from(p);
            }
            if let Some(id) = &c.identity {
                e.identity.clone_from(id);
            }
            e.nhsa = c.nhsa.clone().unwrap_or_default();
            e.console = c.console.clone().unwrap_or_default();
            e.check(&field)?;
            if out.iter().any(|o| o.region == e.region) {
                return Err(Error::invalid(
                    format!("{field}.region"),
                    format!("{region} is listed twice"),
                ));
            }
            out.push(e);
        }
        out.sort_by(|a, b| a.region.cmp(&b.region));
        Ok(out)
    }

    /// The sources this coordinator follows: the national level (a province), or every
    /// province's coordinator (the national level).
    #[must_use]
    pub fn sources(&self) -> Vec<super::Source> {
        let mut out = Vec::new();
        if let Some(n) = &self.national {
            out.push(super::Source {
                address: n.address.clone(),
                server_name: n
                    .server_name
                    .clone()
                    .unwrap_or_else(|| NATIONAL_SERVER_NAME.to_owned()),
            });
        }
        for p in &self.province {
            if let Ok(code) = RegionCode::parse(&p.province, "province") {
                out.push(super::Source {
                    address: p.coordinator.clone(),
                    server_name: Identity::Coordinator { province: code }
                        .server_name()
                        .unwrap_or_default(),
                });
            }
        }
        out
    }
}

/// The version a coordinator last published, kept in its data directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Published {
    version: u64,
    hash: String,
    issued_at: String,
}

/// The coordinator's publisher: reads its file, versions and signs its province's
/// document, and points its follower at the file's sources.
pub struct Publisher {
    province: Option<RegionCode>,
    path: PathBuf,
    state: PathBuf,
    tls: Option<Arc<TlsState>>,
    follower: Arc<super::Follower>,
    modified: Mutex<Option<SystemTime>>,
}

/// The file in a coordinator's data directory holding its last published version.
pub const PUBLISHED_FILE: &str = "directory-published.json";

impl Publisher {
    /// A publisher for the coordinator of `province` (`None`: the national level).
    #[must_use]
    pub fn new(
        province: Option<RegionCode>,
        path: PathBuf,
        data_dir: &Path,
        tls: Option<Arc<TlsState>>,
        follower: Arc<super::Follower>,
    ) -> Self {
        Self {
            province,
            path,
            state: data_dir.join(PUBLISHED_FILE),
            tls,
            follower,
            modified: Mutex::new(None),
        }
    }

    /// Re-reads the file if it changed: a new content gets a new version (greater than
    /// every earlier one, and than the clock's seconds, so that a coordinator that lost
    /// its data directory still publishes versions newer than the nodes hold), signed
    /// and put in force. A broken file leaves the previous directory in force.
    pub fn reload(&self) -> Result<bool> {
        let mtime = std::fs::metadata(&self.path)
            .map_err(|e| {
                Error::invalid(
                    "directory_file",
                    format!("cannot read {}: {e}", self.path.display()),
                )
            })?
            .modified()
            .ok();
        {
            let seen = self
                .modified
                .lock()
                .map_err(|_| Error::Internal("directory lock poisoned".into()))?;
            if mtime.is_some() && *seen == mtime {
                return Ok(false);
            }
        }
        let file = DirectoryFile::read(&self.path, self.province)?;
        self.follower.set_sources(file.sources());
        if let Some(province) = self.province {
            let entries = file.entries(Some(province))?;
            let coordinator = file.coordinator.clone().unwrap_or_default();
            let hash = {
                let mut h = Sha256::new();
                h.update(
                    serde_json::to_vec(&(&coordinator, &entries))
                        .map_err(|e| Error::Internal(e.to_string()))?,
                );
                hex::encode(h.finalize())
            };
            let prior: Published = std::fs::read_to_string(&self.state)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let published = if prior.hash == hash {
                prior
            } else {
                let now = chrono::Utc::now();
                let secs = u64::try_from(now.timestamp()).unwrap_or(0);
                let next = Published {
                    version: (prior.version + 1).max(secs),
                    hash,
                    issued_at: now.to_rfc3339(),
                };
                let text =
                    serde_json::to_vec_pretty(&next).map_err(|e| Error::Internal(e.to_string()))?;
                // Stored before it is served: a restart never reuses a version.
                write_atomic(&self.state, &text)?;
                next
            };
            let doc = Document {
                province: province.to_string(),
                version: published.version,
                issued_at: published.issued_at,
                coordinator,
                entries,
            };
            let signed = match &self.tls {
                Some(t) => {
                    let m = t.current();
                    let (cert, key) = m.own_pem();
                    super::sign(&doc, cert, key)?
                }
                None => super::signed::unsigned(&doc)?,
            };
            tracing::info!(province = %province, version = doc.version, cities = doc.entries.len(), file = %self.path.display(), "directory published");
            self.follower.put_own(Held { doc, signed });
        }
        *self
            .modified
            .lock()
            .map_err(|_| Error::Internal("directory lock poisoned".into()))? = mtime;
        Ok(true)
    }
}

/// DirectoryService: serves what the coordinator's follower holds (its own province's
/// document and the others it relays).
pub struct DirectorySvc {
    follower: Arc<super::Follower>,
}

impl DirectorySvc {
    #[must_use]
    pub fn new(follower: Arc<super::Follower>) -> Self {
        Self { follower }
    }
}

#[tonic::async_trait]
impl DirectoryService for DirectorySvc {
    async fn get_directory(
        &self,
        req: Request<proto::GetDirectoryRequest>,
    ) -> std::result::Result<Response<proto::GetDirectoryResponse>, Status> {
        crate::limits::check(req.get_ref())?;
        let req = req.into_inner();
        let mut known = HashMap::new();
        for (i, k) in req.known.iter().enumerate() {
            RegionCode::parse(&k.province, &format!("known[{i}].province")).map_err(Error::from)?;
            known.insert(k.province.clone(), k.version);
        }
        for (i, p) in req.provinces.iter().enumerate() {
            RegionCode::parse(p, &format!("provinces[{i}]")).map_err(Error::from)?;
        }
        let book = self.follower.book();
        let wanted = |p: &str| req.provinces.is_empty() || req.provinces.iter().any(|w| w == p);
        let mut out = proto::GetDirectoryResponse::default();
        for (province, held) in book.held() {
            if !wanted(province) {
                continue;
            }
            out.current.push(proto::ProvinceVersion {
                province: province.clone(),
                version: held.doc.version,
            });
            if known.get(province).is_none_or(|v| held.doc.version > *v) {
                out.directories.push(held.signed.clone());
            }
        }
        Ok(Response::new(out))
    }
}

/// Keeps a coordinator's directory current until `stop` resolves: its file is re-read
/// every `check` (a change is published at once, no restart), and its sources are
/// asked for what is new every `refresh`.
pub async fn keep_current(
    publisher: Arc<Publisher>,
    follower: Arc<super::Follower>,
    check: std::time::Duration,
    refresh: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut fetched: Option<std::time::Instant> = None;
    loop {
        let p = Arc::clone(&publisher);
        match tokio::task::spawn_blocking(move || p.reload()).await {
            Ok(Ok(true)) => follower.persist().await,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "directory file not reloaded; the directory in force is kept")
            }
            Err(e) => tracing::warn!(error = %e, "directory reload task failed"),
        }
        if fetched.is_none_or(|t| t.elapsed() >= refresh) {
            fetched = Some(std::time::Instant::now());
            if let Err(e) = follower.refresh().await {
                tracing::warn!(error = %e, "directory sources not reached; the documents in force are kept");
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(check) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn zj() -> Option<RegionCode> {
        RegionCode::parse("330000", "p").ok()
    }

    fn refused(text: &str, province: Option<RegionCode>) -> String {
        DirectoryFile::parse(text, Path::new("d.toml"), province)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_directory_file_lists_only_its_own_province_once_each() {
        let hz = "[[city]]\nregion = \"330100\"\naddress = \"https://10.0.0.1:7101\"\n";
        assert!(DirectoryFile::parse(hz, Path::new("d.toml"), zj()).is_ok());
        let e = refused(
            "[[city]]\nregion = \"320100\"\naddress = \"https://10.0.0.1:7101\"\n",
            zj(),
        );
        assert!(
            e.contains("invalid directory_file city[0].region")
                && e.contains("320100 is not a city of 330000"),
            "{e}"
        );
        let e = refused(&format!("{hz}{hz}"), zj());
        assert!(
            e.contains("directory_file city[1].region") && e.contains("330100 is listed twice"),
            "{e}"
        );
        let e = refused(&format!("{hz}identity = \"urn:yidi:node:330200\"\n"), zj());
        assert!(
            e.contains("city[0].identity") && e.contains("must be \"urn:yidi:node:330100\""),
            "{e}"
        );
        let e = refused(hz, None);
        assert!(
            e.contains("only a provincial coordinator lists cities"),
            "{e}"
        );
        let e = refused(
            "[[province]]\nprovince = \"330100\"\ncoordinator = \"https://10.0.0.9:7100\"\n",
            None,
        );
        assert!(
            e.contains("province[0].province") && e.contains("330100 is not a province code"),
            "{e}"
        );
        let e = refused("[[city]]\nregion = \"330100\"\n", zj());
        assert!(e.contains("missing field `address`"), "{e}");
    }

    #[test]
    fn every_change_gets_a_greater_version_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("directory.toml");
        let write = |cities: &[(&str, &str, &str)]| {
            std::fs::write(&file, for_cities(None, None, cities)).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(SystemTime::now() + Duration::from_secs(cities.len() as u64 * 5))
                .unwrap();
        };
        let publisher = || {
            let f = Arc::new(super::super::Follower::new(
                Vec::new(),
                None,
                None,
                Duration::from_secs(1),
                None,
                Some("330000".into()),
            ));
            (
                Publisher::new(zj(), file.clone(), dir.path(), None, Arc::clone(&f)),
                f,
            )
        };
        write(&[("330100", "Hangzhou", "https://10.0.0.1:7101")]);
        let (p, f) = publisher();
        assert!(p.reload().unwrap());
        let v1 = f.versions()["330000"];
        // Unchanged file: not re-read; the same content re-read keeps its version.
        assert!(!p.reload().unwrap());
        let (p2, f2) = publisher();
        assert!(p2.reload().unwrap());
        assert_eq!(f2.versions()["330000"], v1);
        // A city added: a greater version, kept across a restart.
        write(&[
            ("330100", "Hangzhou", "https://10.0.0.1:7101"),
            ("330200", "Ningbo", "https://10.0.0.2:7101"),
        ]);
        assert!(p.reload().unwrap());
        let v2 = f.versions()["330000"];
        assert!(v2 > v1, "{v2} > {v1}");
        let (p3, f3) = publisher();
        assert!(p3.reload().unwrap());
        assert_eq!(f3.versions()["330000"], v2);
        assert_eq!(
            f3.book()
                .entries(None)
                .iter()
                .map(|e| e.region.as_str())
                .collect::<Vec<_>>(),
            ["330100", "330200"]
        );
        // A broken file: refused, the directory in force kept.
        std::fs::write(&file, "[[city]]\nregion = \"999\"\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        assert!(p.reload().is_err());
        assert_eq!(f.versions()["330000"], v2);
        assert_eq!(f.book().entries(None).len(), 2);
    }
}

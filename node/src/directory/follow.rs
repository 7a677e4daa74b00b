//! Following the directory: fetch documents from sources, keep the newest verified one
//! of each province, cache them on disk, refresh them periodically. A node follows its
//! provincial coordinator; a provincial coordinator follows the national level; the
//! national level follows every province's coordinator. The cache lets a node start
//! (and keep routing) while its coordinator is down; every cached document is verified
//! again when it is read, so a cache file edited by hand is no back door.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use yidi_common::proto::{
    GetDirectoryRequest, ProvinceVersion, SignedDirectory,
    directory_service_client::DirectoryServiceClient,
};

use super::{Book, Held, Offered, Refusal, Verifier};
use crate::{Error, Result, metrics::DirectoryCounters, tls::TlsState};

/// Where directory documents are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The server's gRPC address.
    pub address: String,
    /// The TLS name its certificate must carry, e.g. `coordinator-330000.yidi`.
    pub server_name: String,
}

/// The cache file's form of a signed document.
#[derive(Serialize, Deserialize)]
struct Cached {
    province: String,
    version: u64,
    document: String,
    signature: String,
    certificate: String,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    directories: Vec<Cached>,
}

/// A party's view of the directory.
pub struct Follower {
    sources: RwLock<Vec<Source>>,
    book: RwLock<Book>,
    cache: Option<PathBuf>,
    tls: Option<Arc<TlsState>>,
    timeout: Duration,
    counters: Option<DirectoryCounters>,
    /// A province whose documents come from this process itself (a provincial
    /// coordinator's own): those a source sends are ignored.
    own_province: Option<String>,
    changes: watch::Sender<u64>,
}

impl Follower {
    /// A follower of `sources`, caching into `cache`, verifying with the federation CA
    /// of `tls` (`None`: insecure mode), counting refusals in `counters`.
    #[must_use]
    pub fn new(
        sources: Vec<Source>,
        cache: Option<PathBuf>,
        tls: Option<Arc<TlsState>>,
        timeout: Duration,
        counters: Option<DirectoryCounters>,
        own_province: Option<String>,
    ) -> Self {
        Self {
            sources: RwLock::new(sources),
            book: RwLock::new(Book::default()),
            cache,
            tls,
            timeout,
            counters,
            own_province,
            changes: watch::channel(0).0,
        }
    }

    /// The verifier in force now (a reloaded CA or revocation list applies at once).
    #[must_use]
    pub fn verifier(&self) -> Verifier {
        Verifier::from_tls(self.tls.as_deref())
    }

    /// A copy of what is held.
    #[must_use]
    pub fn book(&self) -> Book {
        self.book.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Changes (by a count) whenever a document comes into force.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Replaces the sources (a coordinator's directory file was reloaded).
    pub fn set_sources(&self, sources: Vec<Source>) {
        if let Ok(mut s) = self.sources.write() {
            *s = sources;
        }
    }

    /// The sources in force.
    #[must_use]
    pub fn sources(&self) -> Vec<Source> {
        self.sources.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn put_own(&self, held: Held) {
        if let Some(c) = &self.counters {
            c.version(&held.doc.province, held.doc.version);
        }
        if let Ok(mut b) = self.book.write() {
            b.put_own(held);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Offers documents from `from`; refusals are logged and counted and change
    /// nothing. Returns how many came into force.
    pub fn offer_all(&self, docs: Vec<SignedDirectory>, from: &str) -> usize {
        let verifier = self.verifier();
        let mut accepted = 0;
        for d in docs {
            if self.own_province.as_deref() == Some(d.province.as_str()) {
                continue;
            }
            let outcome = match self.book.write() {
                Ok(mut b) => b.offer(d, &verifier),
                Err(_) => return accepted,
            };
            match outcome {
                Ok(Offered::Accepted { province, version }) => {
                    tracing::info!(%province, version, from, "directory of a province updated");
                    if let Some(c) = &self.counters {
                        c.version(&province, version);
                    }
                    accepted += 1;
                }
                Ok(Offered::Unchanged) => {}
                Err(r) => self.refused(&r, from),
            }
        }
        if accepted > 0 {
            self.changes.send_modify(|n| *n += 1);
        }
        accepted
    }

    fn refused(&self, r: &Refusal, from: &str) {
        tracing::warn!(reason = r.label(), from, error = %r, "directory document refused; the one in force is kept");
        if let Some(c) = &self.counters {
            c.refused(r.label());
        }
    }

    /// Reads the cache (if any) and puts its documents, verified again, in force.
    /// Returns how many were accepted.
    pub fn load_cache(&self) -> usize {
        let Some(path) = &self.cache else {
            return 0;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(cache = %path.display(), error = %e, "directory cache unreadable; waiting for the coordinator");
                return 0;
            }
        };
        let file: CacheFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(cache = %path.display(), error = %e, "directory cache unreadable; waiting for the coordinator");
                if let Some(c) = &self.counters {
                    c.refused("invalid");
                }
                return 0;
            }
        };
        let docs = file
            .directories
            .into_iter()
            .filter_map(|c| {
                Some(SignedDirectory {
                    province: c.province,
                    version: c.version,
                    document: B64.decode(c.document).ok()?,
                    signature: B64.decode(c.signature).ok()?,
                    certificate: B64.decode(c.certificate).ok()?,
                })
            })
            .collect();
        let n = self.offer_all(docs, "cache");
        if n > 0 {
            tracing::info!(provinces = n, cache = %path.display(), "directory loaded from the cache");
        }
        n
    }

    fn write_cache(path: &Path, book: &Book) -> Result<()> {
        let file = CacheFile {
            directories: book
                .held()
                .values()
                .map(|h| Cached {
                    province: h.signed.province.clone(),
                    version: h.signed.version,
                    document: B64.encode(&h.signed.document),
                    signature: B64.encode(&h.signed.signature),
                    certificate: B64.encode(&h.signed.certificate),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::Internal(format!("directory cache: {e}")))?;
        write_atomic(path, text.as_bytes())
    }

    async fn save_cache(&self) {
        let Some(path) = self.cache.clone() else {
            return;
        };
        let book = self.book();
        let saved =
            tokio::task::spawn_blocking(move || Self::write_cache(&path, &book).map(|()| path))
                .await;
        match saved {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "directory cache not written"),
            Err(e) => tracing::warn!(error = %e, "directory cache task failed"),
        }
    }

    /// Asks one source for what is newer than what is held.
    async fn fetch(&self, src: &Source) -> Result<Vec<SignedDirectory>> {
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.current().client_config(&src.server_name));
        let channel = crate::tls::endpoint(&src.address, tls)
            .map_err(|e| Error::invalid("directory", format!("{:?}: {e}", src.address)))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("directory {}: {e}", src.address)))?;
        let known = self
            .book()
            .versions()
            .into_iter()
            .map(|(province, version)| ProvinceVersion { province, version })
            .collect();
        let answer = DirectoryServiceClient::new(channel)
            .get_directory(GetDirectoryRequest {
                known,
                provinces: Vec::new(),
            })
            .await
            .map_err(|s| {
                Error::Unavailable(format!("directory {}: {}", src.address, s.message()))
            })?;
        Ok(answer.into_inner().directories)
    }

    /// Fetches from every source once. Ok with the number of documents that came into
    /// force when at least one source answered; the last error when none did (what is
    /// held stays in force either way).
    pub async fn refresh(&self) -> Result<usize> {
        let sources = self.sources();
        let mut answered = sources.is_empty();
        let mut last = None;
        let mut accepted = 0;
        for src in &sources {
            match self.fetch(src).await {
                Ok(docs) => {
                    answered = true;
                    accepted += self.offer_all(docs, &src.address);
                }
                Err(e) => {
                    if let Some(c) = &self.counters {
                        c.fetch_failed();
                    }
                    last = Some(e);
                }
            }
        }
        if accepted > 0 {
            self.save_cache().await;
        }
        match (answered, last) {
            (false, Some(e)) => Err(e),
            _ => Ok(accepted),
        }
    }

    /// Refreshes now and then every `interval` until `stop` resolves; `changed` is
    /// called after every refresh that brought something new.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
        changed: impl Fn(&Book) + Send,
    ) {
        tokio::pin!(stop);
        loop {
            match self.refresh().await {
                Ok(n) if n > 0 => changed(&self.book()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "directory not refreshed; the one in force (or cached) is kept")
                }
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Writes the cache now (a coordinator after signing its own document).
    pub(crate) async fn persist(&self) {
        self.save_cache().await;
    }

    /// The versions held, by province.
    #[must_use]
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.book().versions()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a crash
/// leaves the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Internal(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

//! The peer directory: region code → address and name of the other nodes, read from a
//! TOML file and re-read when the file changes (no restart), and from the federation
//! directory (crate::directory, put in force by the node with [`PeerDirectory::set_directory`]). Each peer gets one lazily
//! connected HTTP/2 channel that every call reuses, with a connect timeout and a
//! deadline on every request, so a slow peer never holds up anyone for long.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

mod claims;

pub use claims::{MAX_BATCH, NOT_COMMITTED, SENDERS};

use serde::Deserialize;
use tonic::transport::{Channel, ClientTlsConfig};
use yidi_common::{proto::peer_service_client::PeerServiceClient, region::RegionCode};

use crate::tls::TlsState;

use crate::{
    Error, Result,
    clock::clock_ms,
    metrics::{ObservedChannel, PeerCalls},
};

/// The peer file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    #[serde(default)]
    peer: Vec<PeerEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerEntry {
    region: String,
    #[serde(default)]
    name: String,
    address: String,
}

/// One reachable peer.
#[derive(Clone)]
pub struct Peer {
    pub region: RegionCode,
    pub name: String,
    pub address: String,
    channel: Channel,
    /// The node's peer-call counters, once the node has set them.
    observer: Arc<OnceLock<PeerCalls>>,
    /// When the peer last answered a call (see [`Peer::answered_within`]).
    answered: Arc<AtomicU64>,
    /// The node's clock, sent on every call once the node has set it.
    clock: Arc<OnceLock<crate::clock::Clock>>,
    /// The claims waiting to be sent to this node (see [`Peer::commit_claim`]).
    claims: Arc<claims::Gatherer>,
}

impl Peer {
    /// A PeerService client on the shared channel; its calls are counted in the node's
    /// metrics.
    #[must_use]
    pub fn client(&self) -> PeerServiceClient<ObservedChannel> {
        PeerServiceClient::new(
            ObservedChannel::new(
                self.channel.clone(),
                self.region,
                self.observer.get().cloned(),
                Arc::clone(&self.answered),
            )
            .with_clock(self.clock.get().cloned()),
        )
    }

    /// Whether the peer answered a call (any answer, errors included) within `d`.
    #[must_use]
    pub fn answered_within(&self, d: Duration) -> bool {
        let at = self.answered.load(Ordering::Relaxed);
        at != 0 && clock_ms().saturating_sub(at) <= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// The shared channel, for other services of the same node.
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// The directory; cheap to share.
pub struct PeerDirectory {
    own: RegionCode,
    path: Option<PathBuf>,
    call_timeout: Duration,
    peers: RwLock<Arc<HashMap<RegionCode, Peer>>>,
    /// The peers file's entries and the federation directory's, merged into `peers`.
    from_file: Mutex<Vec<(RegionCode, PeerEntry)>>,
    from_directory: Mutex<Vec<(RegionCode, PeerEntry)>>,
    modified: Mutex<Option<SystemTime>>,
    /// The node's peer-call counters (see [`PeerDirectory::observe`]).
    observer: Arc<OnceLock<PeerCalls>>,
    /// The node's clock (see [`PeerDirectory::stamp_clock`]).
    clock: Arc<OnceLock<crate::clock::Clock>>,
    /// The TLS material channels are built with (`None`: plain text, insecure mode),
    /// and the generation of it the current channels use.
    tls: Option<Arc<TlsState>>,
    tls_generation: Mutex<u64>,
}

/// A lazily connected channel to a node. With TLS, the peer must present the
/// certificate of `node-<region>.yidi` (whatever address it is dialled at) and this
/// party's own certificate is its client identity.
fn endpoint(
    address: &str,
    call_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel> {
    let ep = crate::tls::endpoint(address, tls)
        .map_err(|e| Error::invalid("peers_file", format!("bad peer address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

impl PeerDirectory {
    /// Loads the directory (empty when no file is configured), plain text.
    pub fn load(own: RegionCode, path: Option<&Path>, call_timeout: Duration) -> Result<Self> {
        Self::load_secure(own, path, call_timeout, None)
    }

    /// Loads the directory; with `tls`, every channel is mutual TLS and is rebuilt when
    /// the TLS material is reloaded.
    pub fn load_secure(
        own: RegionCode,
        path: Option<&Path>,
        call_timeout: Duration,
        tls: Option<Arc<TlsState>>,
    ) -> Result<Self> {
        let tls_generation = Mutex::new(tls.as_ref().map_or(0, |t| *t.subscribe().borrow()));
        let dir = Self {
            tls,
            tls_generation,
            own,
            path: path.map(Path::to_path_buf),
            call_timeout,
            peers: RwLock::new(Arc::new(HashMap::new())),
            from_file: Mutex::new(Vec::new()),
            from_directory: Mutex::new(Vec::new()),
            modified: Mutex::new(None),
            observer: Arc::new(OnceLock::new()),
            clock: Arc::new(OnceLock::new()),
        };
        dir.reload()?;
        Ok(dir)
    }

    fn parse(&self, text: &str, path: &Path) -> Result<Vec<(RegionCode, PeerEntry)>> {
        let file: PeerFile = toml::from_str(text)
            .map_err(|e| Error::invalid("peers_file", format!("{}: {e}", path.display())))?;
        let mut out = Vec::new();
        for (i, p) in file.peer.into_iter().enumerate() {
            let field = format!("peers_file peer[{i}].region");
            // The national coordinator's participants are the provinces' coordinators.
            let region = if self.own.is_national() {
                let r = RegionCode::parse(&p.region, &field)?;
                if !r.is_province() {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "{r} is not a province code like 330000: the national coordinator's participants are provinces"
                        ),
                    ));
                }
                r
            } else {
                RegionCode::parse_city(&p.region, &field)?
            };
            if out.iter().any(|(r, _)| *r == region) {
                return Err(Error::invalid(
                    format!("peers_file peer[{i}].region"),
                    format!("{region} is listed twice"),
                ));
            }
            out.push((region, p));
        }
        Ok(out)
    }

    /// Re-reads the file; channels of unchanged peers are kept. Returns whether anything
    /// changed. A broken file leaves the previous directory in force.
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid("peers_file", format!("{}: {e}", path.display())))?;
        let mtime = meta.modified().ok();
        {
            let seen = self
                .modified
                .lock()
                .map_err(|_| Error::Internal("peer directory lock poisoned".into()))?;
            if mtime.is_some() && *seen == mtime {
                return Ok(false);
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("peers_file", format!("{}: {e}", path.display())))?;
        let entries = self.parse(&text, path)?;
        *self
            .from_file
            .lock()
            .map_err(|_| Error::Internal("peer directory lock poisoned".into()))? = entries;
        let changed = self.rebuild()?;
        *self
            .modified
            .lock()
            .map_err(|_| Error::Internal("peer directory lock poisoned".into()))? = mtime;
        if changed {
            tracing::info!(peers = self.snapshot().len(), file = %path.display(), "peer directory loaded");
        }
        Ok(changed)
    }

    /// Puts the federation directory's nodes (crate::directory: region, name, address)
    /// in force beside the peers file's; a region in both is dialled at the peers
    /// file's address (a hand-kept entry is a deliberate override). Returns whether
    /// anything changed.
    pub fn set_directory(&self, nodes: Vec<(RegionCode, String, String)>) -> Result<bool> {
        let entries = nodes
            .into_iter()
            .map(|(region, name, address)| {
                (
                    region,
                    PeerEntry {
                        region: region.to_string(),
                        name,
                        address,
                    },
                )
            })
            .collect();
        *self
            .from_directory
            .lock()
            .map_err(|_| Error::Internal("peer directory lock poisoned".into()))? = entries;
        let changed = self.rebuild()?;
        if changed {
            tracing::info!(
                peers = self.snapshot().len(),
                "peer directory updated from the federation directory"
            );
        }
        Ok(changed)
    }

    /// Rebuilds the peers from the file's and the federation directory's entries;
    /// channels of unchanged peers are kept.
    fn rebuild(&self) -> Result<bool> {
        let mut merged: HashMap<RegionCode, PeerEntry> = HashMap::new();
        let lock = |_| Error::Internal("peer directory lock poisoned".into());
        for (region, e) in self.from_directory.lock().map_err(lock)?.iter() {
            merged.insert(*region, e.clone());
        }
        for (region, e) in self.from_file.lock().map_err(lock)?.iter() {
            merged.insert(*region, e.clone());
        }
        let current = self.snapshot();
        let mut next = HashMap::new();
        for (region, e) in merged {
            if region == self.own {
                continue;
            }
            let peer = match current.get(&region) {
                Some(p) if p.address == e.address => Peer {
                    name: if e.name.is_empty() {
                        region.to_string()
                    } else {
                        e.name.clone()
                    },
                    ..p.clone()
                },
                _ => Peer {
                    region,
                    name: if e.name.is_empty() {
                        region.to_string()
                    } else {
                        e.name.clone()
                    },
                    channel: endpoint(&e.address, self.call_timeout, self.client_tls(region))?,
                    address: e.address.clone(),
                    observer: Arc::clone(&self.observer),
                    answered: Arc::default(),
                    clock: Arc::clone(&self.clock),
                    claims: Arc::default(),
                },
            };
            next.insert(region, peer);
        }
        let changed = next.len() != current.len()
            || next.iter().any(|(r, p)| {
                current
                    .get(r)
                    .is_none_or(|c| c.address != p.address || c.name != p.name)
            });
        *self
            .peers
            .write()
            .map_err(|_| Error::Internal("peer directory lock poisoned".into()))? = Arc::new(next);
        if changed {
            self.precreate_series();
        }
        Ok(changed)
    }

    fn snapshot(&self) -> Arc<HashMap<RegionCode, Peer>> {
        self.peers
            .read()
            .map(|g| Arc::clone(&g))
            .unwrap_or_default()
    }

    /// The peer for a home region; UNAVAILABLE when it is not in the directory.
    pub fn get(&self, region: &str) -> Result<Peer> {
        let code = if self.own.is_national() {
            RegionCode::parse(region, "region")?
        } else {
            RegionCode::parse_city(region, "home_region")?
        };
        self.snapshot().get(&code).cloned().ok_or_else(|| {
            Error::Unavailable(format!(
                "region {region} is not in this node's peer directory; ask the operator to add it"
            ))
        })
    }

    /// The deadline of every call through these channels.
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Counts every call made through [`Peer::client`] in `calls` from now on (peers
    /// loaded later included). Only the first call has an effect.
    pub fn observe(&self, calls: PeerCalls) {
        let _ = self.observer.set(calls);
        self.precreate_series();
    }

    /// Gives every peer's call and error series a 0 in the counters (see
    /// [`PeerCalls::precreate`]); a peer added by a reload gets them then.
    fn precreate_series(&self) {
        if let Some(calls) = self.observer.get() {
            for region in self.snapshot().keys() {
                calls.precreate(region.as_str());
            }
        }
    }

    /// Sends `clock`'s reading with every call made through [`Peer::client`] from now on,
    /// for the peer to check against its own. Only the first call has an effect.
    pub fn stamp_clock(&self, clock: crate::clock::Clock) {
        let _ = self.clock.set(clock);
    }

    /// Every peer.
    #[must_use]
    pub fn all(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.snapshot().values().cloned().collect();
        v.sort_by_key(|p| p.region);
        v
    }

    /// The client TLS for calling the node of `region`, from the material in force.
    fn client_tls(&self, region: RegionCode) -> Option<ClientTlsConfig> {
        self.tls.as_ref().map(|t| {
            // A province (the national coordinator's participant) is served by its
            // coordinator, whose certificate names it as one.
            let name = if region.is_province() {
                crate::identity::Identity::Coordinator { province: region }
                    .server_name()
                    .unwrap_or_default()
            } else {
                crate::identity::node_server_name(region)
            };
            t.current().client_config(&name)
        })
    }

    /// Rebuilds every channel if the TLS material changed since they were built, so
    /// that new connections present the new certificate. Calls in flight finish on the
    /// old channels.
    pub fn refresh_tls(&self) -> Result<bool> {
        let Some(tls) = &self.tls else {
            return Ok(false);
        };
        let generation = *tls.subscribe().borrow();
        {
            let mut seen = self
                .tls_generation
                .lock()
                .map_err(|_| Error::Internal("peer directory lock poisoned".into()))?;
            if *seen == generation {
                return Ok(false);
            }
            *seen = generation;
        }
        let current = self.snapshot();
        let mut next = HashMap::with_capacity(current.len());
        for (region, p) in current.iter() {
            next.insert(
                *region,
                Peer {
                    channel: endpoint(&p.address, self.call_timeout, self.client_tls(*region))?,
                    ..p.clone()
                },
            );
        }
        *self
            .peers
            .write()
            .map_err(|_| Error::Internal("peer directory lock poisoned".into()))? = Arc::new(next);
        tracing::info!(
            peers = current.len(),
            "peer channels rebuilt with the reloaded certificate"
        );
        Ok(true)
    }

    /// Re-reads the file whenever it changes, until `stop` resolves.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        if self.path.is_none() && self.tls.is_none() {
            return;
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "peer directory not reloaded; keeping the previous one")
                }
                Err(e) => tracing::warn!(error = %e, "peer directory reload task failed"),
                Ok(Ok(_)) => {}
            }
            if let Err(e) = self.refresh_tls() {
                tracing::warn!(error = %e, "peer channels not rebuilt after a TLS reload");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_peer_gets_its_series_at_zero_also_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.toml");
        let peer = |r: &str, port: u16| {
            format!("[[peer]]\nregion = \"{r}\"\naddress = \"127.0.0.1:{port}\"\n")
        };
        std::fs::write(&path, peer("330200", 7102)).unwrap();
        let own = RegionCode::parse_city("330100", "region").unwrap();
        let peers = PeerDirectory::load(own, Some(&path), Duration::from_secs(1)).unwrap();
        let m = crate::metrics::NodeMetrics::new("330100");
        peers.observe(m.peer_calls());
        let line = |peer: &str| {
            format!(
                r#"yidi_peer_call_errors_total{{region="330100",peer="{peer}",method="CommitClaim",code="unavailable"}} 0"#
            )
        };
        let text = m.encode();
        assert!(text.contains(&line("330200")), "{text}");
        assert!(!text.contains("330300"), "{text}");

        std::fs::write(&path, peer("330200", 7102) + &peer("330300", 7103)).unwrap();
        // A later modification time, whatever the file system's time resolution.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        assert!(peers.reload().unwrap());
        let text = m.encode();
        assert!(text.contains(&line("330300")), "{text}");
        assert!(
            text.contains(
                r#"yidi_peer_calls_total{region="330100",peer="330300",method="GetPolicy"} 0"#
            ),
            "{text}"
        );
    }
}

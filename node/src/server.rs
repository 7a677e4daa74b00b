//! Serving a node: opens the store, assembles the gRPC services (plus the standard health
//! and reflection services) and runs them on a listener until shutdown, then drains
//! in-flight requests for at most the configured deadline — tonic alone would wait
//! forever for a stuck client.

use std::{future::Future, sync::Arc};

use std::time::Duration;

use tokio::{
    net::TcpListener,
    sync::{Notify, oneshot, watch},
};
use tonic::transport::Server;
use yidi_common::{
    period,
    proto::{
        admin_service_server::AdminServiceServer,
        clearing_participant_server::ClearingParticipantServer,
        hospital_service_server::HospitalServiceServer, peer_service_server::PeerServiceServer,
    },
};

use crate::{
    Error, Result,
    config::NodeConfig,
    context::NodeState,
    peers::PeerDirectory,
    policy_cache::PolicyCache,
    service::{admin::AdminSvc, clearing::ClearingSvc, hospital::HospitalSvc, peer::PeerSvc},
    settlement::{outbox, treatment},
    store::Store,
};

// Moved to `serving` (shared with the coordinator); kept here for callers of the old path.
pub use crate::serving::{MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, init_tracing, shutdown_signal};

/// How often pending intents are re-checked with their home nodes.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// A future that resolves once `rx` turns true (the node is stopping).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs a node on `listener` until `shutdown` resolves, then drains for at most
/// `config.drain`. Tests call this directly with a `127.0.0.1:0` listener.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    config: NodeConfig,
) -> Result<()> {
    // Transport first: a node that may not serve (plain text off loopback, missing or
    // wrong certificate) must fail before it opens its store.
    let listen = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
    let tls = crate::tls::start(
        &config.security,
        listen,
        crate::identity::Identity::Node {
            region: config.region,
        },
        "node",
    )
    .await?;
    // Held until this function returns: no second node and no load-persons on this
    // directory meanwhile.
    let _dir_lock = crate::store::lock::lock_dir(&config.data_dir)?;
    let dir = config.data_dir.clone();
    let readers = config.read_connections;
    let region = config.region.to_string();
    let check = config.check_store;
    let queue = crate::store::WriteQueue {
        capacity: config.write_queue_capacity,
        full_wait: config.write_queue_wait,
        hold: Arc::clone(&config.hooks.hold_store_writer),
        holding: Arc::clone(&config.hooks.store_writer_holding),
    };
    let store =
        tokio::task::spawn_blocking(move || Store::open_node(&dir, readers, &region, check, queue))
            .await
            .map_err(|e| Error::Internal(format!("store open task failed: {e}")))??;
    let peers = {
        let (region, path, timeout) = (
            config.region,
            config.peers_file.clone(),
            config.peer_timeout,
        );
        let peer_tls = tls.clone();
        tokio::task::spawn_blocking(move || {
            PeerDirectory::load_secure(region, path.as_deref(), timeout, peer_tls)
        })
        .await
        .map_err(|e| Error::Internal(format!("peer directory task failed: {e}")))??
    };
    let policies = load_peer_policies(&store).await?;
    let metrics = Arc::new(crate::metrics::NodeMetrics::new(config.region.as_str()));
    peers.observe(metrics.peer_calls());
    let clock = crate::clock::Clock::new(
        Arc::clone(&config.hooks.clock_offset_ms),
        config.max_clock_skew,
    );
    peers.stamp_clock(clock.clone());
    let directory = start_directory(&config, tls.clone(), &metrics, &peers).await?;
    // Bound before anything is served so that a taken port fails the start, not later.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(config.prebound.take_or(addr, crate::metrics::bind).await?),
        None => None,
    };
    let nhsa_listener = match config.nhsa_listen {
        Some(addr) => Some(
            config
                .prebound
                .take_or(addr, |addr| async move {
                    TcpListener::bind(addr).await.map_err(|e| {
                        Error::Unavailable(format!(
                            "cannot listen for the NHSA gateway on {addr}: {e}"
                        ))
                    })
                })
                .await?,
        ),
        None => None,
    };
    let console_listener = match (config.console_listen, &tls) {
        (None, _) => None,
        (Some(addr), Some(_)) => Some(config.prebound.take_or(addr, crate::console::bind).await?),
        (Some(_), None) => return Err(crate::console::needs_tls()),
    };
    let admission = crate::admission::Admission::new(&config.admission, &metrics.admission());
    let state = Arc::new(NodeState {
        region: config.region,
        name: config.name.clone(),
        store,
        started_at: period::now_rfc3339(),
        peers: Arc::new(peers),
        policies: Arc::new(policies),
        outbox_wake: Notify::new(),
        hooks: config.hooks.clone(),
        clock,
        metrics,
        eligibility_cache: Default::default(),
        settling: Default::default(),
        admission,
    });

    // Background work: peer directory reloads, outbox deliveries, in-doubt recovery.
    let (stop_bg, bg) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Arc::clone(&state.peers).watch(Duration::from_secs(2), stopped(bg.clone())));
    tasks.spawn(outbox::run(Arc::clone(&state), stopped(bg.clone())));
    if let Some(d) = directory {
        let (peers, own) = (Arc::clone(&state.peers), config.region);
        tasks.spawn(
            d.run(config.directory_refresh, stopped(bg.clone()), move |book| {
                apply_directory(&peers, book, own)
            }),
        );
    }
    if let Some(l) = metrics_listener {
        tasks.spawn(crate::metrics::serve_node(
            l,
            stopped(bg.clone()),
            Arc::clone(&state.metrics),
            state.store.clone(),
        ));
    }
    if let Some(t) = &tls {
        // Certificate, CA and revocation list: re-read on change or SIGHUP.
        tasks.spawn(Arc::clone(t).watch(crate::tls::RELOAD_CHECK, stopped(bg.clone())));
    }
    if let (Some(l), Some(t)) = (console_listener, &tls) {
        tasks.spawn(crate::console::serve(
            l,
            stopped(bg.clone()),
            crate::console::agency::console(Arc::clone(&state), Arc::clone(t)),
        ));
    }
    {
        let st = Arc::clone(&state);
        let stop = stopped(bg.clone());
        tasks.spawn(async move {
            tokio::pin!(stop);
            // At start every pending intent is from before the restart: resolve them all.
            let mut min_age = Duration::ZERO;
            loop {
                match treatment::recover(&st, min_age).await {
                    Ok(n) if n > 0 => tracing::info!(resolved = n, "in-doubt claims resolved"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "recovery of in-doubt claims failed"),
                }
                min_age = treatment::RECOVERY_MIN_AGE;
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(RECOVERY_INTERVAL) => {}
                }
            }
        });
    }

    {
        let (st, days) = (Arc::clone(&state), config.request_retention_days);
        let stop = stopped(bg.clone());
        tasks.spawn(async move {
            tokio::pin!(stop);
            loop {
                purge_requests(&st, days).await;
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(crate::store::retention::PURGE_INTERVAL) => {}
                }
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServiceServer<AdminSvc>>().await;
    health
        .set_serving::<HospitalServiceServer<HospitalSvc>>()
        .await;
    health.set_serving::<PeerServiceServer<PeerSvc>>().await;
    health
        .set_serving::<ClearingParticipantServer<ClearingSvc>>()
        .await;
    let (reflection, reflection_v1alpha) = crate::serving::reflection(&[
        yidi_common::proto::admin_service_server::SERVICE_NAME,
        yidi_common::proto::hospital_service_server::SERVICE_NAME,
        yidi_common::proto::peer_service_server::SERVICE_NAME,
        yidi_common::proto::clearing_participant_server::SERVICE_NAME,
    ])?;

    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener: {e}")))?;
    let admin = AdminServiceServer::new(AdminSvc::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let hospital = HospitalServiceServer::new(HospitalSvc::new(Arc::clone(&state)))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let clearing = ClearingParticipantServer::new(ClearingSvc::new(
        Arc::clone(&state),
        config.clearing_auto_confirm,
        config.clearing_step,
    ));
    let peer = tonic::service::interceptor::InterceptedService::new(
        PeerServiceServer::new(PeerSvc::new(Arc::clone(&state)))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        crate::service::peer::clock_check(Arc::clone(&state)),
    );

    // Who may call what: from the caller's certificate (see crate::auth). One layer
    // for gRPC and the NHSA gateway: the same rules and the same rate limit.
    let auth = crate::auth::AuthLayer::new(
        crate::auth::Server::Node {
            region: config.region,
        },
        tls.clone(),
        config.hospital_rate,
    );
    if let Some(l) = nhsa_listener {
        tasks.spawn(crate::nhsa::serve(
            l,
            stopped(bg.clone()),
            config.drain,
            Arc::new(crate::nhsa::Gateway {
                state: Arc::clone(&state),
                auth: auth.clone(),
                tls: tls.clone(),
                tif: config.nhsa_tif.clone(),
                nonces: crate::nhsa::tif::Nonces::default(),
            }),
        ));
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = Server::builder()
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(hospital)
        .add_service(peer)
        .add_service(clearing);
    let server = crate::tls::serve_router(router, listener, tls.clone(), async {
        let _ = stop_rx.await;
    });
    tracing::info!(region = %config.region, name = %config.name, %addr, data_dir = %config.data_dir.display(), "node serving");

    let served =
        crate::serving::serve_until(server, stop_tx, shutdown, config.drain, &stop_bg).await;
    while tasks.join_next().await.is_some() {}
    close_store(&state.store).await;
    served?;
    tracing::info!("node stopped");
    Ok(())
}

/// The federation directory this node follows (None without `directory`): its cache
/// read and put in force before the node serves, so that it routes to every city it
/// knew even while its coordinator is down; the first fetch is the refresh task's.
async fn start_directory(
    config: &NodeConfig,
    tls: Option<Arc<crate::tls::TlsState>>,
    metrics: &crate::metrics::NodeMetrics,
    peers: &PeerDirectory,
) -> Result<Option<Arc<crate::directory::Follower>>> {
    if config.directory.is_empty() {
        return Ok(None);
    }
    // The node's own provincial coordinator serves its directory.
    let server_name = crate::identity::Identity::Coordinator {
        province: config.region.province(),
    }
    .server_name()
    .unwrap_or_default();
    let sources = config
        .directory
        .iter()
        .map(|a| crate::directory::Source {
            address: a.clone(),
            server_name: server_name.clone(),
        })
        .collect();
    let follower = Arc::new(crate::directory::Follower::new(
        sources,
        Some(config.data_dir.join(crate::directory::CACHE_FILE)),
        tls,
        config.peer_timeout,
        Some(metrics.directory()),
        None,
    ));
    let f = Arc::clone(&follower);
    tokio::task::spawn_blocking(move || f.load_cache())
        .await
        .map_err(|e| Error::Internal(format!("directory cache task failed: {e}")))?;
    apply_directory(peers, &follower.book(), config.region);
    Ok(Some(follower))
}

/// Puts the directory's cities (but this node's own) in force in the peer directory.
fn apply_directory(
    peers: &PeerDirectory,
    book: &crate::directory::Book,
    own: yidi_common::region::RegionCode,
) {
    let nodes = book
        .entries(Some(own))
        .into_iter()
        .filter_map(|e| {
            let region = yidi_common::region::RegionCode::parse_city(&e.region, "region").ok()?;
            Some((region, e.name, e.address))
        })
        .collect();
    if let Err(e) = peers.set_directory(nodes) {
        tracing::warn!(error = %e, "federation directory not applied; the peers in force are kept");
    }
}

/// How long a clean stop waits for reads still running before closing the store.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Removes the request records past the idempotency window (`store::retention`), one
/// bounded writer job at a time in the writer's background lane (settlements first),
/// until a job finds fewer than a full chunk expired.
async fn purge_requests(st: &NodeState, days: u32) {
    use crate::store::retention::{PURGE_STEP, cutoff, purge_requests_step};
    let cut = cutoff(st.clock.now(), days);
    loop {
        let c = cut.clone();
        match st
            .store
            .write_background(crate::store::JobKind::Purge, move |conn| {
                purge_requests_step(conn, &c, PURGE_STEP)
            })
            .await
        {
            Ok(n) => {
                st.metrics.requests_purged(n);
                if n < u64::from(PURGE_STEP) {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "request records past the idempotency window not purged");
                return;
            }
        }
    }
}

/// Closes the store before the process ends: without it the process exits with the
/// writer's and readers' connections open, and everything committed since the last
/// checkpoint stays only in `node.db-wal` — lost by whoever copies `node.db` alone.
async fn close_store(store: &Store) {
    if store.close(STORE_CLOSE_WAIT).await {
        tracing::info!(store = %store.path().display(), "store checkpointed and closed");
    } else {
        tracing::warn!(store = %store.path().display(), "store closed without a complete checkpoint; its -wal file holds the rest and the next start checks it");
    }
}

/// Binds the configured address and serves until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<()> {
    let listener = crate::serving::bind(config.listen).await?;
    serve(listener, crate::serving::shutdown_signal(), config).await
}

/// The policy cache, primed with the home regions' policy versions fetched before the
/// last stop: provisional (offline) settlement works right after a restart.
async fn load_peer_policies(store: &Store) -> Result<PolicyCache> {
    let kept = store.read(crate::store::policies::peer_policies).await?;
    let cache = PolicyCache::default();
    for (region, it, version, json) in kept {
        if let Err(e) = cache.insert_json(&region, it, version, &json) {
            // Not fatal: the version is fetched again when the home node answers.
            tracing::warn!(%region, %it, version, error = %e, "a kept peer policy does not parse; skipped");
        }
    }
    Ok(cache)
}

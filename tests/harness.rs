//! In-process nodes for tests. A node is served by the library's `serve` on a listener
//! bound to `127.0.0.1:0` before it starts, so clients can connect at once (no sleeping
//! for readiness), and is stopped through its shutdown future.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use yidi_common::{
    proto::{
        admin_service_client::AdminServiceClient, hospital_service_client::HospitalServiceClient,
        peer_service_client::PeerServiceClient,
    },
    region::RegionCode,
};
use yidi_node::config::NodeConfig;

/// A node running inside the test process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub region: RegionCode,
    pub data_dir: PathBuf,
    /// Client TLS of the helper clients (`admin()`, `hospital()`, `peer()`) for a node
    /// serving mutual TLS (see `crate::pki`); `None`: plain text.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<yidi_node::Result<()>>>,
}

impl TestNode {
    /// Starts a node for `region` storing into `data_dir`.
    pub async fn start(region: &str, data_dir: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::start_on(listener, region, data_dir, |_| {}).await
    }

    /// Starts a node on an already bound listener, letting the caller adjust the config.
    pub async fn start_on(
        listener: TcpListener,
        region: &str,
        data_dir: PathBuf,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let region = RegionCode::parse_city(region, "region").expect("test region");
        let addr = listener.local_addr().expect("local addr");
        let mut config = NodeConfig::new(region, &format!("test-{region}"), data_dir.clone());
        config.listen = addr;
        config.drain = Duration::from_secs(5);
        config.peer_timeout = Duration::from_millis(800);
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(yidi_node::server::serve(
            listener,
            async {
                let _ = stopped.await;
            },
            config,
        ));
        Self {
            addr,
            region,
            data_dir,
            client_tls: None,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// A handle on a node served elsewhere (a `yidi node` child process): the same
    /// clients and fixtures, nothing to stop.
    #[must_use]
    pub fn remote(addr: SocketAddr, region: &str, data_dir: PathBuf) -> Self {
        Self {
            addr,
            region: RegionCode::parse_city(region, "region").expect("test region"),
            data_dir,
            client_tls: None,
            stop: None,
            handle: None,
        }
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel (mutual TLS with [`TestNode::client_tls`] when set).
    pub async fn channel(&self) -> Channel {
        yidi_node::tls::endpoint(&self.url(), self.client_tls.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect to test node")
    }

    /// An AdminService client.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    /// A HospitalService client.
    pub async fn hospital(&self) -> HospitalServiceClient<Channel> {
        HospitalServiceClient::new(self.channel().await)
    }

    /// A PeerService client (as another node would use it).
    pub async fn peer(&self) -> PeerServiceClient<Channel> {
        PeerServiceClient::new(self.channel().await)
    }

    /// Tells the node to stop without waiting for it (it drains meanwhile); `stop`
    /// then waits for its exit.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the node gracefully and waits until it has exited; returns its data dir.
    pub async fn stop(mut self) -> PathBuf {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("node task")
                .expect("node exited cleanly");
        }
        self.data_dir.clone()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Several nodes that know each other: listeners are bound first so that the shared
/// peer directory file can name every address before any node starts.
pub struct Federation {
    pub nodes: Vec<TestNode>,
    pub peers_file: PathBuf,
    pub root: PathBuf,
    addrs: Vec<(String, SocketAddr)>,
}

impl Federation {
    /// Starts one node per region under `root` (`root/<region>`), peers file at
    /// `root/peers.toml`.
    pub async fn start(root: &std::path::Path, regions: &[&str]) -> Self {
        Self::start_with(root, regions, |_, _| {}).await
    }

    /// Like [`Federation::start`], adjusting each node's config.
    pub async fn start_with(
        root: &std::path::Path,
        regions: &[&str],
        adjust: impl Fn(&str, &mut NodeConfig),
    ) -> Self {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for r in regions {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            addrs.push(((*r).to_owned(), l.local_addr().expect("addr")));
            listeners.push(l);
        }
        let peers_file = root.join("peers.toml");
        write_peers(&peers_file, &addrs);
        let mut nodes = Vec::new();
        for (l, r) in listeners.into_iter().zip(regions) {
            let pf = peers_file.clone();
            nodes.push(
                TestNode::start_on(l, r, root.join(r), |c| {
                    c.peers_file = Some(pf);
                    adjust(r, c);
                })
                .await,
            );
        }
        Self {
            nodes,
            peers_file,
            root: root.to_path_buf(),
            addrs,
        }
    }

    /// The node of a region.
    pub fn node(&self, region: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.region.as_str() == region)
            .expect("region in federation")
    }

    /// Stops a node (graceful) and returns its index for [`Federation::restart`].
    pub async fn stop(&mut self, region: &str) -> usize {
        let i = self
            .nodes
            .iter()
            .position(|n| n.region.as_str() == region)
            .expect("region");
        let node = self.nodes.remove(i);
        node.stop().await;
        i
    }

    /// Restarts a stopped node on its old address and data directory.
    pub async fn restart(&mut self, region: &str, adjust: impl FnOnce(&mut NodeConfig)) {
        let addr = self
            .addrs
            .iter()
            .find(|(r, _)| r == region)
            .expect("region")
            .1;
        let l = TcpListener::bind(addr)
            .await
            .expect("rebind the node's address");
        let pf = self.peers_file.clone();
        let node = TestNode::start_on(l, region, self.root.join(region), |c| {
            c.peers_file = Some(pf);
            adjust(c);
        })
        .await;
        self.nodes.push(node);
    }
}

/// Writes a peer directory file for the given addresses.
pub fn write_peers(path: &std::path::Path, addrs: &[(String, SocketAddr)]) {
    let mut text = String::new();
    for (r, a) in addrs {
        text.push_str(&format!(
            "[[peer]]\nregion = \"{r}\"\nname = \"node {r}\"\naddress = \"http://{a}\"\n\n"
        ));
    }
    std::fs::write(path, text).expect("write peers file");
}

/// Noon (UTC+8) on the 15th of `period` (YYYY-MM): a coordinator clock for which that
/// period is the current one.
pub fn mid_period(period: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&format!("{period}-15T12:00:00+08:00"))
        .expect("a period like 2026-05")
        .with_timezone(&chrono::Utc)
}

/// A coordinator running inside the test process.
pub struct TestCoordinator {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Client TLS of [`TestCoordinator::client`] when it serves mutual TLS.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<yidi_node::Result<()>>>,
}

impl TestCoordinator {
    /// Starts the Zhejiang coordinator (330000) over the federation's peers file.
    pub async fn start(data_dir: PathBuf, participants_file: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::start_on(listener, data_dir, participants_file).await
    }

    /// Starts with the coordinator's clock fixed at `now`: which periods it takes for
    /// past, current and future.
    pub async fn start_at(
        data_dir: PathBuf,
        participants_file: PathBuf,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::start_with(listener, data_dir, participants_file, |c| {
            c.clock = yidi_node::coordinator::Clock::fixed(now);
        })
        .await
    }

    /// Starts on a bound listener (a restart reuses the old address).
    pub async fn start_on(
        listener: TcpListener,
        data_dir: PathBuf,
        participants_file: PathBuf,
    ) -> Self {
        Self::start_with(listener, data_dir, participants_file, |_| {}).await
    }

    /// Starts on a bound listener, letting the caller adjust the config (e.g. TLS).
    pub async fn start_with(
        listener: TcpListener,
        data_dir: PathBuf,
        participants_file: PathBuf,
        adjust: impl FnOnce(&mut yidi_node::coordinator::CoordinatorConfig),
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let region = RegionCode::parse("330000", "region").expect("province");
        let mut config = yidi_node::coordinator::CoordinatorConfig::new(
            region,
            data_dir.clone(),
            participants_file,
        );
        config.listen = addr;
        config.call_timeout = Duration::from_millis(800);
        // Tests drive rounds explicitly; the background loop still runs, but rarely.
        config.run_interval = Duration::from_secs(3600);
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(yidi_node::coordinator::serve(
            listener,
            async {
                let _ = stopped.await;
            },
            config,
        ));
        Self {
            addr,
            data_dir,
            client_tls: None,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// A CoordinatorService client.
    pub async fn client(
        &self,
    ) -> yidi_common::proto::coordinator_service_client::CoordinatorServiceClient<Channel> {
        let ch =
            yidi_node::tls::endpoint(&format!("http://{}", self.addr), self.client_tls.clone())
                .expect("url")
                .connect()
                .await
                .expect("connect coordinator");
        yidi_common::proto::coordinator_service_client::CoordinatorServiceClient::new(ch)
    }

    /// Stops the coordinator and starts it again on its data directory, its clock in
    /// the middle of `period` (see [`mid_period`]): the coordinator a month on.
    pub async fn restart_in(self, participants_file: PathBuf, period: &str) -> Self {
        let data_dir = self.data_dir.clone();
        self.stop().await;
        Self::start_at(data_dir, participants_file, mid_period(period)).await
    }

    /// Stops the coordinator and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("coordinator task")
                .expect("coordinator exited cleanly");
        }
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A node's store writer held by its test hook, released when dropped: a test that
/// fails while holding it then fails, instead of hanging in the node's shutdown (which
/// waits for the held writer forever and so never prints the failed assertion).
pub struct HeldWriter {
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HeldWriter {
    /// Holds the writer of the node `hooks` were installed in.
    pub fn hold(hooks: &yidi_node::context::TestHooks) -> Self {
        let hold = std::sync::Arc::clone(&hooks.hold_store_writer);
        hold.store(true, std::sync::atomic::Ordering::SeqCst);
        Self {
            hold,
            holding: std::sync::Arc::clone(&hooks.store_writer_holding),
        }
    }

    /// Whether the writer has taken a request and holds it. Until then a request sent
    /// to it still counts in the queue's depth, so a test that waits for a full queue
    /// must also wait for this, or a later request may take the place it meant to fill
    /// (and wait for the held writer instead of being refused).
    #[must_use]
    pub fn holding(&self) -> bool {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HeldWriter {
    fn drop(&mut self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

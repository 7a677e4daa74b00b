//! In-process nodes for tests. A node is served by the library's `serve` on a listener
//! bound to `127.0.0.1:0` before it starts, so clients can connect at once (no sleeping
//! for readiness), and is stopped through its shutdown future.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use yidi_common::{proto::admin_service_client::AdminServiceClient, region::RegionCode};
use yidi_node::config::NodeConfig;

/// A node running inside the test process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub region: RegionCode,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<yidi_node::Result<()>>>,
}

impl TestNode {
    /// Starts a node for `region` storing into `data_dir`.
    pub async fn start(region: &str, data_dir: PathBuf) -> Self {
        let region = RegionCode::parse_city(region, "region").expect("test region");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut config = NodeConfig::new(region, &format!("test-{region}"), data_dir.clone());
        config.listen = addr;
        config.drain = Duration::from_secs(5);
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
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to test node")
    }

    /// An AdminService client.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
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

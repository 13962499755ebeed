//! A TCP relay between one member and the DCS that can be cut, to isolate that member from the
//! DCS while every other member still reaches it (a network partition around one machine).
//!
//! While cut, the relay behaves like an unreachable peer whose packets are dropped: it accepts
//! connections but forwards nothing in either direction, so requests hang until the client's
//! own timeout. Once healed, whatever was held is delivered, as TCP retransmission would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often a held transfer checks whether the relay was healed.
const HELD_POLL: Duration = Duration::from_millis(10);

/// Relays 127.0.0.1:<port> to an upstream address until dropped.
pub struct DcsRelay {
    port: u16,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl DcsRelay {
    /// Listen on a free loopback port and relay every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> DcsRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind a DCS relay: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("DCS relay address: {e}"))
            .port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, flag.clone()));
            }
        });
        DcsRelay { port, cut, task }
    }

    /// The address members connect to instead of the DCS.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop forwarding (connections stay open, nothing gets through).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forward again, held data first.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for DcsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_while_cut(cut: &AtomicBool) {
    while cut.load(Ordering::SeqCst) {
        tokio::time::sleep(HELD_POLL).await;
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, cut: Arc<AtomicBool>) {
    wait_while_cut(&cut).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, &cut) => {}
        _ = pump(server_read, client_write, &cut) => {}
    }
}

/// Copy one direction, holding each chunk while the relay is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: &AtomicBool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_while_cut(cut).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

//! A TCP relay on loopback that a test can cut, to stand for a network partition between two
//! programs (a control plane and its database): while cut, every relayed connection is closed
//! and new ones are accepted and closed at once, so the client sees its connections fail
//! rather than hang; once mended, new connections are relayed again.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let relay = podgate_testkit::TcpCut::start("127.0.0.1:5432".parse()?).await?;
//! // Point the client at relay.addr(), then:
//! relay.cut();
//! relay.mend();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The relay; it stops when dropped.
#[derive(Debug)]
pub struct TcpCut {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpCut {
    /// Relays connections to a loopback port of its own to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpCut> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the relay")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::channel(false).0);
        let task = tokio::spawn(accept(listener, target, Arc::clone(&cut)));
        Ok(TcpCut { addr, cut, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and closes new ones at once, until [`TcpCut::mend`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays new connections again.
    pub fn mend(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, cut: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        if *cut.borrow() {
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, target, cut.subscribe()));
    }
}

/// Copies both ways until either side closes or the relay is cut; dropping both sockets then
/// closes them.
async fn relay(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server's address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn relays_then_cuts_then_relays_again() {
        let relay = TcpCut::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open).await.unwrap(), b"ping");

        relay.cut();
        // The open connection is closed, and a new one is closed at once.
        assert!(round_trip(&mut open).await.is_err());
        let mut during = TcpStream::connect(relay.addr()).await.unwrap();
        assert!(round_trip(&mut during).await.is_err());

        relay.mend();
        let mut after = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after).await.unwrap(), b"ping");
    }
}

//! A TCP proxy in front of Postgres that a test can cut, as if the database restarted or the
//! network dropped: every open connection is closed and new ones are refused until restored.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct PgProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: connections opened before it close.
    generation: watch::Sender<u64>,
    pub cuts: AtomicU64,
}

impl PgProxy {
    /// Proxies to `target` (host:port).
    pub async fn start(target: String) -> Arc<PgProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let (generation, _) = watch::channel(0u64);
        let proxy = Arc::new(PgProxy {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            generation,
            cuts: AtomicU64::new(0),
        });
        let me = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if !me.up.load(Ordering::SeqCst) {
                    drop(client); // refused: the "server" is down
                    continue;
                }
                let target = target.clone();
                let mut cut = me.generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else { return };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.fetch_add(1, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// A database URL that goes through this proxy.
    pub fn url_for(&self, database_url: &str) -> String {
        let url = reqwest::Url::parse(database_url).expect("database url");
        let mut proxied = url.clone();
        proxied.set_host(Some("127.0.0.1")).unwrap();
        proxied.set_port(Some(self.addr.port())).unwrap();
        proxied.to_string()
    }
}

/// host:port of a database URL.
pub fn target_of(database_url: &str) -> String {
    let url = reqwest::Url::parse(database_url).expect("database url");
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432))
}

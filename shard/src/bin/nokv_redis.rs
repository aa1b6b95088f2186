//! `nokv-redis`: a standalone Redis gateway in front of a NoKV cluster. It parses RESP with
//! the gateway crate's sessions and sends every read and write through a
//! `nokv_client::Client` to the regions' leaders (`docs/client.md`).

use clap::Parser;
use nokv_client::{Client, ClientOptions};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "nokv-redis",
    version,
    about = "A Redis gateway in front of a NoKV cluster"
)]
struct Args {
    /// The coordinators (host:port, comma-separated; the leader is followed).
    #[arg(long, value_delimiter = ',', required = true)]
    coordinator: Vec<String>,
    /// Where Redis clients connect.
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: String,
    /// The cluster's id (the stores' and coordinator's `--cluster-id`).
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// Deadline of one command's call to the cluster, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Most client connections at once.
    #[arg(long, default_value_t = 10_000)]
    max_clients: usize,
    /// Password clients must AUTH with (none: no AUTH needed).
    #[arg(long)]
    requirepass: Option<String>,
    /// A named user, NAME:PASSWORD or NAME:PASSWORD:readonly (no writes); repeat for more. With users and no --requirepass every client must AUTH NAME PASSWORD.
    #[arg(long = "user", value_name = "NAME:PASSWORD[:readonly]")]
    users: Vec<String>,
    /// Serve clients over TLS only (1.2 and 1.3) with this PEM certificate chain; needs --tls-key-file.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert-file.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Talk to the stores' RPC ports over mutual TLS, as stores started with --tls-cluster
    /// need: this gateway presents its --tls-cert-file certificate (which the cluster's CA
    /// must have signed) and checks the stores' against --tls-ca-cert-file.
    #[arg(long, requires_all = ["tls_cert_file", "tls_ca_cert_file"])]
    tls_cluster: bool,
    /// The PEM CA certificate(s) the stores' certificates chain to (with --tls-cluster).
    #[arg(long, value_name = "FILE", requires = "tls_cluster")]
    tls_ca_cert_file: Option<std::path::PathBuf>,
    /// The name every store's certificate carries, when not each store's IP address (with
    /// --tls-cluster).
    #[arg(long, value_name = "NAME", requires = "tls_cluster")]
    tls_peer_name: Option<String>,
    /// Protected mode, as Redis': without --requirepass, clients connecting from anywhere but the loopback interface get -DENIED and are disconnected.
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = ["yes", "no"])]
    protected_mode: String,
}

fn main() {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    if let Err(e) = run(args) {
        eprintln!("nokv-redis: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let connector = match (
        &args.tls_cert_file,
        &args.tls_key_file,
        &args.tls_ca_cert_file,
    ) {
        (Some(cert), Some(key), Some(ca)) if args.tls_cluster => Some(
            nokv_shard::tls::ClusterTls::load(cert, key, ca, args.tls_peer_name.as_deref())
                .map_err(|e| e.to_string())?
                .store_connector(),
        ),
        _ => None,
    };
    let opts = ClientOptions {
        cluster_id: args.cluster_id,
        call_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        connector,
        ..ClientOptions::default()
    };
    let client = Client::new(args.coordinator.clone(), opts).map_err(|e| e.to_string())?;
    // Routes are loaded now if the cluster answers; otherwise at the first command.
    if let Err(e) = client.refresh_routes() {
        tracing::warn!(error = %e, "no routes yet; commands will ask the coordinator");
    }
    let wrap: Option<nokv_client::gateway::Wrap> = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = nokv_shard::tls::server_config(cert, key).map_err(|e| e.to_string())?;
            Some(Arc::new(move |socket| {
                let conn =
                    rustls::ServerConnection::new(tls.clone()).map_err(std::io::Error::other)?;
                Ok(Box::new(rustls::StreamOwned::new(conn, socket)))
            }))
        }
        _ => None,
    };
    let listener =
        TcpListener::bind(&args.listen).map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let config = nokv_gateway::Config {
        requirepass: args.requirepass.map(String::into_bytes),
        protected_mode: args.protected_mode == "yes",
        users: args
            .users
            .iter()
            .map(|u| nokv_gateway::session::User::parse(u).map_err(|e| format!("--user {e}")))
            .collect::<Result<Vec<_>, String>>()?,
        port: local.port(),
        max_clients: args.max_clients,
        ..nokv_gateway::Config::default()
    };
    println!("nokv-redis listening on {local}");
    tracing::info!(addr = %local, coordinators = ?args.coordinator, "nokv-redis serving");
    nokv_client::gateway::serve_with(
        listener,
        Arc::new(client),
        config,
        args.max_clients,
        stop,
        wrap,
    )
    .map_err(|e| format!("serve: {e}"))
}

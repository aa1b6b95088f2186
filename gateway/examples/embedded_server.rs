//! Serves one embedded `nokv::Db` over RESP on 127.0.0.1 so redis-cli and real
//! clients can talk to the gateway before the glommio server exists.
//!
//! ```text
//! cargo run -p nokv-gateway --example embedded_server -- --dir ./data --port 6380
//! redis-cli -p 6380 set hello world
//! ```

#[path = "../tests/support/server.rs"]
mod server;

use nokv_gateway::session::Config;
use nokv_gateway::store::DbStore;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dir = "./nokv-redis-data".to_string();
    let mut port: u16 = 6380;
    let mut requirepass = None;
    let mut max_clients = 128usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => dir = value()?,
            "--port" => port = value()?.parse()?,
            "--requirepass" => requirepass = Some(value()?.into_bytes()),
            "--max-clients" => max_clients = value()?.parse()?,
            other => {
                return Err(format!(
                    "unknown argument {other} (use --dir, --port, --requirepass, --max-clients)"
                )
                .into())
            }
        }
    }
    let clock: Arc<dyn nokv::clock::Clock> = Arc::new(nokv::clock::SystemClock);
    let opts = nokv::Options {
        clock: clock.clone(),
        ..nokv::Options::default()
    };
    let db = nokv::Db::open(&dir, opts)?;
    let store = Arc::new(DbStore::new(db, clock));
    let config = Config {
        requirepass,
        port,
        max_clients,
        ..Config::default()
    };
    let server = server::Server::start(store, config, port, max_clients)?;
    eprintln!(
        "nokv gateway (embedded) listening on {} (data in {dir})",
        server.addr()
    );
    server.wait();
    Ok(())
}

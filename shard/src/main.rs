//! `nokv-server`: a NoKV node speaking the Redis protocol.

use clap::Parser;

mod config;
mod error;
mod event;
mod layout;
mod node;
mod route;
mod view;

fn init_logging() {
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_thread_names(true)
        .init();
}

fn main() {
    let flags = config::Flags::parse();
    init_logging();
    let result = config::Settings::resolve(flags).and_then(node::run);
    if let Err(e) = result {
        tracing::error!(error = %e, "nokv-server failed");
        eprintln!("nokv-server: error: {e}");
        std::process::exit(1);
    }
}

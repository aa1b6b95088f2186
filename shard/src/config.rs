//! Command-line flags, the optional config file (`key = value` lines), and the
//! settings they resolve to. Flags override the file; the file overrides defaults.

use crate::error::{Error, Result};
use clap::Parser;
use nokv::Durability;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Command-line flags of `nokv-server`.
#[derive(Debug, Parser)]
#[command(
    name = "nokv-server",
    version,
    about = "NoKV node: a Redis-protocol key-value server, one pinned executor per core",
    long_about = "NoKV node: a Redis-protocol key-value server.\n\n\
        Each core runs one pinned glommio executor that owns its regions (Raft groups, \
        single replica for now), its own storage engine under <workdir>/core-<n>/, and \
        its share of client connections. An empty workdir is bootstrapped with the Redis \
        hash-slot space pre-split into regions spread over the cores; a restart recovers \
        that layout from the workdir.\n\n\
        Example: nokv-server --workdir ./data   then   redis-cli -p 6380 set hello world"
)]
pub struct Flags {
    /// Data directory (created if missing; locked while the server runs).
    #[arg(long)]
    pub workdir: PathBuf,
    /// Redis protocol listen address [default: 127.0.0.1:6380]. Port 0 picks a free port.
    #[arg(long)]
    pub redis_addr: Option<String>,
    /// Number of cores (executors) [default: all CPUs; on restart, what the workdir was made with].
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs to pin the executors to, e.g. "0-3" or "0,2,4" [default: every CPU]; core n uses the n-th, round-robin.
    #[arg(long)]
    pub cpus: Option<String>,
    /// sync: acknowledge after fdatasync (default); relaxed: after write(2), a power loss may lose recent writes.
    #[arg(long)]
    pub durability: Option<String>,
    /// Config file of `key = value` lines (keys as the flags without `--`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Most client connections over all cores [default: 10000].
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// Largest bulk argument accepted from clients, bytes [default: 16777216, the engine's largest value].
    #[arg(long)]
    pub max_bulk_bytes: Option<usize>,
    /// Password clients must AUTH with [default: none].
    #[arg(long)]
    pub requirepass: Option<String>,
}

/// Regions each core gets when an empty workdir is bootstrapped.
pub const REGIONS_PER_CORE: usize = 4;

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub workdir: PathBuf,
    /// Redis listen address.
    pub redis_addr: String,
    /// Cores asked for (None: the workdir's, or all CPUs).
    pub cores: Option<usize>,
    /// CPU list to pin to.
    pub cpus: Option<Vec<usize>>,
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Connection limit.
    pub max_clients: usize,
    /// Bulk argument limit.
    pub max_bulk_bytes: usize,
    /// AUTH password.
    pub requirepass: Option<String>,
}

/// Reads `key = value` lines; `#` starts a comment; values may be quoted.
pub fn parse_config_file(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::Config(format!(
                "config line {}: expected `key = value`, got {raw:?}",
                n + 1
            )));
        };
        let key = k.trim().replace('_', "-");
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        out.insert(key, v.to_string());
    }
    Ok(out)
}

/// Parses "0-3,6" into CPU numbers.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let bad = || Error::Config(format!("--cpus {s:?}: expected a list like 0-3,6"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

fn parse_num(name: &str, v: &str) -> Result<usize> {
    v.parse()
        .map_err(|_| Error::Config(format!("{name}: {v:?} is not a number")))
}

impl Settings {
    /// Resolves flags over the config file over defaults.
    pub fn resolve(flags: Flags) -> Result<Settings> {
        let file = match &flags.config {
            None => BTreeMap::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
                    op: "read config",
                    path: p.clone(),
                    source,
                })?;
                parse_config_file(&text)?
            }
        };
        const KNOWN: [&str; 8] = [
            "workdir",
            "redis-addr",
            "cores",
            "cpus",
            "durability",
            "max-clients",
            "max-bulk-bytes",
            "requirepass",
        ];
        if let Some(k) = file.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(Error::Config(format!(
                "unknown config key {k:?} (known: {})",
                KNOWN.join(", ")
            )));
        }
        let get = |k: &str| file.get(k).cloned();
        let cores = match flags.cores {
            Some(n) => Some(n),
            None => get("cores").map(|v| parse_num("cores", &v)).transpose()?,
        };
        if cores == Some(0) {
            return Err(Error::Config("--cores must be at least 1".into()));
        }
        let cpus = flags
            .cpus
            .or_else(|| get("cpus"))
            .map(|s| parse_cpus(&s))
            .transpose()?;
        let durability = match flags
            .durability
            .or_else(|| get("durability"))
            .as_deref()
            .unwrap_or("sync")
        {
            "sync" => Durability::Sync,
            "relaxed" => Durability::Relaxed,
            other => {
                return Err(Error::Config(format!(
                    "--durability {other:?}: expected sync or relaxed"
                )))
            }
        };
        let max_clients = match flags.max_clients {
            Some(n) => n,
            None => get("max-clients")
                .map(|v| parse_num("max-clients", &v))
                .transpose()?
                .unwrap_or(10_000),
        };
        let max_bulk_bytes = match flags.max_bulk_bytes {
            Some(n) => n,
            None => get("max-bulk-bytes")
                .map(|v| parse_num("max-bulk-bytes", &v))
                .transpose()?
                .unwrap_or(16 << 20),
        };
        if max_clients == 0 || max_bulk_bytes == 0 {
            return Err(Error::Config(
                "--max-clients and --max-bulk-bytes must be at least 1".into(),
            ));
        }
        Ok(Settings {
            workdir: flags.workdir,
            redis_addr: flags
                .redis_addr
                .or_else(|| get("redis-addr"))
                .unwrap_or_else(|| "127.0.0.1:6380".to_string()),
            cores,
            cpus,
            durability,
            max_clients,
            max_bulk_bytes,
            requirepass: flags.requirepass.or_else(|| get("requirepass")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_and_cpu_lists() {
        let m = parse_config_file("# c\nredis_addr = \"127.0.0.1:7000\"\ncores=2 # two\n\n")
            .expect("parse");
        assert_eq!(
            m.get("redis-addr").map(String::as_str),
            Some("127.0.0.1:7000")
        );
        assert_eq!(m.get("cores").map(String::as_str), Some("2"));
        assert!(parse_config_file("nonsense").is_err());
        assert_eq!(parse_cpus("0-2,5").expect("cpus"), vec![0, 1, 2, 5]);
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nokv.conf");
        std::fs::write(&path, "cores = 3\ndurability = relaxed\nmax-clients = 7\n").expect("write");
        let flags = Flags::parse_from([
            "nokv-server",
            "--workdir",
            "/tmp/x",
            "--config",
            path.to_str().expect("utf8"),
            "--cores",
            "2",
        ]);
        let s = Settings::resolve(flags).expect("resolve");
        assert_eq!(s.cores, Some(2));
        assert_eq!(s.durability, Durability::Relaxed);
        assert_eq!(s.max_clients, 7);
        assert_eq!(s.redis_addr, "127.0.0.1:6380");
    }
}

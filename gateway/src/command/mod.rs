//! The command table: names, arity, flags, key positions, and what COMMAND returns.
//!
//! The data in [`table`] is generated from redis-server 7.0's own COMMAND INFO and
//! COMMAND DOCS (see `gateway/scripts/gen_command_table.py`), so COMMAND INFO and
//! COMMAND DOCS for the supported commands match Redis byte for byte.

pub mod table;

use crate::resp::Reply;

/// One key specification of a command (Redis 7 key specs, `index` + `range` form).
#[derive(Debug)]
pub struct KeySpec {
    /// Free-text notes, if any.
    pub notes: Option<&'static str>,
    /// Flags such as `RW`, `access`, `update`.
    pub flags: &'static [&'static str],
    /// Argument index of the first key.
    pub begin_index: i64,
    /// Last key, relative to the first (-1: up to the end).
    pub last_key: i64,
    /// Step between keys.
    pub key_step: i64,
    /// Limit on the number of keys (0: none).
    pub limit: i64,
}

/// A command or subcommand, as COMMAND INFO describes it.
#[derive(Debug)]
pub struct CommandInfo {
    /// Full lower-case name (`get`, `client|setname`).
    pub name: &'static str,
    /// Redis arity: N means exactly N arguments (name included), -N at least N.
    pub arity: i64,
    /// Command flags (`readonly`, `write`, `fast`, `no_auth`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none).
    pub first_key: i64,
    /// Position of the last key (-1: the last argument).
    pub last_key: i64,
    /// Step between keys.
    pub key_step: i64,
    /// ACL categories.
    pub acl_categories: &'static [&'static str],
    /// Command tips (request/response policies and the like).
    pub tips: &'static [&'static str],
    /// Key specifications.
    pub key_specs: &'static [KeySpec],
    /// Supported subcommands of a container command.
    pub subcommands: &'static [&'static CommandInfo],
}

/// A static reply tree for COMMAND DOCS.
#[derive(Debug)]
pub enum Doc {
    /// A bulk string.
    Bulk(&'static str),
    /// A simple string.
    Simple(&'static str),
    /// An integer.
    Int(i64),
    /// An array.
    Array(&'static [Doc]),
    /// A set.
    Set(&'static [Doc]),
    /// A map.
    Map(&'static [(&'static str, Doc)]),
}

impl Doc {
    /// The reply this tree stands for.
    pub fn to_reply(&self) -> Reply {
        match self {
            Doc::Bulk(s) => Reply::bulk(*s),
            Doc::Simple(s) => Reply::Simple(s.to_string()),
            Doc::Int(i) => Reply::Int(*i),
            Doc::Array(items) => Reply::Array(items.iter().map(Doc::to_reply).collect()),
            Doc::Set(items) => Reply::Set(items.iter().map(Doc::to_reply).collect()),
            Doc::Map(pairs) => Reply::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (Reply::bulk(*k), v.to_reply()))
                    .collect(),
            ),
        }
    }
}

impl CommandInfo {
    /// Whether the command has `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// Whether `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// This command's entry in a COMMAND / COMMAND INFO reply.
    pub fn info_reply(&self) -> Reply {
        let simple_set = |items: &[&str]| {
            Reply::Set(items.iter().map(|s| Reply::Simple(s.to_string())).collect())
        };
        Reply::Array(vec![
            Reply::bulk(self.name),
            Reply::Int(self.arity),
            simple_set(self.flags),
            Reply::Int(self.first_key),
            Reply::Int(self.last_key),
            Reply::Int(self.key_step),
            simple_set(self.acl_categories),
            Reply::Set(self.tips.iter().map(|t| Reply::bulk(*t)).collect()),
            Reply::Set(self.key_specs.iter().map(KeySpec::reply).collect()),
            Reply::Set(self.subcommands.iter().map(|c| c.info_reply()).collect()),
        ])
    }
}

impl KeySpec {
    fn reply(&self) -> Reply {
        let mut pairs = Vec::new();
        if let Some(notes) = self.notes {
            pairs.push((Reply::bulk("notes"), Reply::bulk(notes)));
        }
        pairs.push((
            Reply::bulk("flags"),
            Reply::Set(
                self.flags
                    .iter()
                    .map(|f| Reply::Simple(f.to_string()))
                    .collect(),
            ),
        ));
        pairs.push((
            Reply::bulk("begin_search"),
            Reply::Map(vec![
                (Reply::bulk("type"), Reply::bulk("index")),
                (
                    Reply::bulk("spec"),
                    Reply::Map(vec![(Reply::bulk("index"), Reply::Int(self.begin_index))]),
                ),
            ]),
        ));
        pairs.push((
            Reply::bulk("find_keys"),
            Reply::Map(vec![
                (Reply::bulk("type"), Reply::bulk("range")),
                (
                    Reply::bulk("spec"),
                    Reply::Map(vec![
                        (Reply::bulk("lastkey"), Reply::Int(self.last_key)),
                        (Reply::bulk("keystep"), Reply::Int(self.key_step)),
                        (Reply::bulk("limit"), Reply::Int(self.limit)),
                    ]),
                ),
            ]),
        ));
        Reply::Map(pairs)
    }
}

/// What the first arguments of a request name.
#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    /// A supported command (or subcommand of a container).
    Found(&'static CommandInfo),
    /// No such command.
    Unknown,
    /// A container command with an unsupported subcommand.
    UnknownSubcommand(&'static CommandInfo),
}

/// The top-level command called `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static CommandInfo> {
    table::COMMANDS
        .iter()
        .copied()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Finds the command of a request; containers (CLIENT, CONFIG, COMMAND) resolve their subcommand.
pub fn lookup(args: &[Vec<u8>]) -> Lookup {
    let Some(name) = args.first() else {
        return Lookup::Unknown;
    };
    let Some(cmd) = find(name) else {
        return Lookup::Unknown;
    };
    if cmd.subcommands.is_empty() || args.len() < 2 {
        return Lookup::Found(cmd);
    }
    let sub = &args[1];
    let found = cmd.subcommands.iter().copied().find(|s| {
        s.name
            .split_once('|')
            .is_some_and(|(_, n)| n.as_bytes().eq_ignore_ascii_case(sub))
    });
    match found {
        Some(s) => Lookup::Found(s),
        None => Lookup::UnknownSubcommand(cmd),
    }
}

/// Finds a command or `container|sub` by its full name (COMMAND INFO / DOCS arguments).
pub fn find_full(name: &[u8]) -> Option<&'static CommandInfo> {
    let lower = name.to_ascii_lowercase();
    match lower.iter().position(|&b| b == b'|') {
        None => find(&lower),
        Some(i) => find(&lower[..i])?
            .subcommands
            .iter()
            .copied()
            .find(|s| s.name.as_bytes() == lower.as_slice()),
    }
}

/// The COMMAND DOCS entry of a top-level command.
pub fn docs(name: &[u8]) -> Option<(&'static str, &'static Doc)> {
    let lower = name.to_ascii_lowercase();
    table::DOCS
        .iter()
        .find(|(n, _)| n.as_bytes() == lower.as_slice())
        .map(|(n, d)| (*n, d))
}

/// Every supported command's full name (COMMAND LIST), subcommands after their container.
pub fn all_names() -> Vec<&'static str> {
    let mut out = Vec::new();
    for c in table::COMMANDS {
        out.push(c.name);
        out.extend(c.subcommands.iter().map(|s| s.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::Protocol;

    fn a(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn lookup_resolves_containers() {
        assert!(matches!(lookup(&a(&["GET", "k"])), Lookup::Found(c) if c.name == "get"));
        assert!(
            matches!(lookup(&a(&["client", "SETNAME", "x"])), Lookup::Found(c) if c.name == "client|setname")
        );
        assert!(matches!(lookup(&a(&["client"])), Lookup::Found(c) if c.name == "client"));
        assert!(
            matches!(lookup(&a(&["client", "kill"])), Lookup::UnknownSubcommand(c) if c.name == "client")
        );
        assert!(matches!(lookup(&a(&["nosuch"])), Lookup::Unknown));
        assert!(find_full(b"CONFIG|GET").is_some());
        assert!(find_full(b"config|set").is_none());
    }

    #[test]
    fn arity_rules() {
        let get = find(b"get").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let set = find(b"set").unwrap();
        assert!(set.arity_ok(3) && set.arity_ok(9) && !set.arity_ok(2));
    }

    #[test]
    fn command_info_get_matches_redis() {
        let bytes = Reply::Array(vec![find(b"get").unwrap().info_reply()])
            .to_bytes(Protocol::Resp2)
            .unwrap();
        // Captured from redis-server 7.0.15: COMMAND INFO get.
        let redis = b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*3\r\n+@read\r\n+@string\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n";
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(redis)
        );
    }

    #[test]
    fn every_command_has_docs() {
        for c in table::COMMANDS {
            assert!(docs(c.name.as_bytes()).is_some(), "{}", c.name);
        }
    }
}

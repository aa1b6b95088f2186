//! Writes the seed corpus of the gateway's fuzz targets (`corpus/<target>/`): request
//! streams a client sends, and the binary commands and replies a session produces for them.
//! Run from `gateway/fuzz/`: `cargo run --example seeds`.

use std::cell::{Cell, RefCell};
use std::path::Path;

use nokv_gateway::exec;
use nokv_gateway::resp::encode_request;
use nokv_gateway::store::MemView;
use nokv_gateway::{Backend, Config, ReadOp, Reply, Session, Shared, WriteCommand};

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn multibulk(cmds: &[&[&str]]) -> Vec<u8> {
    cmds.iter().flat_map(|c| encode_request(c)).collect()
}

/// Records the binary encodings of what the session asks for and gets back.
struct Recorder {
    view: RefCell<MemView>,
    version: Cell<u64>,
    seen: RefCell<Vec<(u8, Vec<u8>)>>,
}

impl Backend for Recorder {
    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }

    fn read(&self, op: &ReadOp) -> Reply {
        let r = exec::read(op, &*self.view.borrow(), self.now_ms());
        self.seen.borrow_mut().push((1, op.encode()));
        self.seen.borrow_mut().push((2, r.to_binary()));
        r
    }

    fn write(&self, cmd: &WriteCommand) -> Reply {
        let v = self.version.get() + 1;
        self.version.set(v);
        let r = exec::apply(cmd, &mut *self.view.borrow_mut(), v);
        self.seen.borrow_mut().push((0, cmd.encode()));
        self.seen.borrow_mut().push((2, r.to_binary()));
        r
    }
}

fn main() {
    let strings = multibulk(&[
        &["SET", "k", "v"],
        &["SET", "n", "10", "EX", "100"],
        &["INCRBY", "n", "5"],
        &["INCRBYFLOAT", "n", "1.5"],
        &["APPEND", "k", "more"],
        &["MGET", "k", "n", "missing"],
        &["MSET", "a", "1", "b", "2"],
        &["GETEX", "a", "PX", "5000"],
        &["DEL", "b"],
        &["TTL", "n"],
    ]);
    let hashes = multibulk(&[
        &["HSET", "h", "f1", "v1", "f2", "v2"],
        &["HGETALL", "h"],
        &["HINCRBY", "h", "c", "3"],
        &["HSCAN", "h", "0", "MATCH", "f*", "COUNT", "1"],
        &["SCAN", "0", "MATCH", "*", "COUNT", "2", "TYPE", "hash"],
        &["KEYS", "h*"],
        &["TYPE", "h"],
        &["EXPIRE", "h", "10", "NX"],
    ]);
    let conn = multibulk(&[
        &["HELLO", "3", "SETNAME", "fuzz"],
        &["HGETALL", "h"],
        &["CLIENT", "INFO"],
        &["CONFIG", "GET", "maxmemory"],
        &["COMMAND", "INFO", "get"],
        &["PING", "hi"],
        &["ECHO", "x"],
        &["DBSIZE"],
        &["QUIT"],
    ]);
    let inline =
        b"PING\r\nSET \"a b\" 'c\\'d'\r\nGET \"\\x41\\n\"\r\n\r\n*0\r\n*-1\r\nEXISTS a\n".to_vec();
    let auth = multibulk(&[
        &["GET", "k"],
        &["AUTH", "secret"],
        &["SET", "k", "v"],
        &["GET", "k"],
    ]);
    let bad = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n+PING\r\n".to_vec();
    let big = multibulk(&[&["SET", "big", &"x".repeat(300)], &["STRLEN", "big"]]);

    for (name, stream) in [
        ("strings", &strings),
        ("hashes", &hashes),
        ("connection", &conn),
        ("inline", &inline),
        ("auth", &auth),
        ("protocol-error", &bad),
        ("big", &big),
    ] {
        for (prefix, flags) in [("whole", [0u8, 0]), ("chunked", [7u8, 0])] {
            let seed = [flags.as_slice(), stream].concat();
            save("resp_parse", &format!("{prefix}-{name}"), &seed);
            save("session", &format!("{prefix}-{name}"), &seed);
        }
    }
    save(
        "session",
        "with-password",
        &[[0u8, 1].as_slice(), &auth].concat(),
    );
    save(
        "resp_parse",
        "small-limits-unauth",
        &[[3u8, 3].as_slice(), &big].concat(),
    );

    // Binary commands and replies, as a session hands them to a store.
    let rec = Recorder {
        view: RefCell::new(MemView::default()),
        version: Cell::new(1),
        seen: RefCell::new(Vec::new()),
    };
    let shared = Shared::new(Config::default(), rec.now_ms());
    let mut s = Session::new(shared, "c".into(), "s".into(), rec.now_ms());
    for stream in [&strings, &hashes] {
        s.feed(stream).expect("feed");
        s.run(&rec);
    }
    let mut n = 0;
    for (sel, bytes) in rec.seen.borrow().iter() {
        n += 1;
        save(
            "command_codec",
            &format!("{sel}-{n:02}"),
            &[[*sel].as_slice(), bytes].concat(),
        );
    }
    println!("seeds written under corpus/");
}

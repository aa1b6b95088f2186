//! A client connection (`Session`) fed arbitrary bytes in arbitrary pieces, driven against
//! an in-memory key space (`MemView`): parsing, the command table, every command's
//! argument checks and execution, reply encoding in RESP2 and RESP3 (HELLO switches).
//!
//! Input: `[chunking seed u8][flags u8][stream bytes]`. Flags bit 0: the server has a
//! password (`secret`), so the client starts unauthenticated.
//!
//! Checks: no panic; the session stops at its buffer limits; everything it writes is a
//! sequence of well-formed RESP frames (no reply may break the client's framing, whatever
//! the keys, values and arguments hold).
#![no_main]

use std::cell::{Cell, RefCell};

use libfuzzer_sys::fuzz_target;
use nokv_gateway::exec;
use nokv_gateway::store::MemView;
use nokv_gateway::{Backend, Config, ReadOp, Reply, Session, Shared, State, WriteCommand};
use nokv_gateway_fuzz::{check_resp_stream, chunks};

const NOW_MS: u64 = 1_700_000_000_000;

struct MemBackend {
    view: RefCell<MemView>,
    version: Cell<u64>,
}

impl Backend for MemBackend {
    fn now_ms(&self) -> u64 {
        NOW_MS
    }

    fn read(&self, op: &ReadOp) -> Reply {
        exec::read(op, &*self.view.borrow(), NOW_MS)
    }

    fn write(&self, cmd: &WriteCommand) -> Reply {
        let v = self.version.get() + 1;
        self.version.set(v);
        exec::apply(cmd, &mut *self.view.borrow_mut(), v)
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, flags, stream @ ..] = data else {
        return;
    };
    let config = Config {
        requirepass: (flags & 1 == 1).then(|| b"secret".to_vec()),
        max_query_buffer_bytes: 1 << 16,
        max_output_bytes: 1 << 20,
        max_pipeline_depth: 64,
        ..Config::default()
    };
    let shared = Shared::new(config, NOW_MS);
    let mut s = Session::new(
        shared,
        "127.0.0.1:50000".into(),
        "127.0.0.1:6380".into(),
        NOW_MS,
    );
    let backend = MemBackend {
        view: RefCell::new(MemView::default()),
        version: Cell::new(1),
    };
    let mut out = Vec::new();
    for piece in chunks(stream, *seed) {
        if s.feed(piece).is_err() {
            break;
        }
        s.run(&backend);
        // Each round parses at least one request (the budget was renewed) or stops.
        while s.state() == State::Open && s.budget_exhausted() {
            out.extend_from_slice(&s.take_output());
            s.resume();
            s.run(&backend);
        }
        out.extend_from_slice(&s.take_output());
        if s.state() != State::Open {
            break;
        }
    }
    out.extend_from_slice(&s.take_output());
    if let Err(e) = check_resp_stream(&out) {
        panic!(
            "malformed reply stream: {e}\n{:?}",
            String::from_utf8_lossy(&out)
        );
    }
});

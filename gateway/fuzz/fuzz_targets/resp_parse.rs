//! The RESP request parser (`resp::parse_request`) fed a client's bytes in arbitrary
//! pieces, as a session buffers them, against the same bytes parsed at once.
//!
//! Input: `[chunking seed u8][flags u8][stream bytes]`. Flags bit 0: small limits (bulk
//! length, argument count, inline length); bit 1: an unauthenticated client.
//!
//! Checks: no panic; every step consumes at least one byte and no more than it has; the
//! requests parsed do not depend on how the bytes arrived (only the "too big" errors may
//! come earlier when a long line arrives in pieces, as in Redis); every request
//! re-encodes as a multibulk that parses back to the same arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_gateway::resp::{encode_request, parse_request, Limits, Parsed};
use nokv_gateway::Error;
use nokv_gateway_fuzz::chunks;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Request(Vec<Vec<u8>>),
    Empty(usize),
}

/// Errors whose timing depends on how much of a line has arrived.
fn chunk_dependent(msg: &str) -> bool {
    msg.starts_with("too big")
}

/// Parses what `buf[*pos..]` holds; `Err` carries the protocol error text.
fn drain(
    buf: &[u8],
    pos: &mut usize,
    limits: &Limits,
    unauth: bool,
    out: &mut Vec<Step>,
) -> Result<(), String> {
    // Each round consumes at least one byte or stops.
    loop {
        let rest = &buf[*pos..];
        match parse_request(rest, limits, unauth) {
            Ok(Parsed::Incomplete) => return Ok(()),
            Ok(Parsed::Empty { consumed }) => {
                assert!(
                    consumed > 0 && consumed <= rest.len(),
                    "bad consumed {consumed}"
                );
                out.push(Step::Empty(consumed));
                *pos += consumed;
            }
            Ok(Parsed::Request { args, consumed }) => {
                assert!(
                    consumed > 0 && consumed <= rest.len(),
                    "bad consumed {consumed}"
                );
                assert!(!args.is_empty(), "a request without arguments");
                out.push(Step::Request(args));
                *pos += consumed;
            }
            Err(Error::Protocol(m)) => return Err(m),
            Err(other) => panic!("parse_request failed with a non-protocol error: {other}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, flags, stream @ ..] = data else {
        return;
    };
    let limits = if flags & 1 == 1 {
        Limits {
            max_bulk_bytes: 64,
            max_args: 8,
            max_inline_bytes: 256,
        }
    } else {
        Limits::default()
    };
    let unauth = flags & 2 == 2;

    let mut whole = Vec::new();
    let mut pos = 0;
    let whole_end = drain(stream, &mut pos, &limits, unauth, &mut whole);

    let mut inc = Vec::new();
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut inc_end = Ok(());
    for piece in chunks(stream, *seed) {
        buf.extend_from_slice(piece);
        inc_end = drain(&buf, &mut pos, &limits, unauth, &mut inc);
        if inc_end.is_err() {
            break;
        }
    }

    let common = inc.len().min(whole.len());
    assert_eq!(
        inc[..common],
        whole[..common],
        "the requests depend on the chunking"
    );
    match (&inc_end, &whole_end) {
        (Ok(()), _) => {
            assert_eq!(inc, whole, "the requests depend on the chunking");
            assert_eq!(&inc_end, &whole_end, "the outcome depends on the chunking");
        }
        (Err(m), Err(w)) if inc.len() == whole.len() => {
            assert!(m == w || chunk_dependent(m), "errors differ: {m} / {w}");
        }
        (Err(m), _) => {
            assert!(
                inc.len() <= whole.len(),
                "the requests depend on the chunking"
            );
            assert!(
                chunk_dependent(m),
                "error {m} only when the bytes arrive in pieces"
            );
        }
    }

    for step in &whole {
        let Step::Request(args) = step else { continue };
        let enc = encode_request(args);
        match parse_request(&enc, &Limits::default(), false) {
            Ok(Parsed::Request {
                args: back,
                consumed,
            }) => {
                assert_eq!(&back, args, "re-encoded request parses differently");
                assert_eq!(consumed, enc.len());
            }
            other => panic!("re-encoded request does not parse: {other:?}"),
        }
    }
});

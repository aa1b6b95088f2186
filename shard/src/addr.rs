//! Listen addresses: checking that one is free for this server's listeners before the
//! engines open, and fixing its port.
//!
//! The listeners (glommio's) set `SO_REUSEPORT`, so a second server binding them would
//! silently share the port: a server already listening there is found by connecting to it.
//! The port is then bound once with `SO_REUSEADDR` and `SO_REUSEPORT`, as the listeners
//! will be: connections a previous run of this server accepted and left in TIME_WAIT
//! (after a crash or SIGKILL, up to a minute) do not block a restart on its address,
//! while any other socket on the port does.

use crate::error::{Error, Result};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long the check for a server already listening waits for its connect.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

fn in_use(addr: &str) -> Error {
    Error::AddrInUse {
        addr: addr.to_string(),
    }
}

/// Checks that `addr` is free for this server and returns it with its port fixed (port 0
/// picks a free one). Fails with [`Error::AddrInUse`] when a server listens there or
/// another socket holds the port.
pub fn reserve(addr: &str) -> Result<SocketAddr> {
    let net = |op: &'static str| {
        move |source: std::io::Error| Error::Net {
            op,
            addr: addr.to_string(),
            source,
        }
    };
    let target = addr
        .to_socket_addrs()
        .map_err(net("resolve"))?
        .next()
        .ok_or_else(|| net("resolve")(std::io::Error::other("no address")))?;
    if target.port() != 0
        && nokv_raft::transport::connect_std(&target, PROBE_CONNECT_TIMEOUT).is_ok()
    {
        return Err(in_use(addr));
    }
    let socket =
        Socket::new(Domain::for_address(target), Type::STREAM, None).map_err(net("socket for"))?;
    socket
        .set_reuse_address(true)
        .and_then(|()| socket.set_reuse_port(true))
        .map_err(net("set options of"))?;
    socket.bind(&target.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            in_use(addr)
        } else {
            net("bind")(e)
        }
    })?;
    socket
        .local_addr()
        .map_err(net("local address of"))?
        .as_socket()
        .ok_or_else(|| net("local address of")(std::io::Error::other("not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_or_bound_port_is_in_use_and_port_zero_picks_one() {
        let picked = reserve("127.0.0.1:0").expect("a free port");
        assert_ne!(picked.port(), 0);
        // Listening (without SO_REUSEPORT, as another program would).
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = l.local_addr().expect("addr").to_string();
        assert!(matches!(reserve(&at), Err(Error::AddrInUse { .. })));
        drop(l);
        assert!(reserve(&at).is_ok(), "free again");
        assert!(matches!(
            reserve("no-such-host.invalid:1"),
            Err(Error::Net { .. })
        ));
    }
}

//! Hosts for multi-host scenarios on one machine: a network namespace per host, each
//! with an `eth0` veth joined to a bridge in a "switch" namespace, and a veth from the
//! test's own namespace to the same bridge (so the test, its coordinator and its clients
//! reach every host). Everything is named after the test process and removed on drop.
//! Needs root and `ip` (iproute2; `scripts/install-test-deps.sh`).

use std::net::Ipv4Addr;
use std::process::Command;

/// The hosts of one scenario.
pub struct Hosts {
    prefix: String,
    subnet: u8,
    count: usize,
}

/// Runs `ip args...`; Err with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// Creates `count` hosts (at most 200); Err says why they cannot exist here (not root,
    /// no `ip`, no namespaces): the caller skips with it.
    pub fn create(count: usize) -> Result<Hosts, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let pid = std::process::id();
        let hosts = Hosts {
            prefix: format!("nk{}", pid % 100_000),
            subnet: (pid % 200) as u8 + 20,
            count,
        };
        hosts.build().inspect_err(|_| drop(hosts.teardown()))?;
        Ok(hosts)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn build(&self) -> Result<(), String> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.count {
            let (ns, host_end, sw_end) = (
                self.ns(i),
                format!("{}a{i}", self.prefix),
                format!("{}b{i}", self.prefix),
            );
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &sw_end,
            ])?;
            ip(&["link", "set", &host_end, "netns", &ns])?;
            ip(&["link", "set", &sw_end, "netns", &sw])?;
            ip(&["-n", &ns, "link", "set", &host_end, "name", "eth0"])?;
            let addr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &sw, "link", "set", &sw_end, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &sw_end, "up"])?;
        }
        let (root_end, sw_end) = (format!("{}r", self.prefix), format!("{}rs", self.prefix));
        ip(&[
            "link", "add", &root_end, "type", "veth", "peer", "name", &sw_end,
        ])?;
        ip(&["link", "set", &sw_end, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", &sw_end, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &sw_end, "up"])?;
        let addr = format!("{}/24", self.gateway());
        ip(&["addr", "add", &addr, "dev", &root_end])?;
        ip(&["link", "set", &root_end, "up"])
    }

    fn teardown(&self) -> Result<(), String> {
        let _ = ip(&["link", "del", &format!("{}r", self.prefix)]);
        for i in 0..self.count {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        ip(&["netns", "del", &self.switch()])
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, i as u8 + 1)
    }

    /// The test's own address on the hosts' network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 254)
    }

    /// `program` to be run on host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), program]);
        cmd
    }

    /// Takes host `i`'s network link down or up (a partition of the host, or a flap).
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        if let Err(e) = ip(&["-n", &self.ns(i), "link", "set", "eth0", state]) {
            panic!("link of host {i} {state}: {e}");
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("netns teardown: {e}");
        }
    }
}

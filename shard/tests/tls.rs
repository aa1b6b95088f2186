//! TLS on the Redis port of the real `nokv-server` (`--tls-cert-file`, `--tls-key-file`),
//! with a certificate made by `openssl` for the test and Debian's `redis-cli --tls` as the
//! client: commands and a 1 MiB value round-trip; a plain-TCP client gets no reply; a
//! client that does not trust the certificate fails its handshake; a missing file or a
//! key that does not match the certificate stops the start with the file named. `nokv-redis`
//! serves TLS the same way.
//! Skips with a notice when `openssl` or `redis-cli` is missing
//! (`scripts/install-test-deps.sh` installs both).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{encode, Server};

/// A self-signed certificate for 127.0.0.1 and its key, in `dir`: (cert, key).
fn make_cert(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=nokv-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then_some((cert, key))
}

/// Whether `openssl` and `redis-cli` are there (a notice when not: the test skips).
fn tools_present() -> bool {
    let present = have("openssl") && have("redis-cli");
    if !present {
        println!("skipped: openssl or redis-cli missing (scripts/install-test-deps.sh)");
    }
    present
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `redis-cli --tls` against `port`, trusting `ca`; (success, stdout + stderr).
fn cli(port: u16, ca: &Path, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("redis-cli");
    if let Some(bytes) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("redis-cli output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn redis_cli_talks_tls_and_plain_clients_get_nothing() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = make_cert(dir.path(), "server").expect("openssl makes a certificate");
    let port = support::free_port();
    let server = Server::start_on(
        &dir.path().join("data"),
        &format!("127.0.0.1:{port}"),
        &[
            "--cores",
            "2",
            "--tls-cert-file",
            cert.to_str().expect("utf8"),
            "--tls-key-file",
            key.to_str().expect("utf8"),
        ],
    );
    let (ok, out) = cli(port, &cert, &["SET", "k", "v"], None);
    assert!(ok && out.trim() == "OK", "SET over TLS: {out}");
    let (ok, out) = cli(port, &cert, &["GET", "k"], None);
    assert!(ok && out.trim() == "v", "GET over TLS: {out}");
    // A value larger than TLS records (16 KiB) and the read chunk, both ways.
    let big: String = (0..(1 << 20))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (ok, out) = cli(port, &cert, &["-x", "SET", "big"], Some(big.as_bytes()));
    assert!(
        ok && out.trim() == "OK",
        "SET of 1 MiB over TLS: {}",
        &out[..out.len().min(200)]
    );
    let (ok, out) = cli(port, &cert, &["STRLEN", "big"], None);
    assert!(ok && out.trim() == (1 << 20).to_string(), "STRLEN: {out}");
    let (ok, out) = cli(port, &cert, &["GET", "big"], None);
    assert!(
        ok && out.trim_end() == big,
        "GET of 1 MiB over TLS ({} bytes back)",
        out.len()
    );
    // A plain client's PING is not a TLS handshake: it gets no PONG.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = plain.write_all(&encode(&[b"PING"]));
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("PONG"),
        "a plain client was answered: {got:?}"
    );
    // A client that does not trust the certificate fails.
    let (other, _) = make_cert(dir.path(), "other").expect("another certificate");
    let (ok, out) = cli(port, &other, &["PING"], None);
    assert!(
        !ok || !out.contains("PONG"),
        "an untrusted certificate was accepted: {out}"
    );
    // The server is still fine.
    let (ok, out) = cli(port, &cert, &["PING"], None);
    assert!(ok && out.trim() == "PONG", "{out}");
    drop(server);
}

#[test]
fn bad_tls_files_stop_the_start_naming_them() {
    if !have("openssl") {
        println!("skipped: openssl missing (scripts/install-test-deps.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = make_cert(dir.path(), "a").expect("certificate a");
    let (_, other_key) = make_cert(dir.path(), "b").expect("certificate b");
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let cases = [
        (
            vec![
                "--tls-cert-file".to_string(),
                s(&missing),
                "--tls-key-file".into(),
                s(&other_key),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--tls-cert-file".to_string(),
                s(&cert),
                "--tls-key-file".into(),
                s(&other_key),
            ],
            "do not make a certificate and its key",
        ),
        (vec!["--tls-cert-file".to_string(), s(&cert)], "go together"),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let mut args: Vec<&str> = vec!["--redis-addr", "127.0.0.1:0"];
        args.extend(flags.iter().map(String::as_str));
        let (status, stderr) = support::run_to_exit(&dir.path().join(format!("data-{i}")), &args);
        assert!(!status.success(), "{flags:?} started");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
    }
}

#[test]
fn nokv_redis_talks_tls_too() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = make_cert(dir.path(), "gw").expect("openssl makes a certificate");
    let port = support::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nokv-redis"));
    cmd.args([
        "--coordinator",
        &format!("127.0.0.1:{}", support::free_port()),
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .args(["--timeout-ms", "300"])
    .arg("--tls-cert-file")
    .arg(&cert)
    .arg("--tls-key-file")
    .arg(&key);
    let gw = Server::launch(cmd, dir.path().join("nokv-redis.log"));
    let (ok, out) = cli(port, &cert, &["PING"], None);
    assert!(ok && out.trim() == "PONG", "PING over TLS: {out}");
    // No cluster behind it: a key command says so, over TLS.
    let (_, out) = cli(port, &cert, &["GET", "k"], None);
    assert!(out.contains("CLUSTERDOWN"), "GET over TLS: {out}");
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = plain.write_all(&encode(&[b"PING"]));
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");
    drop(gw);
}

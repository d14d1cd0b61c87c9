//! HTTPS: TLS termination in every child, worker or thread; resumption
//! across processes; re-encryption to `https://` backends.  Certificates
//! are made for each test (rcgen); clients are rustls, `openssl s_client`,
//! `curl` and `sslscan`, as users would run them.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::util::*;

/// A certificate authority made for one test, and the certificates it
/// signs, written as PEM files.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Writes the CA certificate to `dir/file`.
    pub fn write_ca(&self, dir: &Path, file: &str) {
        fs::write(dir.join(file), &self.ca_pem).unwrap();
    }

    /// A certificate for `names` (the first its CN), written to
    /// `dir/{stem}.pem` with its key in `dir/{stem}.key`.
    pub fn leaf(&self, names: &[&str], dir: &Path, stem: &str) {
        self.leaf_with(names, dir, stem, |_| {});
    }

    pub fn leaf_with(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    /// A rustls client configuration that trusts this CA alone.
    pub fn client_config(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        // *ring*, as pibl itself (its deprecation is for want of a
        // post-quantum key exchange).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

pub type TlsClient = Client<StreamOwned<ClientConnection, TcpStream>>;

/// A client connection over TLS to `addr`, for `name` (SNI), its handshake
/// done.
pub fn connect_tls(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> TlsClient {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = stream;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).unwrap();
    }
    Client {
        reader: std::io::BufReader::new(StreamOwned::new(conn, stream)),
    }
}

impl TlsClient {
    pub fn conn(&self) -> &ClientConnection {
        &self.reader.get_ref().conn
    }
}

/// The `[tls]` table for a certificate `site.pem`/`site.key`, HTTPS on an
/// ephemeral port, and `more` lines of it.
fn tls_table(more: &str) -> String {
    format!("[tls]\nport = 0\ncert = \"site.pem\"\nkey = \"site.key\"\n{more}")
}

/// A proxy for `backends` serving HTTPS with a certificate for localhost
/// and 127.0.0.1 from `pki`; `top` lines go before the `[tls]` table.
fn https_proxy(backends: &[Backend], pki: &Pki, top: &str, more: &str) -> Proxy {
    let dir = TempDir::new();
    pki.leaf(&["localhost", "127.0.0.1"], dir.path(), "site");
    pki.write_ca(dir.path(), "ca.pem");
    ProxyOptions::new(backends)
        .config(&format!("{top}{}", tls_table(more)))
        .start_in(dir)
}

fn tls_addr(proxy: &Proxy) -> SocketAddr {
    proxy.tls_addr.expect("an HTTPS listener")
}

/// Runs `openssl` with `args`, `input` on its standard input; its output
/// (both streams) and whether it succeeded.
fn openssl(args: &[&str], input: &[u8], dir: &Path) -> (String, bool) {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

#[test]
fn an_https_request_is_served_with_the_same_relay() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let output = Command::new("curl")
        .args(["-sS", "--cacert", "ca.pem", "-D", "-"])
        .arg(format!(
            "https://localhost:{}/headers",
            tls_addr(&proxy).port()
        ))
        .current_dir(proxy.dir.path())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("X-Forwarded-Proto: https\r\n"), "{text}");
    // Plain HTTP beside it, as it was.
    let plain = get(proxy.addr, "/headers");
    assert!(plain.text().contains("X-Forwarded-Proto: http\r\n"));
    let lines = proxy.wait_log(2);
    assert!(lines[0].ends_with(" TLSv1.3"), "{lines:?}");
    assert!(lines[1].ends_with(" -"), "{lines:?}");
}

#[test]
fn alpn_offers_http_1_1_and_keep_alive_works_over_tls() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let mut config = pki.client_config();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut client = connect_tls(tls_addr(&proxy), &Arc::new(config), "localhost");
    assert_eq!(client.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
    for _ in 0..3 {
        assert_eq!(client.get("/whoami").text(), "b1\n");
    }
}

#[test]
fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let dir = TempDir::new();
    pki.leaf(&["a.test"], dir.path(), "a");
    pki.leaf(&["b.test", "*.b.test"], dir.path(), "b");
    let proxy = ProxyOptions::new(&backends)
        .config(
            "[tls]\nport = 0\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[tls.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .start_in(dir);
    let config = Arc::new(pki.client_config());
    for name in ["a.test", "b.test", "www.b.test"] {
        // Verified for the name asked: the right certificate came.
        let mut client = connect_tls(tls_addr(&proxy), &config, name);
        assert_eq!(client.get("/whoami").status, 200, "{name}");
    }
    let port = tls_addr(&proxy).port().to_string();
    let connect = format!("127.0.0.1:{port}");
    for (sni, subject) in [("unknown.test", "CN = a.test"), ("b.test", "CN = b.test")] {
        let (out, _) = openssl(
            &["s_client", "-connect", &connect, "-servername", sni],
            b"",
            proxy.dir.path(),
        );
        assert!(out.contains(&format!("subject={subject}")), "{sni}: {out}");
    }
    let (out, _) = openssl(
        &["s_client", "-connect", &connect, "-noservername"],
        b"",
        proxy.dir.path(),
    );
    assert!(out.contains("subject=CN = a.test"), "no SNI: {out}");
}

#[test]
fn tls_1_0_and_1_1_are_refused() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let connect = format!("127.0.0.1:{}", tls_addr(&proxy).port());
    for version in ["-tls1", "-tls1_1"] {
        let (out, ok) = openssl(
            &[
                "s_client",
                "-connect",
                &connect,
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
            b"",
            proxy.dir.path(),
        );
        assert!(!ok, "{version}: {out}");
        assert!(out.contains("Cipher is (NONE)"), "{version}: {out}");
    }
    let (out, ok) = openssl(
        &["s_client", "-connect", &connect, "-tls1_2"],
        b"",
        proxy.dir.path(),
    );
    assert!(ok && out.contains("New, TLSv1.2"), "{out}");
}

/// A full handshake that saves its session, then one that offers it:
/// whether the second resumed.
fn resumes(proxy: &Proxy, version: &str) -> bool {
    let connect = format!("127.0.0.1:{}", tls_addr(proxy).port());
    let request = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let dir = proxy.dir.path();
    let common = [
        "s_client", "-connect", &connect, version, "-CAfile", "ca.pem",
    ];
    let (first, ok) = openssl(
        &[&common[..], &["-ign_eof", "-sess_out", "session"]].concat(),
        request,
        dir,
    );
    assert!(ok && first.contains("New, TLSv1."), "{first}");
    assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
    let (second, ok) = openssl(
        &[&common[..], &["-ign_eof", "-sess_in", "session"]].concat(),
        request,
        dir,
    );
    assert!(ok && second.contains("HTTP/1.1 200"), "{second}");
    second.contains("Reused, TLSv1.")
}

/// The pids that served the first `n` access lines.
fn serving_pids(proxy: &Proxy, n: usize) -> Vec<i32> {
    proxy.wait_log(n).iter().map(|l| log_pid(l)).collect()
}

#[test]
fn a_ticket_from_one_child_resumes_in_another_tls_1_3_and_1_2() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    assert!(resumes(&proxy, "-tls1_3"), "TLS 1.3 did not resume");
    assert!(resumes(&proxy, "-tls1_2"), "TLS 1.2 did not resume");
    if model() == "fork" {
        // Each connection its own child: the ticket was opened by another
        // process than the one that sealed it.
        let pids = serving_pids(&proxy, 4);
        assert_ne!(pids[0], pids[1], "{pids:?}");
        assert_ne!(pids[2], pids[3], "{pids:?}");
    }
    // After a reload, tickets still open.
    let options = ProxyOptions::new(&backends).config(&tls_table(""));
    proxy.reload(&options);
    assert!(resumes(&proxy, "-tls1_3"), "no resumption after SIGHUP");
}

#[test]
fn shared_ticket_key_files_let_another_host_resume() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let key: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37)).collect();
    let start = || {
        let dir = TempDir::new();
        pki.leaf(&["localhost", "127.0.0.1"], dir.path(), "site");
        pki.write_ca(dir.path(), "ca.pem");
        fs::write(dir.path().join("ticket.key"), &key).unwrap();
        ProxyOptions::new(&backends)
            .config(&tls_table("ticket_key_file = \"ticket.key\"\n"))
            .start_in(dir)
    };
    let (one, two) = (start(), start());
    let mut config = pki.client_config();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let config = Arc::new(config);
    let mut first = connect_tls(tls_addr(&one), &config, "localhost");
    assert_eq!(first.get("/whoami").status, 200); // and its tickets
    let mut second = connect_tls(tls_addr(&two), &config, "localhost");
    // The session cache keys on the name: the other host, same name.
    assert_eq!(
        second.conn().handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(second.get("/whoami").status, 200);
}

#[test]
fn plain_http_on_the_https_port_gets_a_400_saying_so() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let mut client = Client::connect(tls_addr(&proxy));
    let r = client.get("/");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("HTTPS port"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(client.is_closed());
    let line = &proxy.wait_log(1)[0];
    assert!(line.contains("\"GET / HTTP/1.1\" 400 "), "{line}");
}

#[test]
fn a_slow_handshake_is_dropped_and_garbage_never_crashes() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "client_header_timeout = 1\n", "");
    let addr = tls_addr(&proxy);
    // A ClientHello's first bytes, a byte at a time, every 200 ms.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut dropped = false;
    for byte in hello.iter().cycle().take(100) {
        if slow.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut buf = [0u8; 64];
        slow.set_nonblocking(true).unwrap();
        let read = slow.read(&mut buf);
        slow.set_nonblocking(false).unwrap();
        if matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a byte-at-a-time handshake was never dropped");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Records that are not a ClientHello, a truncated one, random bytes.
    let garbage: [&[u8]; 4] = [
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x16, 0x03, 0x03, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc],
        &[0x16, 0xff, 0xff, 0xff, 0xff],
        &[0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00],
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let config = Arc::new(pki.client_config());
    let mut client = connect_tls(addr, &config, "localhost");
    assert_eq!(client.get("/whoami").status, 200);
    let crashed = proxy.stderr.containing("internal error");
    assert!(crashed.is_empty(), "{crashed:?}");
}

#[test]
fn redirect_http_and_hsts() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(
        &backends,
        &pki,
        "",
        "redirect_http = true\nhsts = 31536000\n",
    );
    let port = tls_addr(&proxy).port();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /a?b=1 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n");
    let r = client.response("GET");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://example.test:{port}/a?b=1").as_str())
    );
    assert_eq!(r.header("strict-transport-security"), None);
    // The connection goes on: nothing was left unread.
    assert_eq!(client.get("/").status, 308);
    let config = Arc::new(pki.client_config());
    let mut tls = connect_tls(tls_addr(&proxy), &config, "localhost");
    let r = tls.get("/whoami");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let r = tls.get("/nothing-here");
    assert_eq!(r.status, 404);
    assert!(r.header("strict-transport-security").is_some());
}

#[test]
fn a_256_mib_response_and_upload_over_tls_in_flat_memory() {
    const SIZE: u64 = 256 << 20;
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let config = Arc::new(pki.client_config());
    let mut client = connect_tls(tls_addr(&proxy), &config, "localhost");
    let sampler = PssSampler::start(proxy.pid());
    client.send(format!("GET /big?kb={} HTTP/1.1\r\nHost: t\r\n\r\n", SIZE >> 10).as_bytes());
    let head = client.head();
    assert_eq!(
        head.header("content-length"),
        Some(SIZE.to_string().as_str())
    );
    read_big(&mut client.reader, SIZE);

    client.send(
        format!("POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    );
    let block: Vec<u8> = (0..1u32 << 16).map(|i| (i % 253) as u8).collect();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..SIZE / block.len() as u64 {
        client.reader.get_mut().write_all(&block).unwrap();
        hash = block.iter().fold(hash, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    }
    let r = client.response("POST");
    assert_eq!(r.text(), format!("bytes={SIZE} fnv1a={hash:016x}\n"));
    let (peak, samples) = sampler.finish();
    assert!(samples > 0, "no sample saw the child");
    assert!(peak < 48 * 1024, "proxy PSS peaked at {peak} KiB");
}

/// An HTTPS backend: `openssl s_server -www`, which answers each request
/// with a page of its own and closes.  `verify`: it asks for a client
/// certificate signed by that CA file.
struct TlsBackend {
    addr: SocketAddr,
    _process: Process,
}

impl TlsBackend {
    /// An `openssl s_server` on a port free a moment ago.  Another test
    /// may take that port first: s_server then exits, and another is tried.
    fn start(dir: &Path, cert: &str, verify: Option<&str>) -> TlsBackend {
        for _ in 0..5 {
            if let Some(backend) = TlsBackend::try_start(dir, cert, verify) {
                return backend;
            }
        }
        panic!("openssl s_server found no free port in five tries");
    }

    fn try_start(dir: &Path, cert: &str, verify: Option<&str>) -> Option<TlsBackend> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args = vec![
            "s_server".to_string(),
            "-accept".into(),
            format!("127.0.0.1:{port}"),
            "-cert".into(),
            format!("{cert}.pem"),
            "-key".into(),
            format!("{cert}.key"),
            "-www".into(),
        ];
        if let Some(ca) = verify {
            args.extend(["-Verify".into(), "1".into(), "-CAfile".into(), ca.into()]);
        }
        let mut child = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = Lines::collect(child.stdout.take().unwrap());
        let mut process = Process { child };
        let mut exited = false;
        wait_until("openssl s_server to accept or exit", || {
            exited = matches!(process.child.try_wait(), Ok(Some(_)));
            exited || !out.containing("ACCEPT").is_empty()
        });
        (!exited).then(|| TlsBackend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _process: process,
        })
    }
}

/// A proxy for the `https://` backend at `host`:`port`, trusting `ca`'s
/// certificates, and presenting one `client` signs when there is one;
/// `top` lines go before the `[tls]` table.
fn reencrypting_proxy(host: &str, port: u16, ca: &Pki, client: Option<&Pki>, top: &str) -> Proxy {
    let dir = TempDir::new();
    ca.write_ca(dir.path(), "backend-ca.pem");
    let mut tls = "backend_ca = \"backend-ca.pem\"\n".to_string();
    if let Some(client) = client {
        client.leaf(&["pibl.test"], dir.path(), "me");
        tls.push_str("backend_cert = \"me.pem\"\nbackend_key = \"me.key\"\n");
    }
    ProxyOptions::for_addrs(vec![format!("https://{host}:{port}")])
        .config(&format!("max_fails = 100\n{top}[tls]\n{tls}"))
        .start_in(dir)
}

/// What one GET of / through `proxy` gets, and, for a 502, the reason
/// pibl gave.
fn through(proxy: &Proxy) -> (u16, Option<String>) {
    let r = get(proxy.addr, "/");
    let why = (r.status == 502).then(|| proxy.wait_stderr("TLS handshake"));
    (r.status, why)
}

#[test]
fn https_backends_are_verified_against_backend_ca() {
    let servers = Pki::new("Backend CA");
    let dir = TempDir::new();
    servers.leaf(&["localhost", "127.0.0.1"], dir.path(), "backend");
    servers.leaf(&["other.test"], dir.path(), "elsewhere");
    let (one, two) = (
        TlsBackend::start(dir.path(), "backend", None),
        TlsBackend::start(dir.path(), "elsewhere", None),
    );
    let (backend, elsewhere) = (one.addr.port(), two.addr.port());
    // By name, and by IP address (against the certificate's IP names).
    let proxy = reencrypting_proxy("localhost", backend, &servers, None, "");
    let r = get(proxy.addr, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("s_server"), "{}", r.text());
    let proxy = reencrypting_proxy("127.0.0.1", backend, &servers, None, "");
    assert_eq!(through(&proxy).0, 200);
    // The wrong CA, or a certificate from the right CA for another name:
    // a failed backend, a 502, the reason said.
    let other = Pki::new("Another CA");
    for (port, ca) in [(backend, &other), (elsewhere, &servers)] {
        let proxy = reencrypting_proxy("localhost", port, ca, None, "");
        let (status, why) = through(&proxy);
        assert_eq!(status, 502);
        assert!(why.unwrap().contains("certificate"));
    }
}

#[test]
fn mutual_tls_to_a_backend_that_asks_for_a_client_certificate() {
    let servers = Pki::new("Backend CA");
    let clients = Pki::new("Client CA");
    let dir = TempDir::new();
    servers.leaf(&["localhost"], dir.path(), "backend");
    clients.write_ca(dir.path(), "client-ca.pem");
    let backend = TlsBackend::start(dir.path(), "backend", Some("client-ca.pem"));
    let port = backend.addr.port();
    let proxy = reencrypting_proxy("localhost", port, &servers, Some(&clients), "");
    let r = get(proxy.addr, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let proxy = reencrypting_proxy("localhost", port, &servers, None, "");
    assert_eq!(get(proxy.addr, "/").status, 502);
}

/// pibl in front of pibl: the front one re-encrypts to the other's HTTPS
/// port, keeps its TLS connections for later requests, and health-checks
/// it over TLS.
#[test]
fn backend_tls_connections_are_kept_and_health_checked() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let inner = https_proxy(&backends, &pki, "", "");
    let port = tls_addr(&inner).port();
    let check = "health_check = { path = \"/whoami\", interval = 0.2 }\n";
    let outer = reencrypting_proxy("localhost", port, &pki, None, check);
    let mut client = Client::connect(outer.addr);
    for _ in 0..3 {
        assert_eq!(client.get("/whoami").text(), "b1\n");
    }
    wait_until("a health check over TLS", || {
        inner
            .stdout
            .containing("pibl-health-check")
            .iter()
            .any(|l| l.ends_with(" TLSv1.3"))
    });
    // Each line is written once its response is out: the last may trail.
    let served = || -> Vec<String> {
        inner
            .stdout
            .containing("/whoami HTTP/1.1\" 200")
            .into_iter()
            .filter(|l| l.contains("\"-\" \"-\""))
            .collect()
    };
    wait_until("the three requests logged", || served().len() >= 3);
    let served = served();
    if model() == "fork" {
        // One connection from the front proxy, one child of the inner one.
        let pids: Vec<i32> = served[..3].iter().map(|l| log_pid(l)).collect();
        assert!(pids.iter().all(|&p| p == pids[0]), "{served:?}");
    }
}

/// `pibl --check` in `dir` with `tls` as the `[tls]` table: its exit
/// status and what it said.
fn check(dir: &Path, tls: &str) -> (Option<i32>, String) {
    fs::write(
        dir.join("pibl.conf"),
        format!("backends = [\"127.0.0.1:9\"]\n[tls]\n{tls}"),
    )
    .unwrap();
    let out = Command::new(PIBL)
        .args(["--check", "--config", "pibl.conf"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_each_bad_file_in_one_line() {
    let pki = Pki::new("Test CA");
    let dir = TempDir::new();
    let d = dir.path();
    pki.leaf(&["localhost"], d, "site");
    pki.leaf(&["other"], d, "other");
    pki.leaf_with(&["old.test"], d, "old", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let cases = [
        (
            "port = 8443\ncert = \"missing.pem\"\nkey = \"site.key\"\n",
            "missing.pem: No such file",
        ),
        (
            "port = 8443\ncert = \"site.pem\"\nkey = \"other.key\"\n",
            "other.key: does not match",
        ),
        (
            "port = 8443\ncert = \"site.key\"\nkey = \"site.key\"\n",
            "site.key: no certificate",
        ),
        (
            "port = 8443\ncert = \"site.pem\"\nkey = \"site.pem\"\n",
            "site.pem: no private key",
        ),
        (
            "port = 8443\ncert = \"site.pem\"\n",
            "pibl.conf:4: cert: needs key",
        ),
        (
            "port = 8443\n",
            "pibl.conf:2: tls: a port needs a certificate",
        ),
        ("backend_ca = \"site.key\"\n", "site.key: no certificate"),
        (
            "port = 8443\ncert = \"site.pem\"\nkey = \"site.key\"\nticket_key_file = \"site.key\"\n",
            "site.key: is",
        ),
    ];
    for (tls, said) in cases {
        let (code, out) = check(d, tls);
        assert_eq!(code, Some(78), "{tls}: {out}");
        assert_eq!(out.lines().count(), 1, "{tls}: {out}");
        assert!(out.contains(said), "{tls}: {out}");
    }
    // Expired: a warning, not an error, as nginx.
    let (code, out) = check(d, "port = 8443\ncert = \"old.pem\"\nkey = \"old.key\"\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: old.pem: certificate expired on"),
        "{out}"
    );
    let (code, out) = check(d, "port = 8443\ncert = \"site.pem\"\nkey = \"site.key\"\n");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_broken_file_at_reload_keeps_the_old_certificates() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    fs::write(proxy.dir.path().join("site.key"), "not a key\n").unwrap();
    proxy.process.signal(nix::sys::signal::Signal::SIGHUP);
    let said = proxy.wait_stderr("reload refused");
    assert!(said.contains("site.key"), "{said}");
    let config = Arc::new(pki.client_config());
    let mut client = connect_tls(tls_addr(&proxy), &config, "localhost");
    assert_eq!(client.get("/whoami").status, 200);
}

#[test]
fn a_tls_scanner_finds_no_weak_protocol_or_cipher() {
    let backends = Backend::start_many(1);
    let pki = Pki::new("Test CA");
    let proxy = https_proxy(&backends, &pki, "", "");
    let out = Command::new("sslscan")
        .args(["--no-colour", &tls_addr(&proxy).to_string()])
        .output()
        .expect("sslscan (Debian's sslscan package)");
    let text = String::from_utf8_lossy(&out.stdout);
    for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        let line = text.lines().find(|l| l.starts_with(old));
        assert!(
            line.is_some_and(|l| l.ends_with("disabled")),
            "{old}: {text}"
        );
    }
    assert!(
        text.contains("Session renegotiation not supported"),
        "{text}"
    );
    let heartbleed: Vec<&str> = text.lines().filter(|l| l.contains("heartbleed")).collect();
    assert!(!heartbleed.is_empty(), "{text}");
    assert!(
        heartbleed.iter().all(|l| l.contains("not vulnerable")),
        "{text}"
    );
    let ciphers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Accepted") || l.starts_with("Preferred"))
        .collect();
    assert!(!ciphers.is_empty(), "{text}");
    for line in ciphers {
        let aead = line.contains("GCM") || line.contains("CHACHA20");
        let forward_secret = line.contains("TLSv1.3") || line.contains("ECDHE");
        assert!(aead && forward_secret, "weak: {line}");
    }
}

/// The Content-Encoding curl saw for `url` asked with gzip.
fn coding_seen(proxy: &Proxy, url: &str) -> Option<String> {
    let output = Command::new("curl")
        .args(["-sS", "--cacert", "ca.pem", "-H", "Accept-Encoding: gzip"])
        .args(["-o", "/dev/null", "-D", "-", url])
        .current_dir(proxy.dir.path())
        .output()
        .expect("curl");
    assert!(output.status.success(), "{output:?}");
    let head = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-encoding: "))
        .map(|v| v.trim().to_string())
}

#[test]
fn compression_over_https_spares_responses_that_set_cookies() {
    let page = "<p>secret=12345 and the rest of the page</p>\n".repeat(50);
    let b = RawBackend::start_answering(move |_| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: s=1\r\n\
             Content-Length: {}\r\n\r\n{page}",
            page.len()
        )
        .into_bytes()
    });
    let pki = Pki::new("Test CA");
    for (more, over_https) in [("", None), ("https_with_cookies = true\n", Some("gzip"))] {
        let dir = TempDir::new();
        pki.leaf(&["localhost"], dir.path(), "site");
        pki.write_ca(dir.path(), "ca.pem");
        let proxy = ProxyOptions::for_addrs(vec![b.addr.to_string()])
            .config(&format!(
                "[compress]\nenabled = true\n{more}{}",
                tls_table("")
            ))
            .start_in(dir);
        let https = format!("https://localhost:{}/", tls_addr(&proxy).port());
        assert_eq!(coding_seen(&proxy, &https).as_deref(), over_https, "{more}");
        let http = format!("http://{}/", proxy.addr);
        assert_eq!(
            coding_seen(&proxy, &http).as_deref(),
            Some("gzip"),
            "{more}"
        );
    }
}

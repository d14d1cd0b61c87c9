//! Bodies stream through fixed buffers: 256 MiB each way with the proxy's
//! memory flat.

use std::io::{Read, Write};
use std::thread;

use crate::util::*;

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 256 * MIB;
/// Bound on the PSS of the parent plus its children (a busy child, or a
/// pool of prefork workers), with wide margin: the buffers are 2 x 64 KiB,
/// the rest is the program itself.
const PSS_BOUND_KIB: u64 = 32 * 1024;

#[test]
fn a_256_mib_response_streams_in_flat_memory() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let sampler = PssSampler::start(proxy.pid());
    let mut client = Client::connect(proxy.addr);
    client.send(format!("GET /big?kb={} HTTP/1.1\r\nHost: t\r\n\r\n", SIZE / 1024).as_bytes());
    let head = client.head();
    assert_eq!(
        head.header("content-length"),
        Some(SIZE.to_string().as_str())
    );
    read_big(&mut client.reader, SIZE);
    let (peak, samples) = sampler.finish();
    assert!(samples > 0, "no sample saw the child");
    assert!(peak < PSS_BOUND_KIB, "proxy PSS peaked at {peak} KiB");
    assert_eq!(client.get("/whoami").status, 200);
}

/// Sends the head of a POST to `path` of a SIZE-byte body, chunked or not.
fn post_head(client: &mut Client, path: &str, chunked: bool) {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {SIZE}")
    };
    client.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes());
}

/// Sends `block` as the next part of a body: a chunk of its own if
/// `chunked`.
fn send_block(
    stream: &mut std::net::TcpStream,
    block: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if chunked {
        stream.write_all(format!("{:x}\r\n", block.len()).as_bytes())?;
    }
    stream.write_all(block)?;
    if chunked {
        stream.write_all(b"\r\n")?;
    }
    Ok(())
}

fn upload(chunked: bool) {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let sampler = PssSampler::start(proxy.pid());
    let mut client = Client::connect(proxy.addr);
    post_head(&mut client, "/sink", chunked);
    let block: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(7) % 253) as u8)
        .collect();
    let mut stream = client.stream().try_clone().unwrap();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..SIZE / block.len() as u64 {
        send_block(&mut stream, &block, chunked).unwrap();
        hash = fnv1a(hash, &block);
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").unwrap();
    }
    let r = client.response("POST");
    assert_eq!(r.text(), format!("bytes={SIZE} fnv1a={hash:016x}\n"));
    let (peak, samples) = sampler.finish();
    assert!(samples > 0, "no sample saw the child");
    assert!(peak < PSS_BOUND_KIB, "proxy PSS peaked at {peak} KiB");
}

#[test]
fn a_256_mib_upload_streams_in_flat_memory() {
    upload(false);
}

#[test]
fn a_256_mib_chunked_upload_streams_in_flat_memory() {
    upload(true);
}

/// Reads a /big body of `size` bytes from `client` and checks every byte.
fn read_pattern(client: &mut Client, size: u64) {
    let mut body = vec![0u8; size as usize];
    client.reader.read_exact(&mut body).unwrap();
    let wrong = (0..size).find(|&i| body[i as usize] != pattern_at(i));
    assert_eq!(wrong, None, "first wrong byte");
}

/// Large bodies go through a pipe with splice(2).  A prefork worker keeps
/// its pipe from one client to the next: a client that leaves mid-body, or
/// stops sending its own body, must leave nothing in it for the next one.
#[test]
fn spliced_bodies_cut_short_either_way_leave_the_next_exchange_whole() {
    let backends = Backend::start_many(1);
    let mut options = ProxyOptions::new(&backends);
    options.extra = "[prefork]\nmin_spare = 1\nmax_spare = 1\nmax_workers = 1\n".into();
    let proxy = options.args(&["--model", "prefork"]).start();

    // Leaves after 100 KB of 4 MiB: the worker's write fails mid-pipe.
    let mut quitter = Client::connect(proxy.addr);
    quitter.send(b"GET /big?kb=4096 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(quitter.head().status, 200);
    let mut some = vec![0u8; 100_000];
    quitter.reader.read_exact(&mut some).unwrap();
    drop(quitter);

    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /big?kb=1024 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.head().header("content-length"), Some("1048576"));
    read_pattern(&mut client, MIB);
    drop(client); // the one worker is free for the next client

    // Promises 1 MiB of upload, sends 200 KB and goes: 400, nothing sent on.
    let mut uploader = Client::connect(proxy.addr);
    uploader.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    uploader.send(&vec![7u8; 200_000]);
    uploader
        .stream()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    assert_eq!(uploader.response("POST").status, 400);
    drop(uploader);

    let mut client = Client::connect(proxy.addr);
    let block = vec![7u8; MIB as usize];
    client.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    client.send(&block);
    let expect = fnv1a(0xcbf2_9ce4_8422_2325, &block);
    assert_eq!(
        client.response("POST").text(),
        format!("bytes={MIB} fnv1a={expect:016x}\n")
    );
}

/// A backend that dies mid-body: the client gets the head, part of the
/// body, and the end of its connection — never a complete-looking answer.
#[test]
fn a_spliced_body_cut_short_by_the_backend_cuts_the_client_connection() {
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    answer.extend(std::iter::repeat_n(b'x', 300_000));
    let backend = RawBackend::start_answering(move |_| answer.clone());
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()]).start();
    let mut client = Client::connect(proxy.addr);
    client.send(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.head().header("content-length"), Some("1048576"));
    let mut rest = Vec::new();
    client.reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len(), 300_000, "what the backend sent, then the end");
    assert!(
        proxy
            .stderr
            .wait_for(1)
            .iter()
            .any(|l| l.contains("response cut short")),
    );
    assert_eq!(proxy.wait_log(1).len(), 1);
}

/// A backend that refuses every upload at its head with a 413 and reads no
/// more of it, keeping the connection open; it hangs up when dropped.
struct RefusingBackend {
    addr: std::net::SocketAddr,
    _hang_up: std::sync::mpsc::Sender<()>,
}

impl RefusingBackend {
    fn start() -> RefusingBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (hang_up, hung_up) = std::sync::mpsc::channel::<()>();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large";
            stream.write_all(answer).unwrap();
            let _ = hung_up.recv();
        });
        RefusingBackend {
            addr,
            _hang_up: hang_up,
        }
    }
}

/// The backend's early answer reaches the client at once, not after
/// `backend_timeout` (here past the test's patience) spent waiting for the
/// backend to take the rest of the body; the client's connection, its
/// body unread, closes after it.
fn an_early_answer_is_relayed_at_once(chunked: bool) {
    let backend = RefusingBackend::start();
    let proxy = ProxyOptions::for_addrs(vec![backend.addr.to_string()])
        .config("backend_timeout = 600\nrequest_buffering = false\n")
        .start();
    let mut client = Client::connect(proxy.addr);
    post_head(&mut client, "/upload", chunked);
    // More than the socket buffers between client, pibl and backend hold.
    let mut stream = client.stream().try_clone().unwrap();
    let writer = thread::spawn(move || {
        let block = vec![b'x'; 1 << 16];
        for _ in 0..SIZE / block.len() as u64 {
            if send_block(&mut stream, &block, chunked).is_err() {
                break;
            }
        }
    });
    let r = client.response("POST");
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "too large");
    assert_eq!(r.header("connection"), Some("close"));
    writer.join().unwrap();
}

#[test]
fn an_early_answer_to_an_upload_is_relayed_at_once() {
    an_early_answer_is_relayed_at_once(false);
}

#[test]
fn an_early_answer_to_a_chunked_upload_is_relayed_at_once() {
    an_early_answer_is_relayed_at_once(true);
}

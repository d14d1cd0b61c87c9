//! Bodies stream through fixed buffers: 256 MiB each way with the proxy's
//! memory flat.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crate::util::*;

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 256 * MIB;
/// Bound on the PSS of the parent plus its children (a busy child, or a
/// pool of prefork workers), with wide margin: the buffers are 2 x 64 KiB,
/// the rest is the program itself.
const PSS_BOUND_KIB: u64 = 32 * 1024;

/// Samples the summed PSS of the proxy and its children until stopped;
/// returns the peak in KiB and how many samples saw a child.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(parent: i32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let handle = thread::spawn(move || {
            let mut with_child = 0;
            while !s.load(Ordering::Relaxed) {
                let (children, _) = children_of(parent);
                // A thread of the proxy's own, in the thread model.
                let threads =
                    std::fs::read_dir(format!("/proc/{parent}/task")).map_or(0, |d| d.count());
                with_child += u64::from(!children.is_empty() || threads > 1);
                let total = pss_kib(parent) + children.iter().map(|&c| pss_kib(c)).sum::<u64>();
                p.fetch_max(total, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
            with_child
        });
        RssSampler { stop, peak, handle }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.handle.join().unwrap();
        (self.peak.load(Ordering::Relaxed), samples)
    }
}

/// The byte `pibl backend` sends at `offset` of /big.
fn pattern_at(offset: u64) -> u8 {
    ((offset % 65_536) % 251) as u8
}

#[test]
fn a_256_mib_response_streams_in_flat_memory() {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let sampler = RssSampler::start(proxy.pid());
    let mut client = Client::connect(proxy.addr);
    client.send(format!("GET /big?kb={} HTTP/1.1\r\nHost: t\r\n\r\n", SIZE / 1024).as_bytes());
    let head = client.head();
    assert_eq!(
        head.header("content-length"),
        Some(SIZE.to_string().as_str())
    );
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < SIZE {
        let n = client.reader.read(&mut buf).unwrap();
        assert!(n > 0, "body ended at {offset}");
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(
                b,
                pattern_at(offset + i as u64),
                "byte {}",
                offset + i as u64
            );
        }
        offset += n as u64;
    }
    assert_eq!(offset, SIZE);
    let (peak, samples) = sampler.finish();
    assert!(samples > 0, "no sample saw the child");
    assert!(peak < PSS_BOUND_KIB, "proxy PSS peaked at {peak} KiB");
    assert_eq!(client.get("/whoami").status, 200);
}

/// FNV-1a, as `pibl backend`'s /sink computes it.
fn fnv1a(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn upload(chunked: bool) {
    let backends = Backend::start_many(1);
    let proxy = Proxy::start(&backends);
    let sampler = RssSampler::start(proxy.pid());
    let mut client = Client::connect(proxy.addr);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {SIZE}")
    };
    client.send(format!("POST /sink HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes());
    let block: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(7) % 253) as u8)
        .collect();
    let mut stream = client.stream().try_clone().unwrap();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..SIZE / block.len() as u64 {
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", block.len()).as_bytes())
                .unwrap();
        }
        stream.write_all(&block).unwrap();
        if chunked {
            stream.write_all(b"\r\n").unwrap();
        }
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

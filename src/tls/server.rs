//! The HTTPS side: what every handshake with a client is made with.
//!
//! rustls's defaults are Mozilla's "intermediate" profile, and pibl keeps
//! them: TLS 1.2 and 1.3 only, ECDHE key exchange (X25519, P-256, P-384),
//! AEAD ciphers only (AES-GCM, ChaCha20-Poly1305); no renegotiation, no
//! compression, no 0-RTT data.  ALPN offers `http/1.1`.  Resumption is by
//! tickets alone (`tickets`), which any process opens: no session cache.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;

use crate::config::TlsConfig;
use crate::error::Error;
use crate::tls::certs::{self, BySni};
use crate::tls::tickets::{Key, Ticketer};

/// The configuration handshakes with clients are made with, its files
/// read and checked; warnings (an expired certificate) are said, as nginx
/// says them, and do not stop pibl.
pub fn config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, Error> {
    let provider = certs::provider();
    let now = crate::clock::unix_now();
    let mut pairs = Vec::with_capacity(tls.certificates.len());
    for files in &tls.certificates {
        let pair = certs::load_pair(&files.cert, &files.key, &provider)?;
        if let Some(leaf) = pair.cert.first()
            && let Some(warning) = certs::validity_warning(&files.cert, leaf, now)
        {
            crate::diag!("warning: {warning}");
        }
        pairs.push(pair);
    }
    let ticketer = if tls.ticket_key_files.is_empty() {
        Ticketer::shared()?
    } else {
        Ticketer::from_files(read_ticket_keys(tls)?)
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Failed(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { pairs }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

fn read_ticket_keys(tls: &TlsConfig) -> Result<Vec<Key>, Error> {
    tls.ticket_key_files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|e| certs::file_error(path, crate::error::describe_io(&e)))?;
            Key::from_file_bytes(&bytes).map_err(|why| certs::file_error(path, why))
        })
        .collect()
}

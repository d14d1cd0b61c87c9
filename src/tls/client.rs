//! The backends' side: pibl as a TLS client of the backends written
//! `https://`.  Their certificates are verified — against the system's
//! roots, or `backend_ca` — for the host name written (or the IP address,
//! against the certificate's IP names); there is no way to turn that off.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::ServerName;

use crate::config::TlsConfig;
use crate::error::Error;
use crate::tls::certs;
use crate::tls::stream::Tls;

/// The configuration every backend handshake is made with.
pub fn config(tls: Option<&TlsConfig>) -> Result<Arc<ClientConfig>, Error> {
    let provider = certs::provider();
    let roots = roots(tls.and_then(|t| t.backend_ca.as_deref()))?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Failed(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut config = match tls.and_then(|t| t.backend_client.as_ref()) {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let pair = certs::load_pair(&files.cert, &files.key, &provider)?;
            builder
                .with_client_auth_cert(pair.cert.clone(), certs::load_key(&files.key)?)
                .map_err(|e| certs::file_error(&files.key, e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates a backend's chain must lead to.
fn roots(ca: Option<&std::path::Path>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certs::load_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| certs::file_error(path, format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::Failed(
                    "https:// backends: no system CA certificates found \
                     (install ca-certificates, or set backend_ca in [tls])"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// A TLS connection to the backend `host` over `sock`, its handshake done
/// by `deadline`.
pub fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    sock: TcpStream,
    deadline: Instant,
) -> io::Result<Tls> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a host name"))?;
    let conn = ClientConnection::new(config.clone(), name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tls = Tls::new(conn, sock);
    tls.handshake(deadline)?;
    Ok(tls)
}

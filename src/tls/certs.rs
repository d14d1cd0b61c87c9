//! Certificates and keys read from PEM files and checked, and the choice
//! among them by the name a client asks for (SNI).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::Error;

/// The cryptography: *ring*, which builds with the C compiler alone (no
/// cmake, as aws-lc-rs needs).  rustls marks it deprecated for want of
/// the post-quantum hybrid key exchange (X25519MLKEM768), which only
/// aws-lc-rs offers; X25519 and the NIST curves remain.
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, as read from `cert` and `key`.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, Error> {
    let chain = load_chain(cert)?;
    let key_der = load_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(key, format!("unusable private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(file_error(
                key,
                format!("does not match the certificate in {}", cert.display()),
            ));
        }
    }
    Ok(Arc::new(pair))
}

/// Every certificate in the PEM file `path`, the server's first.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(path, "no certificate in it".into()));
    }
    for cert in &chain {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|e| file_error(path, format!("not a certificate pibl can read: {e:?}")))?;
    }
    Ok(chain)
}

/// The one private key in the PEM file `path`: PKCS#8, PKCS#1 or SEC1.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            file_error(path, "no private key in it".into())
        }
        e => file_error(path, format!("bad PEM: {e}")),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(path, crate::error::describe_io(&e)))
}

/// A problem with a file the configuration names: one line naming it.
pub fn file_error(path: &Path, problem: String) -> Error {
    Error::config(&path.display().to_string(), 0, problem)
}

/// What `--check`, a start and a reload say of a certificate out of its
/// validity period, as nginx warns of one (it still serves it).
pub fn validity_warning(path: &Path, cert: &CertificateDer<'_>, now: u64) -> Option<String> {
    let (not_before, not_after) = validity(cert)?;
    let when =
        |t: u64| crate::clock::http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t));
    if now > not_after {
        Some(format!(
            "{}: certificate expired on {}",
            path.display(),
            when(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "{}: certificate not valid before {}",
            path.display(),
            when(not_before)
        ))
    } else {
        None
    }
}

/// The certificate's notBefore and notAfter, in Unix seconds (RFC 5280
/// §4.1: the fifth element of tbsCertificate, after an optional version).
pub fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (_, certificate, _) = der_item(cert)?;
    let (_, tbs, _) = der_item(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..3 {
        rest = der_item(rest)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = der_item(rest)?;
    let (tag1, before, after) = der_item(validity)?;
    let (tag2, after, _) = der_item(after)?;
    Some((der_time(tag1, before)?, der_time(tag2, after)?))
}

/// One DER item at the start of `der`: its tag, contents and what follows.
fn der_item(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, &b| a << 8 | b as usize);
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, der.get(header..end)?, &der[end..]))
}

/// A UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ).
fn der_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let num = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let days = crate::clock::days_from_civil(year, num(0)?, num(2)?);
    let secs = days * 86400 + num(4)? * 3600 + num(6)? * 60 + num(8)?;
    u64::try_from(secs).ok()
}

/// Picks the certificate for a client's SNI: the first whose names cover
/// it, else the first of all (the default, as nginx's first server).
#[derive(Debug)]
pub struct BySni {
    pub pairs: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn covering(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = ServerName::try_from(name).ok()?;
        self.pairs.iter().find(|pair| {
            pair.end_entity_cert()
                .ok()
                .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.covering(name))
            .or_else(|| self.pairs.first())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2524607999));
        assert_eq!(der_time(0x18, b"20380119031408Z"), Some(2147483648));
        assert_eq!(der_time(0x18, b"2038011903140Z"), None);
        assert_eq!(der_time(0x17, b"70010100000"), None);
    }

    #[test]
    fn truncated_der_is_none_not_a_panic() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let der = cert.cert.der().to_vec();
        let (from, to) = validity(&der).unwrap();
        assert!(from < to);
        for cut in 0..der.len() {
            let _ = validity(&der[..cut]);
        }
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}

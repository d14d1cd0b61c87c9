//! The demo's HTTPS.  When pibl.conf has no `[tls]` of its own, the demo
//! makes what HTTPS needs under `tls/` in the working directory — a small
//! certificate authority (`demo-ca.pem`) and a certificate for localhost,
//! 127.0.0.1 and ::1 that it signs (ECDSA P-256), once — and gives the
//! proxy pibl.conf with a `[tls]` table for them added (`tls/demo.conf`).
//! When pibl.conf has one, it is used as it is.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::config::Config;
use crate::error::Error;

/// Where the demo keeps what it makes.
const DIR: &str = "tls";
/// The names the demo's certificate is good for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What the proxy is started with: its configuration file, and the line
/// to try HTTPS with, when there is HTTPS.
pub struct Https {
    pub config: PathBuf,
    pub try_line: Option<String>,
}

/// Prepares HTTPS on `port` for the configuration read from `path`.
pub fn prepare(path: &str, config: &Config, port: u16) -> Result<Https, Error> {
    if let Some(tls) = &config.tls {
        let try_line = tls.port.map(|p| format!("curl -k https://localhost:{p}/"));
        return Ok(Https {
            config: PathBuf::from(path),
            try_line,
        });
    }
    let dir = Path::new(DIR);
    let (ca, cert, key) = (
        dir.join("demo-ca.pem"),
        dir.join("demo-cert.pem"),
        dir.join("demo-key.pem"),
    );
    if !(ca.exists() && cert.exists() && key.exists()) {
        make(dir, &ca, &cert, &key)?;
    }
    let text = fs::read_to_string(path).map_err(|e| Error::os(format!("cannot read {path}"), e))?;
    let demo_conf = dir.join("demo.conf");
    let table = format!(
        "\n# Added by pibl demo: HTTPS with the certificate it made.\n\
         [tls]\nport = {port}\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    fs::write(&demo_conf, text + &table)
        .map_err(|e| Error::os(format!("cannot write {}", demo_conf.display()), e))?;
    Ok(Https {
        config: demo_conf,
        try_line: Some(format!(
            "curl --cacert {} https://localhost:{port}/",
            ca.display()
        )),
    })
}

/// Writes a CA to `ca`, and a certificate it signs, with its key, to
/// `cert` and `key`.
fn make(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<(), Error> {
    let failed = |e: rcgen::Error| Error::Failed(format!("cannot make the demo certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pibl demo CA");
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_pem = ca_params.self_signed(&ca_key).map_err(failed)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().map_err(failed)?;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(failed)?;
    fs::create_dir_all(dir).map_err(|e| Error::os(format!("cannot create {DIR}"), e))?;
    write(ca, &ca_pem, 0o644)?;
    write(cert, &leaf.pem(), 0o644)?;
    // The key is the one secret of the three.
    write(key, &leaf_key.serialize_pem(), 0o600)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::os(format!("cannot write {}", path.display()), e))
}

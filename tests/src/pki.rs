//! Throwaway certificates for TLS tests, made by the `openssl` CLI: a CA, a server certificate
//! it signs for `127.0.0.1` and `localhost`, a client certificate it signs, and a second,
//! unrelated CA (trusting it must make the server's certificate fail the check).
//! Keys are EC P-256 in PKCS#8, which Kamailio, rustls and rsipstack all read.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The files of one test PKI, in a temp dir removed on drop.
pub struct TestPki {
    _dir: tempfile::TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    pub fn new() -> anyhow::Result<TestPki> {
        let dir = crate::instance_dir("pki-")?;
        let at = |name: &str| dir.path().join(name);
        self_signed_ca(&at("ca"), "Dialtone test CA")?;
        self_signed_ca(&at("other-ca"), "Unrelated test CA")?;
        signed(
            dir.path(),
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        signed(
            dir.path(),
            "client",
            "dialtone-gateway",
            "extendedKeyUsage=clientAuth\n",
        )?;
        Ok(TestPki {
            ca: at("ca.pem"),
            other_ca: at("other-ca.pem"),
            server_cert: at("server.pem"),
            server_key: at("server.key"),
            client_cert: at("client.pem"),
            client_key: at("client.key"),
            _dir: dir,
        })
    }
}

fn openssl(args: &[&str], dir: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `<base>.pem` and `<base>.key`: a CA valid for two days.
fn self_signed_ca(base: &Path, name: &str) -> anyhow::Result<()> {
    let (cert, key) = (base.with_extension("pem"), base.with_extension("key"));
    let (cert, key) = (path(&cert)?, path(&key)?);
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key,
            "-out",
            cert,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        None,
    )
}

/// `<name>.pem` and `<name>.key` in `dir`, signed by `ca.pem` there, with `extensions`.
fn signed(dir: &Path, name: &str, common_name: &str, extensions: &str) -> anyhow::Result<()> {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
    )
    .context("writing the extensions file")?;
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        Some(dir),
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{:x}", std::process::id()),
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
        Some(dir),
    )
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("{p:?} is not UTF-8"))
}

//! Certificates the TLS tests make themselves (rcgen): a CA, and node or client
//! certificates signed by it, written as PEM files into a test's directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority: its certificate as a PEM file, and its key to sign with.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Where the CA certificate was written.
    pub path: PathBuf,
}

/// A certificate and its key, written as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The private key, PEM (to check it never shows up where it must not).
    pub key_pem: String,
}

impl Issued {
    /// The certificate as DER (what a server presents in its handshake).
    pub fn der(&self) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(&self.cert).unwrap().as_ref().to_vec()
    }

    pub fn cert_arg(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    pub fn key_arg(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let pem = certificate.pem();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, pem).unwrap();
        Ca { issuer: Issuer::new(params, key), path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// A certificate naming `names` (IP addresses or DNS names) in its subjectAltName,
    /// for both server and client authentication (what a node presents both ways),
    /// written to `dir/<stem>.pem` and `dir/<stem>.key` (mode 0600).
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert, certificate.pem()).unwrap();
        let key_pem = key.serialize_pem();
        std::fs::write(&key_path, &key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Issued { cert, key: key_path, key_pem }
    }
}

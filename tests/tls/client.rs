//! A minimal blocking HTTPS client for the TLS tests (rustls, the daemon's own TLS
//! library, with the ring provider): one request per connection, like
//! `common::request`, optionally presenting a client certificate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::common::{parse_response, Response};
use crate::pki::Issued;

/// Trusts one CA; presents a certificate if given one; sends a bearer token if given one.
#[derive(Clone)]
pub struct Https {
    config: Arc<rustls::ClientConfig>,
    /// `Authorization: Bearer` on every request (`with_token`).
    token: Option<String>,
}

impl Https {
    pub fn new(ca: &Path, certificate: Option<&Issued>) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match certificate {
            None => builder.with_no_client_auth(),
            Some(issued) => {
                let chain =
                    CertificateDer::pem_file_iter(&issued.cert).unwrap().map(Result::unwrap).collect();
                let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Https { config: Arc::new(config), token: None }
    }

    /// The same client, sending `Authorization: Bearer TOKEN` on every request.
    pub fn with_token(mut self, token: &str) -> Https {
        self.token = Some(token.to_owned());
        self
    }

    /// One request to `ip:port` (the server's certificate must name `ip`), with
    /// `Connection: close`; Err when the connection or the handshake fails.
    pub fn request(
        &self,
        ip: &str,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let tcp = TcpStream::connect((ip, port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(ip.to_owned()).map_err(std::io::Error::other)?;
        let connection =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        stream.write_all(&message)?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify after a complete answer.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(error) => return Err(error),
        }
        parse_response(&raw).ok_or_else(|| {
            std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
        })
    }

    /// The certificate the server at `ip:port` presents (DER), after a full handshake
    /// (which checks it against this client's CA); Err when the handshake fails.
    pub fn server_certificate(&self, ip: &str, port: u16) -> std::io::Result<Vec<u8>> {
        let mut tcp = TcpStream::connect((ip, port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(ip.to_owned()).map_err(std::io::Error::other)?;
        let mut connection =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp)?;
        }
        let certificates = connection.peer_certificates().ok_or_else(|| std::io::Error::other("none"))?;
        Ok(certificates[0].as_ref().to_vec())
    }

    /// A connection to `ip:port` that has finished its TLS handshake and sent nothing
    /// else (an idle client); Err when the connection or the handshake fails.
    pub fn handshake(&self, ip: &str, port: u16) -> std::io::Result<(rustls::ClientConnection, TcpStream)> {
        let mut tcp = TcpStream::connect((ip, port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(ip.to_owned()).map_err(std::io::Error::other)?;
        let mut connection =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp)?;
        }
        Ok((connection, tcp))
    }

    /// The bytes of the ClientHello this client would send to `ip` (a real one, to cut
    /// short).
    pub fn client_hello(&self, ip: &str) -> Vec<u8> {
        let name = ServerName::try_from(ip.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let mut hello = Vec::new();
        while connection.wants_write() {
            connection.write_tls(&mut hello).unwrap();
        }
        hello
    }

    pub fn get(&self, ip: &str, port: u16, path: &str) -> std::io::Result<Response> {
        self.request(ip, port, "GET", path, &[], b"")
    }

    pub fn put(&self, ip: &str, port: u16, path: &str, body: &[u8]) -> std::io::Result<Response> {
        self.request(ip, port, "PUT", path, &[], body)
    }

    /// `/status` as JSON, if the node answers 200.
    pub fn status(&self, ip: &str, port: u16) -> Option<serde_json::Value> {
        let response = self.get(ip, port, "/status").ok()?;
        (response.status == 200).then(|| response.json())
    }
}

/// One plain HTTP request to `ip:port` (`common::request` reaches 127.0.0.1 only).
pub fn plain_request(
    ip: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect((ip, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw))))
}

//! TLS: the server serves `wss://` and `https://` with a certificate made at
//! test time; the client trusts it through `--ca-cert` and refuses it
//! without; a plain connection to the TLS port harms no one.

use std::sync::Arc;

use crate::common::{self, CLIENT, PATIENCE, SERVER, TestServer, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, RootCertStore};

#[tokio::test]
async fn wss_with_the_ca_works_and_without_it_fails_in_one_line() {
    let (cert, key, der) = common::self_signed_certificate();
    let acceptor = chat::tls::acceptor(&cert, &key).expect("acceptor");
    let server =
        TestServer::with_tls(chat::server::config::ServerConfig::default(), Some(acceptor)).await;
    let url = format!("wss://localhost:{}/secure", server.addr.port());
    let ca = cert.to_str().expect("path");

    let (code, stdout, stderr) =
        run(CLIENT, &[&url, "--name", "tom", "--ca-cert", ca], "over tls\n").await;
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(stdout.ends_with("* tom joined\ntom: over tls\n"), "{stdout}");

    // By IP address too: the certificate names 127.0.0.1.
    let by_ip = format!("wss://127.0.0.1:{}/", server.addr.port());
    let (code, stdout, _) = run(CLIENT, &[&by_ip, "--name", "ip", "--ca-cert", ca], "x\n").await;
    assert_eq!(code, 0);
    assert!(stdout.ends_with("ip: x\n"), "{stdout}");

    let (code, stdout, stderr) = run(CLIENT, &[&url, "--name", "eve"], "hi\n").await;
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: cannot connect to {url}: ")), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    // A plain-text client on the TLS port is dropped; the server goes on.
    let plain = format!("ws://127.0.0.1:{}/", server.addr.port());
    let (code, _, stderr) = run(CLIENT, &[&plain], "").await;
    assert_eq!(code, 1, "{stderr}");

    // https: the health check over TLS.
    let mut roots = RootCertStore::empty();
    roots.add(der.into()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut response = String::new();
    timeout(PATIENCE, tls.read_to_string(&mut response)).await.expect("in time").ok();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\nok\n"),
        "{response:?}"
    );

    let (code, stdout, _) =
        run(CLIENT, &[&url, "--name", "tom2", "--ca-cert", ca], "still up\n").await;
    assert_eq!(code, 0);
    assert!(stdout.ends_with("tom2: still up\n"), "{stdout}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(cert.parent().expect("dir"));
}

#[tokio::test]
async fn server_with_unusable_tls_files_exits_1_with_one_line() {
    let missing = std::env::temp_dir().join("chat-no-such-cert.pem");
    let missing = missing.to_str().expect("path");
    let args = ["--port", "0", "--tls-cert", missing, "--tls-key", missing];
    let (code, stdout, stderr) = run(SERVER, &args, "").await;
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: cannot load {missing}: ")), "{stderr}");
    assert!(stdout.is_empty());
}

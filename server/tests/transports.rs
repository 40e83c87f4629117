//! Every transport carries the same conversation: client cores chat over TLS (with the
//! certificate verified for the host name dialled), and a client that does not trust the
//! server's certificate never gets in.

mod support;

use std::sync::Arc;

use sdk_core::{Connector, ServerAddress, TlsConnector, TlsTrust};
use support::*;

/// A server process with TLS on a fresh port and a development certificate made in its data
/// directory (for localhost and 127.0.0.1).
fn start_with_tls(dir: &std::path::Path) -> Server {
    Server::start_process(dir, &["--tls-listen", "127.0.0.1:0"])
}

/// A TLS connector trusting only the development certificate the server made.
fn trusting_dev_cert(server: &Server) -> Arc<dyn Connector> {
    let pem = std::fs::read(server.data_dir.join("tls/cert.pem")).expect("the dev certificate");
    let trust = TlsTrust::pinned_ca_pem(&pem).expect("a certificate");
    Arc::new(TlsConnector::new(&trust).expect("a TLS configuration"))
}

#[tokio::test]
async fn two_clients_chat_over_tls_to_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path());
    let tls = server.tls_addr.expect("TLS is on");
    // By name, so the certificate is checked against "localhost" (and SNI carries it).
    let address = ServerAddress::new("localhost", tls.port());
    let (alice, mut alice_events) = start_client_over(
        &server,
        address.clone(),
        trusting_dev_cert(&server),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) =
        start_client_over(&server, address, trusting_dev_cert(&server), "bob", "phone");
    chat_once(&alice, &mut alice_events, &mut bob_events, "hello over TLS").await;
}

#[tokio::test]
async fn a_tls_client_and_a_plain_tcp_client_share_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path());
    let tls = server.tls_addr.expect("TLS is on");
    let (alice, mut alice_events) = start_client_over(
        &server,
        ServerAddress::new("127.0.0.1", tls.port()),
        trusting_dev_cert(&server),
        "alice",
        "phone",
    );
    let (_bob, mut bob_events) = start_client(&server, "bob", "laptop");
    chat_once(
        &alice,
        &mut alice_events,
        &mut bob_events,
        "from TLS to TCP",
    )
    .await;
}

#[tokio::test]
async fn the_default_trust_refuses_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path());
    let tls = server.tls_addr.expect("TLS is on");
    let web_pki_only = TlsConnector::new(&TlsTrust::default()).unwrap();
    let refused = web_pki_only
        .connect(&ServerAddress::new("localhost", tls.port()))
        .await
        .err()
        .expect("an unknown issuer is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData, "{refused}");
}

#[tokio::test]
async fn pinning_another_ca_refuses_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_tls(dir.path());
    let tls = server.tls_addr.expect("TLS is on");
    let elsewhere = tempfile::tempdir().unwrap();
    im_server::cli::write_dev_cert(elsewhere.path(), &["localhost".into()]).unwrap();
    let pem = std::fs::read(elsewhere.path().join("cert.pem")).unwrap();
    let refused = TlsConnector::new(&TlsTrust::pinned_ca_pem(&pem).unwrap())
        .unwrap()
        .connect(&ServerAddress::new("localhost", tls.port()))
        .await
        .err()
        .expect("a certificate from an issuer that is not pinned is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData, "{refused}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused() {
    // The operator's certificate (given with --tls-cert/--tls-key) names chat.example.org; a
    // client that trusts it but dials "localhost" must not accept it.
    let certs = tempfile::tempdir().unwrap();
    im_server::cli::write_dev_cert(certs.path(), &["chat.example.org".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem").display().to_string();
    let key = certs.path().join("key.pem").display().to_string();
    let server = Server::start_process(
        dir.path(),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let tls = server.tls_addr.expect("TLS is on");
    let pem = std::fs::read(&cert).unwrap();
    let refused = TlsConnector::new(&TlsTrust::pinned_ca_pem(&pem).unwrap())
        .unwrap()
        .connect(&ServerAddress::new("localhost", tls.port()))
        .await
        .err()
        .expect("a certificate for another name is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData, "{refused}");
}

#[test]
fn a_server_refuses_to_start_with_a_key_that_is_not_pem() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    im_server::cli::write_dev_cert(dir.path(), &["localhost".into()]).unwrap();
    std::fs::write(&key, "garbage").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args([
            "--secret",
            SECRET,
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("key.pem"),
        "the error names the file: {stderr}"
    );
}

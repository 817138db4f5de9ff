//! TLS (rustls): with `--tls-cert/--tls-key` the server speaks only TLS. A client that trusts
//! the certificate round-trips data; a plaintext client is refused; and bad key material fails
//! at start-up with a TLS error instead of serving plaintext by accident.

mod common;

use std::sync::Arc;

use arrow_flight::FlightClient;
use common::*;
use quiver_flight::engine::{Database, Options};
use quiver_flight::{ServeError, ServerConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_trust_the_cert_work_and_plaintext_clients_fail() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.pem();
    let key = ck.signing_key.serialize_pem();
    let cfg = ServerConfig {
        tls: Some((cert.clone().into_bytes(), key.into_bytes())),
        ..ServerConfig::default()
    };
    let server = TestServer::start(cfg).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightClient::new(ch);
    put(&mut c, "t", vec![batch(&[1, 2, 3], 4)]).await.unwrap();
    let r = get(&mut c, "t").await.unwrap();
    assert_eq!(all_u64s(&r, "id"), [1, 2, 3]);

    let mut plain = server.client().await;
    assert!(get(&mut plain, "t").await.is_err(), "a plaintext call succeeded on a TLS server");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_key_material_is_a_tls_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), Options::default().build_indexes(false)).unwrap());
    let listener = quiver_flight::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let cfg = ServerConfig {
        tls: Some((b"not a cert".to_vec(), b"not a key".to_vec())),
        ..ServerConfig::default()
    };
    let r = quiver_flight::serve(db, listener, &cfg, std::future::pending()).await;
    assert!(matches!(r, Err(ServeError::Tls(_)) | Err(ServeError::Transport(_))), "{r:?}");
}

/// Bad TLS material used to print "listening on grpc+tls://…" and then fail with a bare
/// "transport error"; it must be refused before the port is bound, saying what is wrong.
#[test]
fn bad_tls_material_is_refused_before_listening_with_the_reason() {
    use quiver_flight::{TlsError, check_tls};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    check_tls(cert.as_bytes(), key.as_bytes()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()]).unwrap();
    let other_key = other.signing_key.serialize_pem();

    assert!(matches!(
        check_tls(b"not a certificate", key.as_bytes()),
        Err(TlsError::NoCertificate)
    ));
    assert!(matches!(check_tls(key.as_bytes(), key.as_bytes()), Err(TlsError::NoCertificate)));
    let broken = cert.replace("MII", "M!I");
    assert!(check_tls(broken.as_bytes(), key.as_bytes()).is_err());
    assert!(matches!(check_tls(cert.as_bytes(), b"no key here"), Err(TlsError::Key(_))));
    assert!(matches!(check_tls(cert.as_bytes(), cert.as_bytes()), Err(TlsError::Key(_))));
    match check_tls(cert.as_bytes(), other_key.as_bytes()) {
        Err(TlsError::Identity(reason)) => assert!(!reason.is_empty()),
        other => panic!("a key of another certificate must be refused, got {other:?}"),
    }
}

//! The engine's API against slow and oversized clients, over real sockets.

use meshgov_e2e::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, Duration) {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the engine held a stalled client for 30 s");
    (String::from_utf8_lossy(&buf).into_owned(), t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_registration_gets_408_and_an_oversized_one_413() {
    let repo = PolicyRepo::new().unwrap();
    let engine = start_engine(engine_config(&repo, new_key().unwrap()))
        .await
        .unwrap();
    let auth = format!("Authorization: Bearer {REGISTRATION_TOKEN}\r\n");
    // Without the registration token, a body is refused before it is read.
    let (resp, took) = send(
        engine.addr,
        b"POST /v1/sidecars HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n{",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        took < Duration::from_secs(9),
        "waited {took:?} for a body it refuses"
    );
    // Headers in time, then 10 of 500 promised body bytes, then nothing.
    let (resp, took) = send(
        engine.addr,
        format!("POST /v1/sidecars HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"id\":\"a\",").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("body_timeout"), "{resp}");
    assert!(took >= Duration::from_secs(9), "gave up after {took:?}");
    let big = format!("{{\"id\":\"{}\"}}", "a".repeat(70 * 1024));
    let (resp, _) = send(
        engine.addr,
        format!(
            "POST /v1/sidecars HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("too_large"), "{resp}");
    // A declared length over the limit is refused on the head alone.
    let (resp, took) = send(
        engine.addr,
        format!(
            "POST /v1/sidecars HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 1000000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(
        took < Duration::from_secs(9),
        "waited {took:?} for a body it refuses"
    );
    assert!(
        engine.fleet()["sidecars"]
            .as_array()
            .is_none_or(|s| s.is_empty())
    );
    engine.stop().await.unwrap();
}

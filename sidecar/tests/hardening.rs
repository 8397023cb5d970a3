//! Timeouts and limits against slow or hostile peers, over real sockets:
//! clients that drip headers or bodies (slowloris), upstreams that stall
//! mid-body, oversized bodies, what a client can make the sidecar echo,
//! and ambiguous credentials.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Tight limits so each test finishes in well under a second per wait.
const LIMITS: &str = "[limits]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\nupstream_stall_timeout_ms = 300\n";

/// How long any wait below may take before the test calls it a hang: far
/// above the 300 ms limits, far below the 30 s a stalled peer holds on.
const HANG: Duration = Duration::from_secs(10);

/// Sends `head` (and `body`), then keeps the socket open without sending
/// more; returns everything the sidecar wrote before it closed.
async fn send_and_hold(addr: std::net::SocketAddr, head: &[u8]) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HANG, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the sidecar kept a stalled connection open for {HANG:?}; got {:?}",
        String::from_utf8_lossy(&buf)
    );
    (buf, t0.elapsed())
}

#[tokio::test]
async fn a_client_that_drips_its_headers_is_cut_off() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            extra_config: LIMITS.into(),
            ..Options::default()
        },
    )
    .await;
    let (_, took) = send_and_hold(
        s.addr,
        b"GET /v1/ports/profiles/records HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_drips_an_aggregate_body_gets_408() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            extra_config: LIMITS.into(),
            ..Options::default()
        },
    )
    .await;
    let t = token(&keys, "ann", &["marketing"], "campaign-analytics");
    let head = format!(
        "POST /v1/ports/plays/aggregate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"aggregations\":"
    );
    let (buf, _) = send_and_hold(s.addr, head.as_bytes()).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.error_code(), "body_timeout");
    s.stop().await;
}

#[tokio::test]
async fn a_pusher_that_drips_a_bundle_gets_408_and_the_bundle_in_force_stays() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            control: true,
            extra_config: LIMITS.into(),
            ..Options::default()
        },
    )
    .await;
    let revision = |s: &Sidecar| s.app.bundle.current().map(|b| b.meta.revision);
    let before = revision(&s);
    assert!(before.is_some());
    let head = b"PUT /control/v1/bundle HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n{\"payloadType\":";
    let (buf, _) = send_and_hold(s.control.unwrap(), head).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(revision(&s), before);
    assert_eq!(
        push_events(&s),
        [(Some(408), Some("body_timeout".to_string()))]
    );
    s.stop().await;
}

/// Sends `request` from one thread while reading the answer on another, so
/// a server that answers and closes before reading everything is heard.
async fn upload(addr: std::net::SocketAddr, request: Vec<u8>) -> Resp {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&request);
        });
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let _ = writer.join();
        parse_response(&buf)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_oversized_bundle_is_refused_before_it_is_read_whole() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            control: true,
            extra_config: "[limits]\nmax_bundle_bytes = 65536\n".into(),
            ..Options::default()
        },
    )
    .await;
    // A body that says how long it is: refused on its head alone, though
    // not one byte of the gigabyte is sent.
    let head = b"PUT /control/v1/bundle HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n";
    let (buf, took) = send_and_hold(s.control.unwrap(), head).await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "too_large");
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("limits.max_bundle_bytes")
    );
    assert!(took < HANG, "{took:?}");
    // A chunked body, whose length is known only as it is read: refused
    // once it passes the limit.
    let mut req = b"PUT /control/v1/bundle HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        req.resize(req.len() + 8192, b' ');
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = upload(s.control.unwrap(), req).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "too_large");
    // Refused before verification, and audited all the same.
    assert_eq!(
        push_events(&s),
        [
            (Some(413), Some("too_large".to_string())),
            (Some(413), Some("too_large".to_string()))
        ]
    );
    s.stop().await;
}

/// One push is read and applied at a time: while a pusher holds the slot
/// (here by dripping its body), another waits briefly, then gets 429 with
/// `Retry-After`, audited; once the slot is free, a push is applied.
#[tokio::test]
async fn pushes_are_applied_one_at_a_time_and_a_second_gets_429() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            control: true,
            extra_config: "[limits]\nbody_read_timeout_ms = 20000\n".into(),
            ..Options::default()
        },
    )
    .await;
    let control = s.control.unwrap();
    let mut holder = tokio::net::TcpStream::connect(control).await.unwrap();
    holder
        .write_all(b"PUT /control/v1/bundle HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let good = signed_bundle(&s.gov, &s.app.descriptor, 8, 600);
    let t0 = Instant::now();
    let busy = put(control, "/control/v1/bundle", &good, &[]).await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.error_code(), "busy");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(s.app.bundle.current().map(|b| b.meta.revision), Some(7));
    // The holder goes away: its push fails, and the slot is free.
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = put(control, "/control/v1/bundle", &good, &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(s.app.bundle.current().map(|b| b.meta.revision), Some(8));
    assert_eq!(
        push_events(&s),
        [
            (Some(429), Some("busy".to_string())),
            (Some(400), Some("malformed".to_string())),
            (Some(200), None),
        ]
    );
    s.stop().await;
}

/// Every `bundle_push` event in the sidecar's audit log: status and error.
fn push_events(s: &Sidecar) -> Vec<(Option<u16>, Option<String>)> {
    let dir = s.dir.path().join("state/audit");
    meshgov_audit::show::read_filtered(&dir, &meshgov_audit::show::Filter::default())
        .unwrap()
        .into_iter()
        .filter(|(e, _)| e.action.as_deref() == Some("bundle_push"))
        .map(|(e, _)| (e.status, e.error))
        .collect()
}

#[tokio::test]
async fn an_oversized_aggregate_body_is_a_400_with_a_reason() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            ..Options::default()
        },
    )
    .await;
    let t = token(&keys, "ann", &["marketing"], "campaign-analytics");
    let body = format!(
        "{{\"epsilon\":0.1,\"aggregations\":[{}{{\"count\":{{}}}}]}}",
        "{\"count\":{}},".repeat(8000)
    );
    assert!(body.len() > 64 * 1024);
    let req = format!(
        "POST /v1/ports/plays/aggregate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = upload(s.addr, req.into_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("length limit"), "{}", r.text());
    s.stop().await;
}

/// An HTTP upstream that sends its headers and one record, then nothing
/// while holding the connection open.
async fn stalling_upstream(line: &'static str) -> std::net::SocketAddr {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = up.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = c.read(&mut buf).await.unwrap();
        let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
        );
        c.write_all(resp.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(c);
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_fails_the_read_instead_of_pinning_it() {
    let keys = Keys::generate();
    let up = stalling_upstream(
        r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    )
    .await;
    let s = start(
        &keys,
        Options {
            upstream: Some(format!("kind = \"http\"\nurl = \"http://{up}\"")),
            extra_config: LIMITS.into(),
            ..Options::default()
        },
    )
    .await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let req = format!(
        "GET /v1/ports/profiles/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    let (buf, took) = send_and_hold(s.addr, req.as_bytes()).await;
    assert!(took < HANG, "took {took:?}");
    let text = String::from_utf8_lossy(&buf);
    // The response was cut off: no terminating chunk, so the consumer knows
    // it is incomplete rather than short.
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a stalled read ended as complete: {text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_client_request_id_is_echoed_only_when_it_is_a_plain_token() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    let ok = get(s.addr, "/healthz", &[("X-Request-Id", "abc-123_x.y")]).await;
    assert_eq!(ok.header("x-client-request-id"), Some("abc-123_x.y"));
    // The sidecar's own id is always minted, never the client's.
    let own = ok.header("x-request-id").unwrap();
    assert_eq!(own.len(), 24);
    assert!(own.bytes().all(|b| b.is_ascii_hexdigit()), "{own}");
    // Responses are never cached nor content-sniffed into something else.
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    // Header values cannot carry CR/LF on the wire (hyper refuses them), but
    // anything beyond the plain alphabet is dropped, not reflected.
    for hostile in ["a b", "a\"<script>", "x%0d%0aSet-Cookie:1", &"a".repeat(65)] {
        let r = get(s.addr, "/healthz", &[("X-Request-Id", hostile)]).await;
        assert_eq!(r.header("x-client-request-id"), None, "{hostile}");
        let own = r.header("x-request-id").unwrap();
        assert!(own.bytes().all(|b| b.is_ascii_hexdigit()), "{own}");
    }
    // A raw CR inside a header line is a malformed request, never a split.
    let r = raw(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rSet-Cookie: owned=1\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.header("set-cookie").is_none());
    s.stop().await;
}

#[tokio::test]
async fn query_values_never_reach_headers_and_are_escaped_in_error_bodies() {
    let keys = Keys::generate();
    let s = start(&keys, Options::default()).await;
    let t = token(&keys, "mia", &["marketing"], "campaign-analytics");
    for q in [
        "from=%0d%0aSet-Cookie:%20owned%3D1",
        "limit=1%0d%0aX-Injected:%201",
        "x%0d%0aSet-Cookie:1=1",
    ] {
        let r = get_with(
            s.addr,
            &format!("/v1/ports/profiles/records?{q}"),
            &t,
            "text/csv",
        )
        .await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.header("set-cookie").is_none() && r.header("x-injected").is_none());
        assert!(r.header("content-disposition").is_none());
        let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
        assert!(!reason.contains(['\r', '\n']), "{q}: {reason:?}");
    }
    s.stop().await;
}

/// Two `Authorization` headers are refused with 400 on both ports, even
/// when each alone would be accepted: which one a proxy in front reads may
/// differ from which one the sidecar reads.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            control: true,
            ..Options::default()
        },
    )
    .await;
    let mia = format!(
        "Bearer {}",
        token(&keys, "mia", &["marketing"], "campaign-analytics")
    );
    let fred = format!(
        "Bearer {}",
        token(&keys, "fred", &["fraud"], "fraud-investigation")
    );
    write_upstream(s.dir.path(), "profiles", "a.ndjson", "{}\n");
    let path = "/v1/ports/profiles/records";
    assert_eq!(
        get(s.addr, path, &[("Authorization", &mia)]).await.status,
        200
    );
    for pair in [[&mia, &fred], [&mia, &mia]] {
        let r = get(
            s.addr,
            path,
            &[("Authorization", pair[0]), ("authorization", pair[1])],
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(
            r.text().contains("more than one `Authorization`"),
            "{}",
            r.text()
        );
    }
    let r = get(
        s.control.unwrap(),
        "/control/v1/status",
        &[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    s.stop().await;
}

/// Requests the HTTP parser refuses never reach a handler, so they have no
/// audit event; each is counted by listener and reason instead.
#[tokio::test]
async fn requests_the_http_parser_refuses_are_counted() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            control: true,
            ..Options::default()
        },
    )
    .await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let r = raw(s.addr, huge.clone().into_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.text());
    let mut bad = b"GET /v1/ports/".to_vec();
    bad.extend_from_slice(b"\xff/records HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = raw(s.addr, bad.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = raw(s.control.unwrap(), bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The connection task counts after hyper has answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = s
        .app
        .metrics
        .render(&s.app.bundle, &s.app.audit, &s.app.auth, now());
    for (series, n) in [
        (r#"listener="data",reason="too_large""#, 1),
        (r#"listener="data",reason="malformed""#, 1),
        (r#"listener="control",reason="malformed""#, 1),
        (r#"listener="control",reason="too_large""#, 0),
    ] {
        let line = format!("meshgov_sidecar_http_refused_total{{{series}}} {n}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    s.stop().await;
}

/// A client that reads the head of a large answer and then nothing: its
/// 4 KiB receive buffer fills, then the sidecar's send buffer, and every
/// write waits. The write deadline ends the connection, the completion
/// says `stalled`, the answer does not end as if complete, and the metrics
/// count it. Through the record stream and through the columnar plane.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_audited_as_stalled() {
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            extra_config: "[limits]\nwrite_stall_timeout_ms = 500\n".into(),
            ..Options::default()
        },
    )
    .await;
    let line = r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#;
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let dir = s.dir.path().join("state/audit");
    // About 30 MB and 9 MB, far more than the kernel buffers hold.
    for (n, (rows, query)) in [(200_000, ""), (150_000, "?fields=user_id,email,country")]
        .into_iter()
        .enumerate()
    {
        let big: String = (0..rows).map(|_| format!("{line}\n")).collect();
        write_upstream(s.dir.path(), "profiles", "big.ndjson", &big);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = socket.connect(s.addr).await.unwrap();
        c.write_all(
            format!(
                "GET /v1/ports/profiles/records{query} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {mia}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 1024];
        let got = c.read(&mut head).await.unwrap();
        assert!(head[..got].starts_with(b"HTTP/1.1 200"), "{query}");
        // Then read nothing for well past the deadline.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(HANG, c.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "`{query}`: the sidecar held a stalled connection open for {HANG:?} past its 500 ms write deadline"
        );
        // What was buffered arrives, but not the end of a complete answer.
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "`{query}`: a cut answer looked complete"
        );
        let mut outcomes = Vec::new();
        for _ in 0..100 {
            outcomes =
                meshgov_audit::show::read_filtered(&dir, &meshgov_audit::show::Filter::default())
                    .unwrap()
                    .into_iter()
                    .filter_map(|(e, _)| e.outcome)
                    .collect();
            if outcomes.len() > n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            outcomes.get(n).map(String::as_str),
            Some("stalled"),
            "`{query}`"
        );
    }
    let text = s
        .app
        .metrics
        .render(&s.app.bundle, &s.app.audit, &s.app.auth, now());
    for (outcome, n) in [("stalled", 2), ("client_gone", 0), ("complete", 0)] {
        let line = format!("meshgov_sidecar_streams_total{{outcome=\"{outcome}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    s.stop().await;
}

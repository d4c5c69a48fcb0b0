//! Issue 14, items 5 and 6 (upstream side): a CRM that breaks framing, calls sent twice, and a
//! CRM protected from load. Every test runs the real binary against a raw CRM on loopback, on
//! the hyper engine with its HTTP/1.1 lane and (`PERMGATE_TEST_H1_LANE=off`) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::*;

/// The demo config with `extra` added to its `[upstream]` table.
fn config_with(extra: &str) -> String {
    demo_config_text().replacen("pool_size = 1024", &format!("pool_size = 1024\n{extra}"), 1)
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A path's answer names the path; 50 ms later a second complete answer ("stale") follows on
/// the same connection: bytes past the first answer's end, in a later segment.
fn late_second_answer(line: &str, _: usize) -> Reply {
    let path = line.split(' ').nth(1).unwrap_or_default();
    Reply::ThenLate(ok(path), Duration::from_millis(50), ok("stale"))
}

/// Ten calls one after the other, each for its own record: how many got another's answer.
async fn mixed_up_answers(h: &Harness) -> usize {
    let c = client();
    let mut wrong = 0;
    for i in 0..10 {
        let path = format!("/api/v1/customers/{i}");
        let r = c
            .get(h.url(&path))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if status != 200 || body != path {
            wrong += 1;
        }
    }
    wrong
}

/// `upstream.keepalive = false` (or `pool_size = 0`): every call has its own CRM connection,
/// closed after its answer, so a CRM's late bytes can never be read as the next caller's
/// answer. With keep-alive on, the mix-up is what it is (printed, not asserted: no proxy that
/// reuses connections can rule it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_off_gives_every_call_its_own_crm_connection() {
    let crm = RawCrm::start(late_second_answer).await;
    let h = Harness::with_config_text_to(&demo_config_text(), &[], Some(crm.addr)).await;
    let wrong = mixed_up_answers(&h).await;
    eprintln!(
        "keep-alive on: {wrong} of 10 calls got another call's answer, over {} CRM connections",
        crm.seen.accepted.load(SeqCst)
    );
    drop(h);
    let texts = [
        ("keepalive = false", config_with("keepalive = false")),
        (
            "pool_size = 0",
            demo_config_text().replacen("pool_size = 1024", "pool_size = 0", 1),
        ),
    ];
    for (extra, text) in texts {
        let crm = RawCrm::start(late_second_answer).await;
        let h = Harness::with_config_text_to(&text, &[], Some(crm.addr)).await;
        assert_eq!(mixed_up_answers(&h).await, 0, "{extra}");
        assert_eq!(
            crm.seen.accepted.load(SeqCst),
            10,
            "{extra}: one connection per call"
        );
    }
}

/// A reused CRM connection closed by the CRM after it read the request, without a word: a
/// DELETE (not in `upstream.retry_methods`) is never sent again (502 `upstream_error`, the CRM
/// saw it once); a GET is sent once more on a new connection and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_in_retry_methods_is_never_sent_twice() {
    // The first request on a connection is answered; a later one is read, then the
    // connection closed.
    let crm = RawCrm::start(|_, index| {
        if index == 0 {
            Reply::Send(ok("ok"))
        } else {
            Reply::Close
        }
    })
    .await;
    let h = Harness::with_config_text_to(&demo_config_text(), &[], Some(crm.addr)).await;
    let c = client();
    let call = |method: reqwest::Method, path: &str| {
        c.request(method, h.url(path))
            .header("authorization", bearer("u-admin"))
            .send()
    };
    // A pooled connection first, then the DELETE on it.
    let r = call(reqwest::Method::GET, "/api/v1/customers/1")
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = call(reqwest::Method::DELETE, "/api/v1/customers/2")
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "upstream_error"
    );
    assert_eq!(
        crm.seen.count("DELETE /api/v1/customers/2 "),
        1,
        "{:?}",
        crm.seen.lines.lock().unwrap()
    );
    // The same for a GET: sent again on a new connection, answered.
    let r = call(reqwest::Method::GET, "/api/v1/customers/3")
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = call(reqwest::Method::GET, "/api/v1/customers/4")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(crm.seen.count("GET /api/v1/customers/4 "), 2);
}

/// A CRM answer framed both by `Transfer-Encoding` and `Content-Length` is never passed on
/// (not its length with the chunks' body, not truncated): 502 `upstream_error` on both paths,
/// and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_twice_is_refused_on_every_path() {
    let crm = RawCrm::start(|line, _| {
        if line.contains("/api/v1/customers/1 ") {
            Reply::Send(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
                    .into(),
            )
        } else {
            Reply::Send(ok("fine"))
        }
    })
    .await;
    let h = Harness::with_config_text_to(&demo_config_text(), &[], Some(crm.addr)).await;
    let c = client();
    for _ in 0..2 {
        let r = c
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert!(r.headers().get("content-length").is_none_or(|v| v != "3"));
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "upstream_error"
        );
        let r = c
            .get(h.url("/api/v1/customers/2"))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
    }
}

/// `upstream.max_connections = 2` under 20 calls at once: the CRM never has more than 2
/// connections; the calls that fit in the queue wait and succeed, the others are refused at
/// once with 503 `upstream_busy` and `Retry-After`, counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_the_crm_and_refuses_the_excess_fast() {
    let crm = RawCrm::start(|_, _| Reply::After(Duration::from_millis(300), ok("slow"))).await;
    let (admin, admin_port) = admin_section();
    let text =
        config_with("max_connections = 2\nqueue_size = 4\nqueue_timeout_ms = 10000") + &admin;
    let h = Harness::with_config_text_to(&text, &[], Some(crm.addr)).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = h.url(&format!("/api/v1/customers/{i}"));
        calls.spawn(async move {
            let started = Instant::now();
            let r = client()
                .get(url)
                .header("authorization", bearer("u-admin"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body = r.text().await.unwrap();
            (status, retry_after, body, started.elapsed())
        });
    }
    let results = calls.join_all().await;
    let mut refused = 0;
    for (status, retry_after, body, took) in &results {
        match status {
            200 => assert_eq!(body, "slow"),
            503 => {
                refused += 1;
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["error"], "upstream_busy", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert!(
                    *took < Duration::from_millis(250),
                    "refused slowly: {took:?}"
                );
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let answered = results.len() - refused;
    assert!(
        crm.seen.max_open.load(SeqCst) <= 2,
        "the CRM saw more than 2 at once"
    );
    // Two at the CRM, four queued: the rest refused (a call that arrived after some were
    // answered may have got in too).
    assert!(answered >= 6, "{answered} answered");
    assert!(refused >= 1, "none refused");
    let metrics = admin_metrics(&format!("http://127.0.0.1:{admin_port}")).await;
    assert!(
        metrics.contains(&format!(
            "permgate_upstream_errors_total{{kind=\"busy\"}} {refused}"
        )),
        "{metrics}"
    );
}

/// A call that waits in the queue longer than `upstream.queue_timeout_ms` is refused (503
/// `upstream_busy`, `Retry-After`) when its wait runs out, not when the CRM is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_past_queue_timeout_ms_is_refused() {
    let crm = RawCrm::start(|_, _| Reply::After(Duration::from_millis(1500), ok("slow"))).await;
    let text = config_with("max_connections = 1\nqueue_size = 10\nqueue_timeout_ms = 100");
    let h = Harness::with_config_text_to(&text, &[], Some(crm.addr)).await;
    let call = |i: usize| {
        let url = h.url(&format!("/api/v1/customers/{i}"));
        async move {
            let started = Instant::now();
            let r = client()
                .get(url)
                .header("authorization", bearer("u-admin"))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            (
                r.status().as_u16(),
                retry_after,
                r.text().await.unwrap(),
                started.elapsed(),
            )
        }
    };
    let first = tokio::spawn(call(0));
    // The first holds the CRM's one place; the second waits, then is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, retry_after, body, took) = call(1).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream_busy"), "{body}");
    assert_eq!(retry_after.unwrap(), "1");
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    let (status, _, body, _) = first.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert_eq!(crm.seen.accepted.load(SeqCst), 1);
}

/// A body the CRM sends after its answer to a HEAD request, in a later segment, reaches no
/// one with `upstream.keepalive = false`: the next caller gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_off_a_body_after_a_head_answer_reaches_no_one() {
    let crm = RawCrm::start(|line, _| {
        let path = line.split(' ').nth(1).unwrap_or_default();
        if line.starts_with("HEAD ") {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_string();
            Reply::ThenLate(head, Duration::from_millis(50), "stale".into())
        } else {
            Reply::Send(ok(path))
        }
    })
    .await;
    let text = config_with("keepalive = false")
        + "\n[[route]]\nname = \"heads\"\nmethods = [\"HEAD\"]\npath = \"/api/v1/heads/{id}\"\npublic = true\n";
    let h = Harness::with_config_text_to(&text, &[], Some(crm.addr)).await;
    let c = client();
    for i in 0..5 {
        let r = c
            .head(h.url(&format!("/api/v1/heads/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let path = format!("/api/v1/customers/{i}");
        let r = c
            .get(h.url(&path))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), path);
    }
    assert_eq!(crm.seen.accepted.load(SeqCst), 10);
}

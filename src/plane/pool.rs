//! Keep-alive connections to the CRM for the hyper plane, lent one call at a time.
//!
//! Why not hyper-util's pooled client: per call, it hashes its pool key, checks a connection
//! out through a future, and spawns a task that waits for the connection to be ready again
//! before putting it back. Here a call takes the most recently used idle connection for its
//! CRM instance from a short list, and the response body puts it back itself when it has
//! been read to its end ([`Lease`]): no task and no hashing per call. A connection whose
//! response is dropped half-read is closed, never reused.
//!
//! | event | what happens |
//! |---|---|
//! | call | the newest idle connection to that instance that is still open; else a new one (`upstream.connect_timeout_ms`) |
//! | pooled connection turns out closed before the request went out | the request is tried on the next one (or a new one) |
//! | pooled connection closes after the request went out, before an answer | a method of `upstream.retry_methods` (a body read whole, or none) is sent once more on a new connection; any other call fails (502): the CRM may have executed it |
//! | `upstream.keepalive = false` (or `pool_size = 0`) | nothing is kept: every call opens its own connection, closed after the answer |
//! | response read to its end | the connection goes back, unless `upstream.pool_size` are idle already |
//! | idle longer than `upstream.idle_timeout_ms` | closed (checked when taken, and swept in the background) |

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, Write};
use tracing::debug;

use super::{BoxError, ReqBody};

type Sender = SendRequest<ReqBody>;
/// How long a call waits for a pooled connection that is not ready yet before taking another.
const READY_WAIT: Duration = Duration::from_millis(20);
/// Idle connections to one instance, each with the time it went idle; newest last.
type IdleList<T> = Vec<(T, Instant)>;

/// Why a call got no response head.
pub enum Failure {
    /// No connection could be opened (refused, timed out, TLS handshake failed).
    Connect(BoxError),
    /// The connection failed while the call was on it.
    Exchange(hyper::Error),
}

/// A connection kept idle between calls: hyper's client half here, a raw stream in
/// [`super::lane`].
pub trait Pooled: Send + 'static {
    /// Closed by the CRM (or not fit for another call) while it sat idle.
    fn is_closed(&self) -> bool;
}

impl Pooled for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// The idle connections, by CRM instance (a few instances at most: a short list).
pub struct Idle<T> {
    lists: Mutex<Vec<(Authority, IdleList<T>)>>,
    max: usize,
    timeout: Duration,
}

impl<T: Pooled> Idle<T> {
    /// At most `max` idle connections per instance, each for at most `timeout` (swept every
    /// half of it on the current runtime).
    pub fn new(max: usize, timeout: Duration) -> Arc<Self> {
        let idle = Arc::new(Idle {
            lists: Mutex::new(Vec::new()),
            max,
            timeout,
        });
        tokio::spawn(sweep(
            Arc::downgrade(&idle),
            (timeout / 2).max(Duration::from_millis(100)),
        ));
        idle
    }

    /// The newest idle connection to `authority` that is still open and not idle for too long
    /// at `now` (the call's clock reading: the pool reads none itself).
    pub fn take(&self, authority: &Authority, now: Instant) -> Option<T> {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut lists.iter_mut().find(|(a, _)| same(a, authority))?.1;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && now.saturating_duration_since(since) < self.timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keep `sender` as idle since `at` (the last clock reading of its call: a little before
    /// it is put back, so it counts as idle a little longer than it is, never shorter).
    pub fn put(&self, authority: Authority, sender: T, at: Instant) {
        if sender.is_closed() || self.max == 0 {
            return;
        }
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        match lists.iter_mut().find(|(a, _)| same(a, &authority)) {
            Some((_, list)) if list.len() < self.max => list.push((sender, at)),
            Some(_) => {}
            None => lists.push((authority, vec![(sender, at)])),
        }
    }

    /// Close the connections idle for too long or closed by the CRM.
    fn sweep(&self) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        for (_, list) in lists.iter_mut() {
            list.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < self.timeout);
        }
        lists.retain(|(_, list)| !list.is_empty());
    }
}

/// The same CRM instance: `Authority`'s `==` compares case-insensitively (~250 instructions
/// per compare, two per call); the authorities here come from the config, spelled the same
/// every time, so the exact bytes are compared first and the case-insensitive compare is left
/// for the rare miss (a second instance, or another spelling of the same one).
fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str() || a == b
}

/// A connection lent to one call. [`Lease::release`] once its response has been read to the
/// end puts it back; dropped otherwise, it closes the connection (hyper closes an HTTP/1.1
/// connection whose exchange did not finish).
pub struct Lease {
    sender: Sender,
    authority: Authority,
    idle: Arc<Idle<Sender>>,
    /// The call's place at the CRM ([`super::gate`]), given up after the connection is back.
    pub permit: Option<super::gate::Permit>,
    /// The call's last clock reading (its answer head's, then a body piece's): the time the
    /// connection is idle from once released.
    pub at: Instant,
}

impl Lease {
    pub fn release(self) {
        self.idle.put(self.authority, self.sender, self.at);
    }

    /// [`Lease::release`], idle since `at` when the body's reads read the clock later.
    pub fn release_at(mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.at = self.at.max(at);
        }
        self.release();
    }
}

/// Opens and lends connections through `C` (plain TCP, or TLS to the CRM).
pub struct Pool<C> {
    connector: C,
    scheme: Scheme,
    idle: Arc<Idle<Sender>>,
}

impl<C> Pool<C>
where
    C: tower_service::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
{
    /// At most `max_idle` idle connections per instance, each for at most `idle_timeout`
    /// (swept every half of it on the current runtime).
    pub fn new(connector: C, scheme: Scheme, max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            connector,
            scheme,
            idle: Idle::new(max_idle, idle_timeout),
        }
    }

    /// Send `request` (origin-form target, `Host` set) to the instance at `authority` and wait
    /// for the response head. The lease comes back with it. `retryable`: the request may be
    /// sent again after it may have reached the CRM (`upstream.retry_methods`). `now`: the
    /// caller's clock reading (the lease's time until the caller sets a later one).
    pub async fn send(
        &self,
        authority: Authority,
        mut request: Request<ReqBody>,
        retryable: bool,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        while let Some(mut sender) = self.idle.take(&authority, now) {
            // Just put back, its connection task may still be finishing the last exchange
            // (microseconds). Longer means it is still sending an earlier client's body that
            // the CRM answered early: not worth waiting for; dropped, it closes when done.
            let ready = sender.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WAIT, sender.ready()).await,
                    Ok(Ok(()))
                );
            if !ready {
                continue;
            }
            // A copy to send again if this connection closes before an answer (a CRM closing
            // a kept-alive connection as the call arrives): only for a retryable call.
            let mut spare = if retryable { copy(&request) } else { None };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender, authority, now))),
                Err(mut e) => match (e.take_message(), spare.take()) {
                    // Not sent: the connection closed in the meantime. The next one.
                    (Some(r), _) => request = r,
                    // Sent, then the connection closed without an answer: once more, on a
                    // new connection.
                    (None, Some(r)) if closed_early(e.error()) => {
                        debug!("a pooled CRM connection closed before an answer; sent again");
                        request = r;
                        break;
                    }
                    (None, _) => return Err(Failure::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(&authority).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender, authority, now))),
            Err(e) => Err(Failure::Exchange(e)),
        }
    }

    fn lease(&self, sender: Sender, authority: Authority, at: Instant) -> Lease {
        Lease {
            sender,
            authority,
            idle: self.idle.clone(),
            permit: None,
            at,
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, Failure> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Failure::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("CRM connection closed: {e}");
            }
        });
        Ok(sender)
    }
}

/// A copy of a request whose body is at hand (none, or read whole); `None` for a streamed one.
fn copy(request: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = match request.body() {
        ReqBody::Empty => ReqBody::Empty,
        ReqBody::Full(b) => ReqBody::Full(b.clone()),
        ReqBody::Stream(_) => return None,
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// The connection closed (or was reset) before a complete answer head: nothing was answered.
fn closed_early(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted))
}

async fn sweep<T: Pooled>(idle: Weak<Idle<T>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match idle.upgrade() {
            Some(idle) => idle.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A raw HTTP/1.1 server on loopback answering `ok` to every request; it counts the
    /// connections it accepted and closes each after `per_connection` answers.
    async fn server(per_connection: usize) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority = Authority::try_from(listener.local_addr().expect("addr").to_string())
            .expect("authority");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    fn request(authority: &Authority) -> Request<ReqBody> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, authority.as_str())
            .body(ReqBody::Empty)
            .expect("request")
    }

    fn pool(idle_timeout: Duration) -> Pool<HttpConnector> {
        Pool::new(HttpConnector::new(), Scheme::HTTP, 8, idle_timeout)
    }

    /// Send one call, read its body whole, and give the connection back.
    async fn call(pool: &Pool<HttpConnector>, authority: &Authority) -> Vec<u8> {
        let result = pool
            .send(authority.clone(), request(authority), true, Instant::now())
            .await;
        let Ok((response, lease)) = result else {
            panic!("the call failed");
        };
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        lease.release();
        body.to_vec()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused() {
        let (authority, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(call(&pool, &authority).await, b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_closes_its_connection() {
        let (authority, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(60));
        let result = pool
            .send(authority.clone(), request(&authority), true, Instant::now())
            .await;
        let Ok((response, lease)) = result else {
            panic!("the call failed");
        };
        // Not read, not released: this connection must not serve another call.
        drop((response, lease));
        assert_eq!(call(&pool, &authority).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_crm_closed_is_replaced() {
        // The CRM closes every connection after one answer.
        let (authority, accepted) = server(1).await;
        let pool = pool(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(call(&pool, &authority).await, b"ok");
            // Once hyper has seen the close (bounded wait), the idle connection reads closed.
            for _ in 0..200 {
                let closed = pool
                    .idle
                    .lists
                    .lock()
                    .expect("lock")
                    .iter()
                    .all(|(_, list)| list.iter().all(|(sender, _)| sender.is_closed()));
                if closed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_still_sending_an_answered_body_is_not_waited_for() {
        // The CRM answers the first call as soon as its head is in, then reads nothing more
        // on that connection (holding it open); the gateway is still sending that call's body.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority = Authority::try_from(listener.local_addr().expect("addr").to_string())
            .expect("authority");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if first {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    }
                });
            }
        });
        let pool = pool(Duration::from_secs(60));
        // A body far larger than the socket buffers: its sending cannot finish.
        let big = Request::builder()
            .method("POST")
            .uri("/x")
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_LENGTH, 64 << 20)
            .body(ReqBody::Full(Some(Bytes::from(vec![b'x'; 64 << 20]))))
            .expect("request");
        let Ok((response, lease)) = pool
            .send(authority.clone(), big, false, Instant::now())
            .await
        else {
            panic!("the first call failed");
        };
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
        lease.release();
        // The next call does not wait for that upload: it goes on a new connection.
        let next = tokio::time::timeout(Duration::from_secs(5), call(&pool, &authority)).await;
        assert_eq!(
            next.expect("the next call waited for the busy connection"),
            b"ok"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let (authority, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_millis(50));
        assert_eq!(call(&pool, &authority).await, b"ok");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(call(&pool, &authority).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let authority =
            Authority::try_from(listener.local_addr().expect("addr").to_string()).expect("a");
        drop(listener);
        let pool = pool(Duration::from_secs(60));
        let result = pool
            .send(authority.clone(), request(&authority), true, Instant::now())
            .await;
        assert!(matches!(result, Err(Failure::Connect(_))));
    }
}

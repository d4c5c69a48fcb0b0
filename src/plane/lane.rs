//! permgate's own HTTP/1.1 loop (`listen.h1_lane`, on by default): plain HTTP/1.1 client
//! connections toward a plain HTTP CRM, served without hyper.
//!
//! Why one file (~1,600 lines): one connection's loop, its CRM connection and its timeouts are one
//! state machine, and the request bodies (streamed, or read whole and checked first) are steps of
//! that machine; the pure parts are already in [`super::h1`].
//!
//! Why: the CPU a proxied call costs here is mostly the kernel's (the same two reads and two
//! writes nginx makes); of the rest, hyper's server and client halves, the client's dispatch
//! channel and the task hop to the CRM connection's task were the largest part. This loop
//! parses a request head with `httparse` (hyper's own parser), decides it with the same
//! [`exchange::admit`], writes the CRM's request head itself on a pooled connection owned by
//! this task for the call, and streams the CRM's answer back: one task, no channel, no
//! header map for the answer. The parsing and framing are the sans-I/O codec [`super::h1`];
//! this module does the I/O, the timeouts and the pool around it.
//!
//! It serves only what it can serve exactly as hyper would; anything else hands the connection
//! to hyper's HTTP/1.1 server, with the bytes already read, for the rest of its life:
//!
//! | request | served by |
//! |---|---|
//! | HTTP/1.1, origin-form target, no body or one framed by a single plain `Content-Length` or a single `Transfer-Encoding: chunked`, no `Upgrade`, no `Expect` but one `100-continue`, no `Connection` header but a single `close` | this loop, when the decision is to forward as is (the body streamed) or to refuse |
//! | a route that checks its body (bulk trim, field checks; [`Lane::forward_checked`]) | this loop: the body read whole, checked, forwarded with its own length |
//! | a route that filters its answer, or learns from it (`creates`) | hyper, with the decision already taken (not taken twice) |
//! | anything else (another framing spelling, HTTP/1.0, an absolute-form target, a head hyper answers with its own 400/431, …) | hyper, from that request on |
//! | HTTP/1.1, origin-form target, both `Content-Length` and `Transfer-Encoding` | this loop: 400 `ambiguous_framing`, then the connection closes (hyper's server would read it as chunked) |
//! | an HTTP/1.1 origin-form target with a `#fragment` (whatever else the request holds) | this loop: refused (`invalid_character`), then the connection is closed |
//!
//! A request body streams to the CRM framed as it came ([`h1::BodyReader`]), capped as on
//! hyper's path (`listen.max_body_bytes`: 413, `listen.body_read_timeout_ms` and the total
//! timeout: 408, malformed: 400; the connection then closes); `Expect: 100-continue` is answered
//! once the call is allowed. A call refused with its body unread closes the connection after
//! the answer (the rest read and discarded). An answer the CRM sends before the body is whole
//! (a 413 or a 401 right after the head) is passed on as hyper's client passes it on, as the
//! connection's last: the rest of the body is discarded, the CRM connection not reused.
//!
//! An idle connection (between calls) holds no buffer: its read and write buffers go back to a
//! per-thread spare list ([`spare`]) and are taken again when the client's next bytes are
//! readable, and a call's state is boxed for the call ([`Lane::call`]), so the task of an idle
//! keep-alive connection is small (issue 18: 10,000 idle connections).
//!
//! The CRM's answer: its status and headers minus the hop-by-hop ones and those the gateway
//! sets, framed as it came (a length, chunked with the chunks checked as they pass and
//! trailer fields dropped, or until the CRM closes, then the client connection closes too).
//! The CRM's calls in flight are capped as on hyper's path ([`super::gate`]), and a call that
//! may have reached the CRM is sent again only for `upstream.retry_methods`.
//! Timeouts as on hyper's path: `upstream.connect_timeout_ms`, `write_timeout_ms`,
//! `read_timeout_ms` per wait, `total_timeout_ms` in all; a head trickled in for longer than
//! `listen.keepalive_timeout_seconds` is cut off; a write to the client that makes no progress
//! for `listen.write_timeout_ms` closes the connection; the idle watchdog and the drain as
//! [`super::drive`].

use std::future::Future;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::header::{HeaderName, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{Method, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::h1::{
    self, date_header, header, number, parse_answer, parse_head, status_line, Answer, AnswerParse,
    BodyFraming, BodyReader, Chunks, Framing, Head, Parsed,
};
use super::pool::{Idle, Pooled};
use super::{
    after, json, left, left_at, reject, Activity, Builders, Plane, RespBody, RespKind, Service,
    Tracked,
};
use crate::exchange::{self, Admission, Ctx};
use crate::reject::Rejection;

mod spare;

/// A client's request head is read into this much room at first, at most [`MAX_HEAD`]
/// (a longer head goes to hyper, which applies `listen.max_header_bytes`).
const FIRST_ROOM: usize = 4096;
const MAX_HEAD: usize = 16 * 1024;
/// The CRM's answer head: at most this many bytes (else 502; hyper's client takes about
/// 400 KiB, legacy CRMs' cookies can be large), and [`h1::MAX_RESPONSE_HEADERS`] headers.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Each pooled CRM connection's read buffer (grown for a larger answer head, then shrunk back).
const UPSTREAM_ROOM: usize = 16 * 1024;

/// A decision taken here whose call hyper serves (a route that reads its body or filters
/// its answer): the first request hyper parses from the handed-over bytes is this one.
pub(super) struct Pending {
    pub ctx: Ctx,
    pub admission: Admission,
}

/// A keep-alive connection to the CRM, with its own read buffer.
pub(super) struct Upconn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The last clock reading of the call on it (its answer head's, or a body piece's): back
    /// in the pool, it is idle since then (issue 18: the pool reads no clock of its own).
    at: Instant,
}

impl Pooled for Upconn {
    /// Without a syscall in the usual case: an idle connection the CRM closed (or wrote to)
    /// has been reported readable by the reactor; then one non-blocking read tells.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                !matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        }
    }
}

/// One non-blocking read of `stream` into `buf`, as `try_read`, but a short read (fewer bytes
/// than `buf` had room for: the socket is drained) also clears the reactor's readiness, as
/// tokio's own `poll_read` does. `try_read` clears it only on `WouldBlock`, so after a call
/// whose request came in one short read the next wait for a request returned at once and the
/// read after it found nothing: one wasted syscall (and a spare-buffer round trip) per call.
/// tokio clears readiness only if no new event came since it was seen, so bytes that arrive
/// meanwhile still wake the next wait.
fn drain_read(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut read = None;
    let outcome = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = stream.try_read(buf)?;
        read = Some(n);
        if n > 0 && n < buf.len() {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Some(n) => Ok(n),
        None => outcome,
    }
}

impl Upconn {
    /// The CRM's connection turned readable while a request body is still going out: read
    /// what it sent (without waiting) after the `have` bytes already read. `true`: the body
    /// stops here and the answer head is read ([`read_answer_head`]): a final answer began,
    /// or the CRM closed or failed, or what it sent is no answer (refused there). An
    /// informational answer (`100 Continue`) is dropped, as [`read_answer_head`] drops it.
    fn spoke(&mut self, have: &mut usize) -> bool {
        if *have == self.buf.len() {
            if self.buf.len() >= MAX_RESPONSE_HEAD {
                return true;
            }
            self.buf
                .resize((self.buf.len() * 2).min(MAX_RESPONSE_HEAD), 0);
        }
        match self.stream.try_read(&mut self.buf[*have..]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Ok(0) | Err(_) => return true,
            Ok(n) => *have += n,
        }
        let mut scratch = Vec::new();
        loop {
            match parse_answer(&self.buf[..*have], false, &Unedited, &mut scratch) {
                Ok(AnswerParse::Partial) => return false,
                Ok(AnswerParse::Informational(len)) => {
                    self.buf.copy_within(len..*have, 0);
                    *have -= len;
                    if *have == 0 {
                        return false;
                    }
                }
                Ok(AnswerParse::Final(_)) | Err(_) => return true,
            }
        }
    }

    /// Write a piece of a request body, each wait for room within `write_timeout` (and the
    /// total `deadline`), unless the CRM answers first (`Ok(false)`, as [`Upconn::spoke`]
    /// says). A write that fails is taken as the CRM having closed: its answer, if it sent one
    /// before, is read next (else the call fails there). The clock is read and the timer set
    /// only when the socket is full (issue 18).
    async fn write_unless_answered(
        &mut self,
        mut bytes: &[u8],
        (write_timeout, deadline): (Duration, Option<Instant>),
        have: &mut usize,
        timer: &mut Timer,
    ) -> Result<bool, BodyFault> {
        let mut until = None;
        while !bytes.is_empty() {
            match self.stream.try_write(bytes) {
                Ok(0) => return Ok(false),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let until = *until.get_or_insert_with(|| {
                        let now = Instant::now();
                        after(now, write_timeout.min(left_at(deadline, now)))
                    });
                    tokio::select! {
                        biased;
                        _ = self.stream.readable() => {
                            if self.spoke(have) {
                                return Ok(false);
                            }
                        }
                        writable = self.stream.writable() => {
                            if writable.is_err() {
                                return Ok(false);
                            }
                        }
                        () = timer.until(until) => {
                            return Err(BodyFault::Upstream(super::Failure::Timeout, "write".into()))
                        }
                    }
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// No edits: [`Upconn::spoke`] only asks whether an answer head is whole.
struct Unedited;

impl h1::AnswerEdits for Unedited {
    fn drops(&self, _: &str) -> bool {
        false
    }
    fn add(&self, _: &mut Vec<u8>) {}
    fn date(&self, _: &mut Vec<u8>) {}
}

/// How a streamed request body went to the CRM.
enum Sent {
    Whole,
    /// The CRM answered (or closed) first: this many bytes of its answer are buffered.
    Early(usize),
}

/// The lane's CRM connections (one list per CRM instance).
pub(super) type LanePool = Arc<Idle<Upconn>>;

/// How a client connection's time in the lane ended.
enum End {
    Closed,
    /// hyper serves the rest (with the decision on the first request, if taken).
    Handover(Option<Box<Pending>>),
}

/// A client connection the lane takes.
pub(super) struct Conn {
    pub stream: TcpStream,
    pub peer: IpAddr,
    /// `listen.write_timeout_ms`: a write that makes no progress for this long closes it.
    pub write_timeout: Duration,
}

/// Serve one plain HTTP/1.1 client connection.
pub(super) async fn serve(
    plane: Arc<Plane>,
    pool: LanePool,
    conn: Conn,
    activity: &Arc<Activity>,
    builders: Arc<Builders>,
    idle: Duration,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let Conn {
        stream,
        peer,
        write_timeout,
    } = conn;
    let mut lane = Lane {
        plane,
        pool,
        stream,
        peer,
        // Taken when the client's first bytes are there ([`spare`]).
        buf: Vec::new(),
        start: 0,
        end: 0,
        out: Vec::new(),
        linger: false,
        write_timeout,
        timer: Timer::default(),
    };
    let busy = AtomicBool::new(false);
    let closing = AtomicBool::new(false);
    let end = {
        let run = lane.run(activity, &busy, &closing, idle);
        tokio::pin!(run);
        // The idle watchdog and the drain, as `drive`: a call in flight finishes first.
        let tick = (idle / 2).max(Duration::from_millis(50));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        let mut quiet = super::watch::Quiet::new(activity.count());
        let drained = drain.changed();
        tokio::pin!(drained);
        // The ticks and the drain are polled only when they woke the task ([`super::watch`]),
        // and then before the connection: a connection that spends tokio's budget in every
        // poll (a long answer streamed, pipelined calls) would otherwise leave them none, and
        // never see the idle limit or the drain.
        let watch = super::watch::Watch::new();
        std::future::poll_fn(|cx| {
            if let Some(mut wcx) = watch.woken(cx.waker()) {
                while ticks.poll_tick(&mut wcx).is_ready() {
                    if quiet.tick(activity.count(), tick) >= idle {
                        if !busy.load(Ordering::Relaxed) {
                            return Poll::Ready(End::Closed);
                        }
                        closing.store(true, Ordering::Relaxed);
                    }
                }
                if !closing.load(Ordering::Relaxed) && drained.as_mut().poll(&mut wcx).is_ready() {
                    closing.store(true, Ordering::Relaxed);
                    if !busy.load(Ordering::Relaxed) {
                        return Poll::Ready(End::Closed);
                    }
                }
            }
            run.as_mut().poll(cx)
        })
        .await
    };
    let End::Handover(pending) = end else {
        // FIN after the last answer, rather than leaving it to the drop.
        let _ = lane.stream.shutdown().await;
        if lane.linger {
            lane.discard_rest().await;
        }
        lane.release();
        return;
    };
    let Lane {
        plane,
        stream,
        buf,
        start,
        end,
        write_timeout,
        ..
    } = lane;
    let io = Tracked::new(
        stream,
        activity.clone(),
        buf[start..end].to_vec(),
        write_timeout,
    );
    let service = Service {
        plane,
        peer,
        pending: pending.map(|p| Arc::new(Mutex::new(Some(p)))),
        fragments: None,
    };
    // Boxed: a connection the lane keeps does not carry hyper's connection state.
    Box::pin(builders.serve(io, false, service, activity, idle, drain)).await;
}

/// One client connection in the lane.
struct Lane {
    plane: Arc<Plane>,
    pool: LanePool,
    stream: TcpStream,
    peer: IpAddr,
    /// What the client sent and was not served yet: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// What goes out next (the CRM's request head, the client's answer head).
    out: Vec<u8>,
    /// The last answer refused a request whose body is still arriving: read and discard it
    /// before closing, so the client gets the answer rather than a reset connection.
    linger: bool,
    write_timeout: Duration,
    /// The connection's one timer for its waits on the CRM ([`Timer`]).
    timer: Timer,
}

/// One timer per client connection for its waits on the CRM's answer (issue 18), moved on
/// for each wait rather than a tokio timer created, registered in the time driver's wheel and
/// dropped per read. tokio moves a registered timer's deadline later with one atomic store,
/// without the wheel's lock, and without waking its driver to re-arm (an `eventfd` write and
/// an extra `epoll_wait` when the new deadline was the earliest): a call's wait deadline is
/// usually later than the last one's. Made on the connection's first wait (a connection that
/// never forwards holds none); when an old deadline passes while no wait is on (the
/// connection idle), tokio wakes the task once for nothing.
#[derive(Default)]
struct Timer(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    /// The timer, set to fire at `until`: a future that completes then.
    fn until(&mut self, until: Instant) -> std::pin::Pin<&mut tokio::time::Sleep> {
        let until = tokio::time::Instant::from_std(until);
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.deadline() != until {
            sleep.as_mut().reset(until);
        }
        sleep.as_mut()
    }
}

/// What one call's writes need to know of its connection.
#[derive(Clone, Copy)]
struct Call<'a> {
    activity: &'a Activity,
    /// Set by the idle watchdog or the drain: this answer is the connection's last.
    closing: &'a AtomicBool,
    head_request: bool,
    /// The client asked to close after this call (`Connection: close`).
    last: bool,
}

impl Call<'_> {
    /// End an answer head (`Connection: close` first when it is the connection's last).
    /// Whether the connection stays open after it.
    fn end_head(&self, out: &mut Vec<u8>) -> bool {
        let last = self.last || self.closing.load(Ordering::Relaxed);
        if last {
            header(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        !last
    }
}

impl Lane {
    async fn run(
        &mut self,
        activity: &Activity,
        busy: &AtomicBool,
        closing: &AtomicBool,
        idle: Duration,
    ) -> End {
        loop {
            let head = match self.next_head(activity, busy, idle).await {
                Ok(h) => h,
                Err(end) => return end,
            };
            if self.out.capacity() == 0 {
                self.out = spare::write_buf();
            }
            // The call's state (its decision, the CRM exchange, the timers) is boxed for the
            // call: an idle connection's task holds only what waiting for a head needs.
            let call = Box::pin(self.call(head, activity, busy, closing));
            if let Some(end) = call.await {
                return end;
            }
            if self.start == self.end {
                // Nothing pipelined: the buffers go back until the client sends again.
                self.release();
            } else if self.out.capacity() > 4 * UPSTREAM_ROOM {
                self.out = Vec::new();
            }
        }
    }

    /// Give the connection's buffers back ([`spare`]); [`Lane::next_head`] takes a read buffer
    /// again once the client's next bytes are there.
    fn release(&mut self) {
        spare::give_read(std::mem::take(&mut self.buf), FIRST_ROOM);
        spare::give_write(std::mem::take(&mut self.out));
        (self.start, self.end) = (0, 0);
    }

    /// Serve one request whose head was read. `Some`: how the connection's time in the lane
    /// ends; `None`: the next request may follow.
    async fn call(
        &mut self,
        head: Head,
        activity: &Activity,
        busy: &AtomicBool,
        closing: &AtomicBool,
    ) -> Option<End> {
        let mut ctx = Ctx::new();
        let started = ctx.started;
        let target = head.uri.path_and_query().cloned();
        let raw_target = target.as_ref().map_or("*", |p| p.as_str());
        let at = self.start;
        // A CORS preflight the gateway answers itself (`[cors]`): no decision.
        let preflight = super::answer_preflight(
            &self.plane.state,
            &mut ctx,
            &head.method,
            &head.headers,
            self.peer,
            false,
        );
        let admission = match preflight {
            Some(answer) => Err(answer),
            // The decision's clock starts at the call's (read just above): one read fewer.
            None => Ok(exchange::admit_request_since(
                &self.plane.state,
                &mut ctx,
                &crate::policy::Request {
                    method: &head.method,
                    target: &self.buf[at + head.target.start..at + head.target.end],
                    headers: &head.headers,
                    peer: Some(self.peer),
                    // HTTP/1.1 only; a body declared as hyper's path sees it (a target
                    // with a fragment is refused before bodies are looked at).
                    wire: crate::policy::Wire {
                        host_required: true,
                        ..crate::policy::Wire::from_head(&head.method, &head.headers)
                    },
                },
                started,
            )),
        };
        // Fail closed: a head with two framings is never forwarded, whatever the decision
        // said (header hygiene refuses it first: this only keeps it so).
        let admission = match admission {
            Ok(
                Admission::Stream | Admission::Buffer(_) | Admission::Check | Admission::Me(Ok(_)),
            ) if head.ambiguous_framing => {
                let e = crate::canon::CanonError::AmbiguousFraming;
                let rejection = Rejection::new(e.status(), e.code(), e.message());
                ctx.deny_after_permit(rejection.clone());
                Ok(Admission::Deny(rejection))
            }
            admission => admission,
        };
        let method = head.method.clone();
        // A body the lane does not forward (the call refused or answered here). One declared
        // by a plain `Content-Length` and already wholly in the buffer (the usual small JSON
        // body) is skipped and the connection goes on, as if it had been read: its end is
        // known exactly, so nothing after it can be read two ways. Any other such body
        // (chunked, not all there yet, two framings) makes the answer the connection's last,
        // and what the client still sends is discarded.
        // Only a refusal of the caller's authority (401, 403, 404, 429) keeps the connection
        // so: a body refused for itself (400 `body_not_allowed`: a body on a bodiless method,
        // often a smuggling attempt) or any other answer here still closes it.
        let buffered_body = match head.body {
            BodyFraming::Length(n) if !head.ambiguous_framing => usize::try_from(n)
                .ok()
                .filter(|n| self.end - self.start >= head.len.saturating_add(*n)),
            _ => None,
        };
        let unread_body = head.body != BodyFraming::None;
        let call = Call {
            activity,
            closing,
            head_request: method == Method::HEAD,
            last: head.close || unread_body,
        };
        let forwarded = Call {
            last: head.close,
            ..call
        };
        // Whatever is logged while answering and forwarding names the request, as on
        // hyper's path (debug only: see `diagnostics`; at `info` the span is disabled and
        // allocates nothing).
        let span = crate::diagnostics::request_span(&ctx.request_id);
        let (status, keep) = match admission {
            Err(answer) => {
                self.start += head.len;
                self.linger = head.ambiguous_framing || unread_body;
                self.answer(answer, &call).instrument(span).await
            }
            // A create route learns from its answer: hyper's path reads it ([`super::learn`]).
            Ok(admission @ Admission::Stream) if super::learn::creates_of(&ctx).is_some() => {
                return Some(End::Handover(Some(Box::new(Pending { ctx, admission }))));
            }
            Ok(Admission::Stream) => {
                self.start += head.len;
                self.forward(head, &mut ctx, &forwarded)
                    .instrument(span)
                    .await
            }
            Ok(Admission::Me(Ok(body))) => {
                self.start += head.len;
                self.linger = unread_body;
                self.answer(json(200, body, &ctx), &call)
                    .instrument(span)
                    .await
            }
            Ok(Admission::Me(Err(rejection)) | Admission::Deny(rejection)) => {
                let skip =
                    buffered_body.filter(|_| matches!(rejection.status, 401 | 403 | 404 | 429));
                self.start += head.len + skip.unwrap_or(0);
                let unread = unread_body && skip.is_none();
                self.linger = head.ambiguous_framing || unread;
                let call = if unread { &call } else { &forwarded };
                self.answer(reject(&rejection, &ctx, false), call)
                    .instrument(span)
                    .await
            }
            // A checked body on a route that also filters its answer or learns from it:
            // hyper's path reads the answer.
            Ok(Admission::Check)
                if !ctx.filters_response() && super::learn::creates_of(&ctx).is_none() =>
            {
                self.start += head.len;
                self.forward_checked(head, &mut ctx, &forwarded)
                    .instrument(span)
                    .await
            }
            Ok(admission @ (Admission::Buffer(_) | Admission::Check)) => {
                return Some(End::Handover(Some(Box::new(Pending { ctx, admission }))));
            }
        };
        self.plane
            .state
            .metrics
            .lane_requests
            .fetch_add(1, Ordering::Relaxed);
        exchange::finish(
            &self.plane.state,
            &ctx,
            &method,
            raw_target.as_bytes(),
            status,
        );
        busy.store(false, Ordering::Relaxed);
        if !keep || closing.load(Ordering::Relaxed) {
            return Some(End::Closed);
        }
        None
    }

    /// Read and discard what the client still sends (at most [`super::MAX_DRAINED`] bytes, for
    /// at most 5 s), until it closes.
    async fn discard_rest(&mut self) {
        if self.buf.is_empty() {
            self.buf = spare::read_buf(FIRST_ROOM);
        }
        let (stream, sink) = (&mut self.stream, &mut self.buf);
        let _ = tokio::time::timeout(super::DRAIN_FOR, async {
            let mut drained = 0;
            while drained < super::MAX_DRAINED {
                match stream.read(&mut sink[..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    /// The next request head the lane serves, reading as needed.
    async fn next_head(
        &mut self,
        activity: &Activity,
        busy: &AtomicBool,
        idle: Duration,
    ) -> Result<Head, End> {
        let mut started: Option<Instant> = None;
        loop {
            if self.start < self.end {
                match parse_head(&self.buf[self.start..self.end]) {
                    Parsed::Ready(head) => {
                        // In flight from here: the watchdog and the drain let it finish (a
                        // head still arriving is not: cut off when the connection is quiet).
                        busy.store(true, Ordering::Relaxed);
                        return Ok(head);
                    }
                    Parsed::Other => return Err(End::Handover(None)),
                    Parsed::Partial => {}
                }
                // A head trickled in: cut off once it took longer than a keep-alive period.
                if started.get_or_insert_with(Instant::now).elapsed() >= idle {
                    return Err(End::Closed);
                }
            } else {
                (self.start, self.end) = (0, 0);
            }
            if self.buf.is_empty() {
                // Idle: no buffer until the client's next bytes are there ([`spare`]).
                if self.stream.readable().await.is_err() {
                    return Err(End::Closed);
                }
                self.buf = spare::read_buf(FIRST_ROOM);
                match drain_read(&self.stream, &mut self.buf) {
                    Ok(0) => return Err(End::Closed),
                    Ok(n) => {
                        activity.touch();
                        self.end = n;
                    }
                    // Woken for nothing: wait again, without the buffer.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        spare::give_read(std::mem::take(&mut self.buf), FIRST_ROOM);
                    }
                    Err(_) => return Err(End::Closed),
                }
                continue;
            }
            if self.end == self.buf.len() {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    (self.start, self.end) = (0, self.end - self.start);
                } else if self.buf.len() < MAX_HEAD {
                    self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
                } else {
                    return Err(End::Handover(None));
                }
            }
            match self.stream.read(&mut self.buf[self.end..]).await {
                Ok(0) | Err(_) => return Err(End::Closed),
                Ok(n) => {
                    activity.touch();
                    self.end += n;
                }
            }
        }
    }

    /// Write the gateway's own answer (a refusal, `/me`; no body to a HEAD request).
    /// `(status, keep the connection)`.
    async fn answer(&mut self, response: Response<RespBody>, call: &Call<'_>) -> (u16, bool) {
        let status = response.status();
        self.out.clear();
        status_line(&mut self.out, status.as_u16(), status.canonical_reason());
        for (name, value) in response.headers() {
            header(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        let body = match &response.body().kind {
            RespKind::Full(Some(b)) => &b[..],
            _ => &[],
        };
        if status != http::StatusCode::NO_CONTENT {
            number(&mut self.out, b"content-length", body.len() as u64);
        }
        date_header(&mut self.out);
        let keep = call.end_head(&mut self.out);
        if !call.head_request {
            self.out.extend_from_slice(body);
        }
        let sent = self.write_out(call.activity).await;
        (status.as_u16(), sent && keep)
    }

    async fn write_out(&mut self, activity: &Activity) -> bool {
        let sent = write_within(&self.stream, &self.out, self.write_timeout, activity).await;
        activity.touch();
        sent
    }

    async fn reject_with(
        &mut self,
        rejection: Rejection,
        ctx: &Ctx,
        call: &Call<'_>,
    ) -> (u16, bool) {
        self.answer(reject(&rejection, ctx, false), call).await
    }

    /// Refuse a call whose body is not read: the answer is the connection's last, and what
    /// the client still sends is discarded.
    async fn refuse_unread(
        &mut self,
        rejection: Rejection,
        ctx: &Ctx,
        call: &Call<'_>,
        body: &Option<BodyReader>,
    ) -> (u16, bool) {
        if body.is_none() {
            return self.reject_with(rejection, ctx, call).await;
        }
        self.linger = true;
        let last = Call {
            last: true,
            ..*call
        };
        self.reject_with(rejection, ctx, &last).await
    }

    /// `100 Continue` to a client that asked for it; a client gone is found when its body is
    /// read.
    async fn send_continue(&self, activity: &Activity) {
        let _ = write_within(
            &self.stream,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            self.write_timeout,
            activity,
        )
        .await;
    }

    /// Count a request body the lane reads itself (`permgate_lane_request_bodies_total`).
    fn count_body(&self, body: &Option<BodyReader>) {
        if body.is_some() {
            self.plane
                .state
                .metrics
                .lane_bodies
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forward a permitted call (its body streamed to the CRM, framed as it came) and stream
    /// the CRM's answer back.
    async fn forward(&mut self, head: Head, ctx: &mut Ctx, call: &Call<'_>) -> (u16, bool) {
        let activity = call.activity;
        let mut body = BodyReader::new(head.body);
        self.count_body(&body);
        // Refused before the body is read whole: the connection's last answer.
        let refused = Call {
            last: true,
            ..*call
        };
        let parts = request_parts(head.method, head.uri, head.headers);
        let (parts, authority, gate) = match self.plane.upstream_head(parts, ctx) {
            Ok(p) => p,
            Err(rejection) => return self.refuse_unread(rejection, ctx, call, &body).await,
        };
        // Held until the CRM connection is back in the pool (or closed).
        let _permit = match self.plane.enter(gate, ctx).await {
            Ok(p) => p,
            Err(rejection) => return self.refuse_unread(rejection, ctx, call, &body).await,
        };
        request_head(&mut self.out, &parts, head.body, false);
        // What the client already sent of the body goes out with the head.
        let mut body_done = true;
        if let Some(reader) = body.as_mut() {
            match reader.feed(&self.buf[self.start..self.end], &mut self.out) {
                Ok(fed) => {
                    self.start += fed.used;
                    body_done = fed.done;
                }
                Err(why) => {
                    self.linger = true;
                    let rejection = unreadable(ctx, why);
                    return self.reject_with(rejection, ctx, &refused).await;
                }
            }
            if reader.seen() > max_body_bytes(ctx) {
                self.linger = true;
                return self
                    .reject_with(Rejection::body_too_large(), ctx, &refused)
                    .await;
            }
        }
        // `Expect: 100-continue`: the call goes ahead, the client may send its body (hyper's
        // server writes this when the body is first read, after the same decision).
        if head.expect_continue && body.is_some() {
            self.send_continue(activity).await;
        }
        let rest = match (&mut body, body_done) {
            (Some(reader), false) => Some(reader),
            _ => None,
        };
        let head_request = parts.method == Method::HEAD;
        let (up, answer, early) = match self
            .exchange(&authority, &parts.method, head_request, rest, ctx, activity)
            .await
        {
            Ok(r) => r,
            Err(Failed::Body(rejection)) => {
                self.linger = true;
                return self.reject_with(rejection, ctx, &refused).await;
            }
            Err(Failed::Upstream(rejection)) if !body_done => {
                self.linger = true;
                return self.reject_with(rejection, ctx, &refused).await;
            }
            Err(Failed::Upstream(rejection)) => {
                return self.reject_with(rejection, ctx, call).await
            }
        };
        if early {
            // The CRM answered before the body was whole (hyper's client passes such an answer
            // on too): the answer is the connection's last, the rest of the body discarded.
            // (hyper's path goes on streaming the body to a CRM that keeps reading after its
            // early answer, and may keep the connection; the lane never does.)
            self.linger = true;
            return self.relay(up, answer, authority, ctx, &refused).await;
        }
        self.relay(up, answer, authority, ctx, call).await
    }

    /// Pass the CRM's answer on (its head is in `self.out`), then the CRM connection back to
    /// the pool when it is fit for another call. `(status, keep the client's connection)`.
    async fn relay(
        &mut self,
        mut up: Upconn,
        answer: Answer,
        authority: Authority,
        ctx: &Ctx,
        call: &Call<'_>,
    ) -> (u16, bool) {
        let activity = call.activity;
        let status = answer.status;
        // The client's answer: its head is in `self.out`, then the body as it streams.
        let keep = if answer.framing == Framing::UntilClose {
            header(&mut self.out, b"connection", b"close");
            self.out.extend_from_slice(b"\r\n");
            false
        } else {
            call.end_head(&mut self.out)
        };
        let (done, reusable) = self.stream_body(&mut up, &answer, ctx, activity).await;
        if done && reusable && answer.reusable {
            if up.buf.len() > UPSTREAM_ROOM {
                up.buf.truncate(UPSTREAM_ROOM);
                up.buf.shrink_to_fit();
            }
            let at = up.at;
            self.pool.put(authority, up, at);
        }
        (status, done && keep)
    }

    /// A call on an inspected route (bulk trim, field checks) as hyper's path serves it
    /// (`Plane::forward_checked`): the media type checked (415), the body read whole with the
    /// lane's framing (at most the route's `body_limits.max_bytes`: 413; too slow: 408;
    /// malformed or cut: 400; each refusal closes the connection), the core's check (a refusal
    /// keeps it), then exactly the checked body with its own length, and the CRM's answer with
    /// the `x-permgate-removed-*` headers.
    async fn forward_checked(&mut self, head: Head, ctx: &mut Ctx, call: &Call<'_>) -> (u16, bool) {
        let activity = call.activity;
        let refused = Call {
            last: true,
            ..*call
        };
        let mut body = BodyReader::bare(head.body);
        self.count_body(&body);
        let limit = ctx.inspect().map_or(0, |i| i.body_limits.max_bytes);
        let early = match exchange::check_json_media(&head.headers) {
            Err(rejection) => Some(rejection),
            // A declared length over the limit: refused before it is read.
            Ok(()) if matches!(head.body, BodyFraming::Length(n) if n > limit as u64) => {
                Some(Rejection::route_body_too_large())
            }
            Ok(()) => None,
        };
        if let Some(rejection) = early {
            self.linger = body.is_some();
            let answered = self.reject_with(rejection.clone(), ctx, &refused).await;
            ctx.deny_after_permit(rejection);
            return answered;
        }
        let read = match body.as_mut() {
            None => Ok(Vec::new()),
            Some(reader) => {
                if head.expect_continue {
                    // As hyper's server when the body is first read.
                    self.send_continue(activity).await;
                }
                self.read_whole(reader, limit, ctx, activity).await
            }
        };
        let read = match read {
            Ok(read) => read,
            Err(rejection) => {
                self.linger = true;
                let answered = self.reject_with(rejection.clone(), ctx, &refused).await;
                ctx.deny_after_permit(rejection);
                return answered;
            }
        };
        let checked = match exchange::check_body(ctx, &read) {
            Ok(forward) => forward.body,
            Err((rejection, body)) => {
                let mut response = json(rejection.status, body, ctx);
                if rejection.status == 401 {
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                }
                return self.answer(response, call).await;
            }
        };
        drop(read);
        let parts = request_parts(head.method, head.uri, head.headers);
        let (parts, authority, gate) = match self.plane.upstream_head(parts, ctx) {
            Ok(p) => p,
            Err(rejection) => return self.reject_with(rejection, ctx, call).await,
        };
        let _permit = match self.plane.enter(gate, ctx).await {
            Ok(p) => p,
            Err(rejection) => return self.reject_with(rejection, ctx, call).await,
        };
        // Sent whole with its head, right away: no `Expect`, exactly its own length.
        request_head(
            &mut self.out,
            &parts,
            BodyFraming::Length(checked.len() as u64),
            true,
        );
        self.out.extend_from_slice(&checked);
        drop(checked);
        let head_request = parts.method == Method::HEAD;
        let (up, answer, _) = match self
            .exchange(&authority, &parts.method, head_request, None, ctx, activity)
            .await
        {
            Ok(r) => r,
            Err(Failed::Body(rejection) | Failed::Upstream(rejection)) => {
                return self.reject_with(rejection, ctx, call).await
            }
        };
        self.relay(up, answer, authority, ctx, call).await
    }

    /// Read a request body whole (what follows it stays in `self.buf`), at most `limit` bytes
    /// (413), each wait capped by `listen.body_read_timeout_ms` and the total timeout (408),
    /// a malformed or cut body 400, as `plane::read_body` reads one.
    async fn read_whole(
        &mut self,
        reader: &mut BodyReader,
        limit: usize,
        ctx: &Ctx,
        activity: &Activity,
    ) -> Result<Vec<u8>, Rejection> {
        let mut body = Vec::new();
        let fed = reader
            .feed(&self.buf[self.start..self.end], &mut body)
            .map_err(|why| unreadable(ctx, why))?;
        self.start += fed.used;
        if body.len() > limit {
            return Err(Rejection::route_body_too_large());
        }
        if fed.done {
            return Ok(body);
        }
        (self.start, self.end) = (0, 0);
        loop {
            let read = tokio::time::timeout(ctx.body_wait(), self.stream.read(&mut self.buf)).await;
            let n = client_bytes(read, ctx)?;
            activity.touch();
            let fed = reader
                .feed(&self.buf[..n], &mut body)
                .map_err(|why| unreadable(ctx, why))?;
            if body.len() > limit {
                return Err(Rejection::route_body_too_large());
            }
            if fed.done {
                // What follows is the next request's.
                (self.start, self.end) = (fed.used, n);
                return Ok(body);
            }
        }
    }

    /// Send the request head in `self.out` to the CRM and read its answer head. A pooled
    /// connection found closed before any answer is replaced once (the methods of
    /// `upstream.retry_methods` only: any other call that may have reached the CRM is never
    /// sent twice). With `.2`: the CRM answered before the streamed body was whole (the
    /// client's body is not read on, the CRM connection not reused).
    async fn exchange(
        &mut self,
        authority: &Authority,
        method: &Method,
        head_request: bool,
        mut body: Option<&mut BodyReader>,
        ctx: &mut Ctx,
        activity: &Activity,
    ) -> Result<(Upconn, Answer, bool), Failed> {
        // A body streamed from the client cannot be sent twice: only a bodiless call (or one
        // whose body went out whole with the head) is retried once it may have reached the CRM.
        let streamed = body.is_some();
        let (connect_timeout, write_timeout, read_timeout) = ctx.live.as_ref().map_or(
            (
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(30),
            ),
            |l| {
                let u = &l.config.upstream;
                (u.connect_timeout, u.write_timeout, u.read_timeout)
            },
        );
        let plane = self.plane.clone();
        let up_failed = |ctx: &Ctx, failure: super::Failure, why: &str| {
            Failed::Upstream(plane.upstream_failed(ctx, failure, why))
        };
        // The exchange's clock reading: its start, and the base of the write's and the answer
        // head's deadlines (issue 18: one reading rather than one per `timeout` and `left`).
        let started = Instant::now();
        ctx.upstream_started = Some(started);
        let mut now = started;
        let mut retried = false;
        loop {
            let (mut up, reused) = match self.pool.take(authority, now) {
                Some(up) => (up, true),
                None => {
                    let wait = connect_timeout.min(left_at(ctx.deadline, now));
                    let up = match connect(authority, wait).await {
                        Ok(up) => up,
                        Err((failure, why)) => return Err(up_failed(ctx, failure, &why)),
                    };
                    now = up.at;
                    (up, false)
                }
            };
            // Most requests go out at once: the write's timer is set only when the socket is
            // full (issue 18).
            let until = after(now, write_timeout.min(left_at(ctx.deadline, now)));
            let mut waited = match write_all_within(&up.stream, &self.out, &mut self.timer, until)
                .await
            {
                Err(None) => return Err(up_failed(ctx, super::Failure::Timeout, "write")),
                // Nothing of the client's was consumed beyond what is in `self.out`.
                Err(Some(_)) if reused && !retried => {
                    retried = true;
                    now = Instant::now();
                    continue;
                }
                Err(Some(e)) => return Err(up_failed(ctx, super::Failure::Other, &e.to_string())),
                Ok(waited) => waited,
            };
            let mut early = None;
            if let Some(reader) = body.take() {
                waited = true;
                let sent = self
                    .send_body(&mut up, reader, write_timeout, ctx, activity)
                    .await
                    .map_err(|fault| match fault {
                        BodyFault::Client(rejection) => Failed::Body(rejection),
                        BodyFault::Upstream(failure, why) => up_failed(ctx, failure, &why),
                    })?;
                if let Sent::Early(have) = sent {
                    early = Some(have);
                }
            }
            let have = early.unwrap_or(0);
            // The answer head's wait starts once the request is out: at the exchange's one
            // clock reading when it went out at once.
            if waited {
                now = Instant::now();
            }
            let read = read_answer_head(
                &mut up,
                &mut self.timer,
                have,
                (now, read_timeout),
                head_request,
                ctx,
                &mut self.out,
            );
            match read.await {
                Ok((mut answer, answered)) => {
                    up.at = answered;
                    let elapsed = answered.saturating_duration_since(started);
                    ctx.upstream_elapsed = Some(elapsed);
                    ctx.upstream_status = Some(answer.status);
                    plane.state.metrics.upstream_seconds.observe(elapsed);
                    if early.is_some() {
                        // The CRM still expects the rest of the body: never reused.
                        answer.reusable = false;
                    }
                    return Ok((up, answer, early.is_some()));
                }
                Err(HeadError::ClosedEarly)
                    if reused
                        && !retried
                        && !streamed
                        && ctx
                            .live
                            .as_ref()
                            .is_some_and(|l| l.config.upstream.retry_methods.contains(method)) =>
                {
                    retried = true;
                    now = Instant::now();
                }
                Err(HeadError::TimedOut) => {
                    return Err(up_failed(ctx, super::Failure::Timeout, "no answer in time"))
                }
                Err(HeadError::ClosedEarly) => {
                    return Err(up_failed(
                        ctx,
                        super::Failure::Other,
                        "connection closed before an answer",
                    ))
                }
                Err(HeadError::Bad(why)) => return Err(up_failed(ctx, super::Failure::Other, why)),
            }
        }
    }

    /// Stream the rest of the client's body to the CRM (what came with the head went out with
    /// it), as hyper's path streams it: each wait for the client capped by
    /// `listen.body_read_timeout_ms` and the total timeout (408 `request_timeout`), at most
    /// `listen.max_body_bytes` (413 `body_too_large`), a malformed or cut body 400
    /// `bad_request`; each write to the CRM by `upstream.write_timeout_ms`.
    ///
    /// The CRM may answer before the body is whole (a 413 or a 401 it sends before reading
    /// on, then maybe closing): hyper's client passes that answer on, and so does the lane.
    /// `Ok(Sent::Early(n))`: the CRM spoke first, the first `n` bytes of its answer are in its
    /// connection's buffer, and the rest of the body is not sent.
    async fn send_body(
        &mut self,
        up: &mut Upconn,
        reader: &mut BodyReader,
        write_timeout: Duration,
        ctx: &Ctx,
        activity: &Activity,
    ) -> Result<Sent, BodyFault> {
        let max = max_body_bytes(ctx);
        (self.start, self.end) = (0, 0);
        // Bytes of an answer the CRM sent while the body was still going out.
        let mut have = 0;
        loop {
            let wait = ctx.body_wait();
            // The client's bytes first: when they are there, the CRM's connection is not even
            // registered for a wake-up (the usual case costs nothing more); while the client is
            // quiet, an early answer from the CRM is seen at once.
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout(wait, self.stream.read(&mut self.buf)) => read,
                _ = up.stream.readable() => {
                    if up.spoke(&mut have) {
                        return Ok(Sent::Early(have));
                    }
                    continue;
                }
            };
            let n = client_bytes(read, ctx).map_err(BodyFault::Client)?;
            activity.touch();
            self.out.clear();
            let fed = reader
                .feed(&self.buf[..n], &mut self.out)
                .map_err(|why| BodyFault::Client(unreadable(ctx, why)))?;
            if reader.seen() > max {
                return Err(BodyFault::Client(Rejection::body_too_large()));
            }
            let limits = (write_timeout, ctx.deadline);
            let written = up.write_unless_answered(&self.out, limits, &mut have, &mut self.timer);
            if !written.await? {
                return Ok(Sent::Early(have));
            }
            if fed.done {
                // What follows is the next request's.
                (self.start, self.end) = (fed.used, n);
                return Ok(Sent::Whole);
            }
        }
    }

    /// Pass the answer's body on (its head is in `self.out`). `(sent whole, the CRM
    /// connection is fit for another call)`.
    async fn stream_body(
        &mut self,
        up: &mut Upconn,
        answer: &Answer,
        ctx: &Ctx,
        activity: &Activity,
    ) -> (bool, bool) {
        let read_timeout = ctx.upstream_read_timeout();
        let (mut at, mut end) = (answer.head_len, answer.buffered);
        match answer.framing {
            Framing::Empty => {
                let clean = at == end;
                (self.write_out(activity).await, clean)
            }
            Framing::Length(total) => {
                let mut remaining = total;
                let mut clean = true;
                loop {
                    let take = remaining.min((end - at) as u64) as usize;
                    clean &= at + take == end;
                    remaining -= take as u64;
                    if self.out.is_empty() {
                        let piece = &up.buf[at..at + take];
                        if !write_within(&self.stream, piece, self.write_timeout, activity).await {
                            return (false, false);
                        }
                        activity.touch();
                    } else {
                        self.out.extend_from_slice(&up.buf[at..at + take]);
                        if !self.write_out(activity).await {
                            return (false, false);
                        }
                        self.out.clear();
                    }
                    if remaining == 0 {
                        return (true, clean);
                    }
                    match read_more(up, &mut self.timer, read_timeout, ctx).await {
                        Some(n) => (at, end) = (0, n),
                        None => return (false, false),
                    }
                }
            }
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                loop {
                    let fed = chunks.feed(&up.buf[at..end], &mut self.out);
                    let done = match fed {
                        Err(why) => {
                            tracing::warn!(
                                request_id = %ctx.request_id,
                                "the CRM's chunked answer is malformed: {why}"
                            );
                            return (false, false);
                        }
                        Ok(Some(used)) => Some(at + used == end),
                        Ok(None) => None,
                    };
                    if !self.out.is_empty() {
                        if !self.write_out(activity).await {
                            return (false, false);
                        }
                        self.out.clear();
                    }
                    if let Some(clean) = done {
                        return (true, clean);
                    }
                    match read_more(up, &mut self.timer, read_timeout, ctx).await {
                        Some(n) => (at, end) = (0, n),
                        None => return (false, false),
                    }
                }
            }
            Framing::UntilClose => {
                self.out.extend_from_slice(&up.buf[at..end]);
                if !self.write_out(activity).await {
                    return (false, false);
                }
                loop {
                    let now = Instant::now();
                    let until = after(now, read_timeout.min(left_at(ctx.deadline, now)));
                    let read = tokio::select! {
                        biased;
                        read = up.stream.read(&mut up.buf) => Some(read),
                        () = self.timer.until(until) => None,
                    };
                    match read {
                        Some(Ok(0)) => return (true, false),
                        Some(Ok(n)) if !left(ctx.deadline).is_zero() => {
                            let piece = &up.buf[..n];
                            if !write_within(&self.stream, piece, self.write_timeout, activity)
                                .await
                            {
                                return (false, false);
                            }
                            activity.touch();
                        }
                        _ => return (false, false),
                    }
                }
            }
        }
    }
}

/// The CRM's request head from `parts`, framed by `body` (the client's framing is written
/// anew from what the lane reads); `whole`: the body follows at once, so no `Expect`.
fn request_head(out: &mut Vec<u8>, parts: &http::request::Parts, body: BodyFraming, whole: bool) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || (whole && name == EXPECT) {
            continue;
        }
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => number(out, b"content-length", n),
        BodyFraming::Chunked => header(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Write all of `bytes` to the client; `false` when it fails, or when a write makes no
/// progress for `timeout` (a client that does not read its answer: `listen.write_timeout_ms`).
/// No timer unless the socket is full.
async fn write_within(
    stream: &TcpStream,
    mut bytes: &[u8],
    timeout: Duration,
    activity: &Activity,
) -> bool {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                match tokio::time::timeout(timeout, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return false,
                    Err(_) => {
                        activity.write_timed_out();
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Write all of `bytes` to the CRM, waiting for room until `until` (`Err(None)` then): `Ok(true)`
/// when it had to wait. No timer, no clock reading when the socket takes it all at once.
async fn write_all_within(
    stream: &TcpStream,
    mut bytes: &[u8],
    timer: &mut Timer,
    until: Instant,
) -> Result<bool, Option<std::io::Error>> {
    let mut waited = false;
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(Some(ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                waited = true;
                tokio::select! {
                    biased;
                    writable = stream.writable() => writable.map_err(Some)?,
                    () = timer.until(until) => return Err(None),
                }
            }
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(waited)
}

/// Read the next piece of an answer body into the connection's buffer (`None`: the CRM
/// closed, failed or was too slow; the client's connection is then closed, its answer cut).
async fn read_more(
    up: &mut Upconn,
    timer: &mut Timer,
    read_timeout: Duration,
    ctx: &Ctx,
) -> Option<usize> {
    let now = Instant::now();
    let until = after(now, read_timeout.min(left_at(ctx.deadline, now)));
    let read = tokio::select! {
        biased;
        read = up.stream.read(&mut up.buf) => Some(read),
        () = timer.until(until) => None,
    };
    // The piece's time (the one reading after the wait): its deadline check, and the
    // connection's idle time if this was the answer's last piece.
    let at = Instant::now();
    up.at = at;
    match read {
        // A piece past the total timeout cuts the answer too (a CRM streaming steadily).
        Some(Ok(n)) if n > 0 && !left_at(ctx.deadline, at).is_zero() => Some(n),
        _ => {
            tracing::warn!(
                request_id = %ctx.request_id,
                "the CRM's answer stopped short; the client's connection is closed"
            );
            None
        }
    }
}

/// Why a call with a body was not answered by the CRM.
enum Failed {
    /// The client's body: too large, too slow, malformed or cut (the CRM connection is dropped).
    Body(Rejection),
    Upstream(Rejection),
}

/// A fault while the body streams to the CRM.
enum BodyFault {
    Client(Rejection),
    Upstream(super::Failure, String),
}

/// `listen.max_body_bytes` of the call's config.
fn max_body_bytes(ctx: &Ctx) -> u64 {
    ctx.live
        .as_ref()
        .map_or(u64::MAX, |l| l.config.listen.max_body_bytes)
}

/// One read of the client's request body, as both of the lane's body readers (checked and
/// streamed) take it: the wait over (`Ctx::body_wait`), or the total deadline passed during the
/// read, is 408; an end or an error before the body is whole is 400. The bytes read otherwise.
fn client_bytes(
    read: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    ctx: &Ctx,
) -> Result<usize, Rejection> {
    match read {
        Err(_) => Err(Rejection::request_timeout()),
        Ok(Ok(0)) => Err(unreadable(ctx, "the body stopped short")),
        Ok(Err(_)) => Err(unreadable(ctx, "the client's connection failed")),
        Ok(Ok(_)) if left(ctx.deadline).is_zero() => Err(Rejection::request_timeout()),
        Ok(Ok(n)) => Ok(n),
    }
}

/// A request body that could not be read (malformed chunks, cut short): 400, as on hyper's path.
fn unreadable(ctx: &Ctx, why: &str) -> Rejection {
    tracing::warn!(
        request_id = %ctx.request_id,
        "the request body could not be read: {why}"
    );
    Rejection::body_unreadable()
}

async fn connect(
    authority: &Authority,
    wait: Duration,
) -> Result<Upconn, (super::Failure, String)> {
    let address: SocketAddr = authority.as_str().parse().map_err(|_| {
        (
            super::Failure::Other,
            format!("{authority}: not an address"),
        )
    })?;
    match tokio::time::timeout(wait, TcpStream::connect(address)).await {
        Err(_) => Err((
            super::Failure::Timeout,
            format!("connect to {address}: timed out"),
        )),
        Ok(Err(e)) => Err((
            super::Failure::Connect,
            format!("connect to {address}: {e}"),
        )),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(Upconn {
                stream,
                buf: vec![0; UPSTREAM_ROOM],
                // Read once connected: the exchange's deadlines start here.
                at: Instant::now(),
            })
        }
    }
}

/// What the lane changes in a forwarded answer's head: its request-id header replaces the
/// CRM's, and with `[cors]` the gateway's CORS headers replace the CRM's.
struct Edits<'a> {
    ctx: &'a Ctx,
    id_header: HeaderName,
    cors: Option<&'a crate::cors::Cors>,
}

impl h1::AnswerEdits for Edits<'_> {
    fn drops(&self, name: &str) -> bool {
        self.id_header.as_str().eq_ignore_ascii_case(name)
            || (self.cors.is_some() && crate::cors::is_cors_header(name))
            || (self.ctx.body_checked
                && (name.eq_ignore_ascii_case(exchange::REMOVED_COUNT)
                    || name.eq_ignore_ascii_case(exchange::REMOVED_IDS)))
    }

    /// The request id, the removed-items headers of a checked body (as hyper's path sets
    /// them: [`exchange::response_headers`]) and the CORS headers.
    fn add(&self, head: &mut Vec<u8>) {
        header(
            head,
            self.id_header.as_str().as_bytes(),
            self.ctx.request_id.as_bytes(),
        );
        if self.ctx.body_checked {
            for (name, value) in exchange::response_headers(self.ctx) {
                if name != self.id_header {
                    header(head, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        if let (Some(cors), Some(origin)) = (self.cors, &self.ctx.cors_origin) {
            for (name, value) in cors.headers(origin, self.ctx.preflight) {
                header(head, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
}

enum HeadError {
    /// The connection closed (or failed) before a byte of an answer.
    ClosedEarly,
    TimedOut,
    Bad(&'static str),
}

/// Read the CRM's answer head; `have`: bytes of it already in the connection's buffer (an
/// answer that came while the request body was going out: [`Upconn::spoke`]); `(since,
/// read_timeout)`: the wait starts at `since` (a clock reading the caller has). With the
/// answer: the clock read when its head was whole (the one reading after the wait).
async fn read_answer_head(
    up: &mut Upconn,
    timer: &mut Timer,
    have: usize,
    (since, read_timeout): (Instant, Duration),
    head_request: bool,
    ctx: &Ctx,
    head: &mut Vec<u8>,
) -> Result<(Answer, Instant), HeadError> {
    // The whole head within one read timeout (and the total), as hyper's path waits for it.
    let until = after(since, read_timeout.min(left_at(ctx.deadline, since)));
    let mut read_at = None;
    let (mut end, mut answered) = (have, have > 0);
    let edits = Edits {
        ctx,
        id_header: ctx.id_header(),
        // `[cors]`: the CRM's own CORS headers are replaced by the gateway's.
        cors: exchange::cors_of(ctx, true),
    };
    loop {
        while end > 0 {
            match parse_answer(&up.buf[..end], head_request, &edits, head) {
                Err(why) => return Err(HeadError::Bad(why)),
                Ok(AnswerParse::Partial) => break,
                Ok(AnswerParse::Informational(len)) => {
                    // 100 Continue, 102, 103: not passed on; the final answer follows.
                    up.buf.copy_within(len..end, 0);
                    end -= len;
                }
                Ok(AnswerParse::Final(mut answer)) => {
                    answer.buffered = end;
                    return Ok((answer, read_at.unwrap_or_else(Instant::now)));
                }
            }
        }
        if end == up.buf.len() {
            if up.buf.len() >= MAX_RESPONSE_HEAD {
                return Err(HeadError::Bad("the answer head is too large"));
            }
            up.buf.resize((up.buf.len() * 2).min(MAX_RESPONSE_HEAD), 0);
        }
        let read = tokio::select! {
            biased;
            read = up.stream.read(&mut up.buf[end..]) => read,
            () = timer.until(until) => return Err(HeadError::TimedOut),
        };
        let n = match read {
            // Nothing came back: the request may be sent again on another connection.
            Ok(0) | Err(_) if !answered => return Err(HeadError::ClosedEarly),
            Ok(0) | Err(_) => return Err(HeadError::Bad("the answer head stopped short")),
            Ok(n) => n,
        };
        let now = Instant::now();
        if now >= until {
            return Err(HeadError::TimedOut);
        }
        read_at = Some(now);
        answered = true;
        end += n;
    }
}

/// The request's head as `http` parts, for the CRM's request head.
fn request_parts(method: Method, uri: http::Uri, headers: http::HeaderMap) -> http::request::Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    parts
}

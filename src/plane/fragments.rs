//! A `#fragment` in an HTTP/1.x request-target, on the connections hyper's server parses.
//!
//! hyper hands the service a URI whose fragment the `http` crate has already cut off, without
//! a trace, where the decision must refuse it (`invalid_character`, as the README's path table
//! says). So the bytes hyper reads on an HTTP/1.x connection pass through [`Watched`], which
//! follows the messages' framing as hyper does (a head; then a `Content-Length`, or chunks and
//! trailers) and notes, head by head, whether the target held a `#`. hyper calls the service
//! once per head, in order: [`Marks::next`] is that head's note.
//!
//! It only ever adds a refusal: on anything it does not follow exactly (a head hyper would
//! refuse, an upgrade, a head over the size hyper takes), it stops watching and every later
//! request is as before. Cost: one `httparse` pass over each head, usually in place (a head
//! that arrives in pieces is gathered first).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most headers parsed (hyper's own limit on the gateway's connections is 257).
const MAX_HEADERS: usize = 257;
/// Longest chunk-size line or trailer line followed.
const MAX_LINE: usize = 16 * 1024;

/// Each request head's note, in order: did its target hold a `#`?
#[derive(Default)]
pub(super) struct Marks(Mutex<VecDeque<bool>>);

impl Marks {
    /// The note of the next request hyper serves (`false` when not followed).
    pub(super) fn next(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(false)
    }

    fn push(&self, fragment: bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fragment);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes still to come.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Not followed any more.
    Off,
}

/// Follows one connection's request framing.
struct Watch {
    state: State,
    /// A head or line gathered across reads.
    pending: Vec<u8>,
    max_head: usize,
    marks: Arc<Marks>,
}

/// What a complete head says.
enum Head {
    Partial,
    /// Its length, whether its target held a `#`, and what follows it.
    Complete(usize, bool, State),
    Refused,
}

fn parse_head(bytes: &[u8]) -> Head {
    // Uninitialized slots: no 8 KB of zeroes written per request.
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Refused,
    };
    let fragment = req.path.is_some_and(|p| p.contains('#'));
    if req.method == Some("CONNECT") {
        return Head::Complete(len, fragment, State::Off);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return Head::Complete(len, fragment, State::Off);
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Head::Complete(len, fragment, State::Off);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Head::Complete(len, fragment, State::Off),
            }
        }
    }
    let next = match (chunked, length) {
        (true, _) => State::ChunkSize,
        (false, Some(n)) if n > 0 => State::Body(n),
        _ => State::Head,
    };
    Head::Complete(len, fragment, next)
}

/// The position after the first LF in `bytes`, if any.
fn line_end(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n').map(|i| i + 1)
}

impl Watch {
    /// Follow the bytes just read.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == n {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::Head => {
                    let gathered = !self.pending.is_empty();
                    if gathered {
                        self.pending.extend_from_slice(data);
                    }
                    let bytes = if gathered { &self.pending[..] } else { data };
                    match parse_head(bytes) {
                        Head::Partial => {
                            if !gathered {
                                self.pending.extend_from_slice(data);
                            }
                            if self.pending.len() > self.max_head {
                                self.stop();
                            }
                            return;
                        }
                        Head::Refused => return self.stop(),
                        Head::Complete(len, fragment, next) => {
                            self.marks.push(fragment);
                            self.state = next;
                            let before = if gathered {
                                self.pending.len() - data.len()
                            } else {
                                0
                            };
                            data = &data[len - before..];
                            self.pending.clear();
                        }
                    }
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = line_end(data) else {
                        self.pending.extend_from_slice(data);
                        if self.pending.len() > MAX_LINE {
                            self.stop();
                        }
                        return;
                    };
                    self.pending.extend_from_slice(&data[..end]);
                    data = &data[end..];
                    let line = self.pending.trim_ascii_end();
                    self.state = match self.state {
                        State::ChunkSize => {
                            let size = line.split(|b| *b == b';').next().unwrap_or_default();
                            match std::str::from_utf8(size.trim_ascii())
                                .ok()
                                .and_then(|s| u64::from_str_radix(s, 16).ok())
                            {
                                Some(0) => State::Trailers,
                                Some(n) => State::ChunkData(n),
                                None => State::Off,
                            }
                        }
                        State::ChunkEnd if line.is_empty() => State::ChunkSize,
                        State::Trailers if line.is_empty() => State::Head,
                        State::Trailers => State::Trailers,
                        _ => State::Off,
                    };
                    self.pending.clear();
                }
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.pending = Vec::new();
    }
}

/// An HTTP/1.x connection as hyper reads it, watched ([`Watch`]).
pub(super) struct Watched<I> {
    inner: I,
    watch: Watch,
}

impl<I> Watched<I> {
    /// `max_head`: the largest head followed (hyper's own read limit).
    pub(super) fn new(inner: I, max_head: usize) -> (Self, Arc<Marks>) {
        let marks = Arc::new(Marks::default());
        let watch = Watch {
            state: State::Head,
            pending: Vec::new(),
            max_head,
            marks: marks.clone(),
        };
        (Watched { inner, watch }, marks)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.watch.state != State::Off {
            this.watch.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks_of(pieces: &[&[u8]]) -> (Vec<bool>, State) {
        let marks = Arc::new(Marks::default());
        let mut w = Watch {
            state: State::Head,
            pending: Vec::new(),
            max_head: 64 * 1024,
            marks: marks.clone(),
        };
        for p in pieces {
            w.feed(p);
        }
        let got = marks.0.lock().unwrap().iter().copied().collect();
        (got, w.state)
    }

    #[test]
    fn heads_are_followed_across_bodies_chunks_and_pieces() {
        let stream: &[u8] = b"GET /a#x HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 27\r\n\r\nGET /c#y HTTP/1.1\r\nX: 1\r\n\r\n\
            POST /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nGET /\r\n3\r\n#x \r\n0\r\nT: 1\r\n\r\n\
            GET /e?q#f HTTP/1.1\r\n\r\nGET /f HTTP/1.1\r\n\r\n";
        let want = vec![true, false, false, true, false];
        assert_eq!(marks_of(&[stream]), (want.clone(), State::Head));
        // Byte by byte, and in uneven pieces.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(marks_of(&bytes), (want.clone(), State::Head));
        let pieces: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(marks_of(&pieces), (want, State::Head));
    }

    #[test]
    fn what_it_does_not_follow_stops_it() {
        for stream in [
            &b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /#x HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /#x HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET /#x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\nGET /#x HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /#x HTTP/1.1\r\n\r\n",
        ] {
            let (marks, state) = marks_of(&[stream]);
            assert_eq!(state, State::Off, "{:?}", String::from_utf8_lossy(stream));
            assert!(marks.iter().all(|m| !m), "{marks:?}");
        }
    }
}

//! Buffers the lane's client connections hold only while they serve a call (issue 18 item 4:
//! an idle keep-alive connection's memory). Between calls a connection gives its read buffer
//! and its write buffer back here, and takes one again when the client sends its next request;
//! each thread keeps a few spares, so a busy connection does not allocate (nor zero) a buffer
//! per call, and 10,000 idle connections hold none.

use std::cell::RefCell;

/// Spare buffers kept per thread, of each kind (at most: more are freed).
const KEEP: usize = 64;
/// A write buffer that grew past this is freed rather than kept (a large answer head).
const MAX_WRITE: usize = 64 * 1024;

thread_local! {
    static READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static WRITES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of `len` bytes (their content is whatever a previous call left).
pub(super) fn read_buf(len: usize) -> Vec<u8> {
    READS
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .filter(|b| b.len() == len)
        .unwrap_or_else(|| vec![0; len])
}

/// Give a read buffer back (one of another size, grown for a long head, is freed).
pub(super) fn give_read(buf: Vec<u8>, len: usize) {
    if buf.len() != len {
        return;
    }
    let _ = READS.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

/// An empty write buffer (with the room a previous call grew it to).
pub(super) fn write_buf() -> Vec<u8> {
    WRITES
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Give a write buffer back, emptied.
pub(super) fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_WRITE {
        return;
    }
    buf.clear();
    let _ = WRITES.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_emptied_and_only_of_their_size() {
        let mut w = write_buf();
        w.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let room = w.capacity();
        give_write(w);
        let w = write_buf();
        assert!(w.is_empty());
        assert_eq!(w.capacity(), room, "the same room again");
        give_write(vec![0; MAX_WRITE + 1]);
        assert_eq!(write_buf().capacity(), 0, "a grown one is not kept");

        let r = read_buf(4096);
        assert_eq!(r.len(), 4096);
        give_read(vec![1; 8192], 4096);
        give_read(r, 4096);
        assert_eq!(read_buf(4096).len(), 4096);
        assert_eq!(read_buf(4096).len(), 4096, "a fresh one when none is spare");
    }
}

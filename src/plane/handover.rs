//! The binary upgrade of the hyper engine: the running process hands its listening socket to a
//! new one over a Unix socket (`listen.upgrade_sock`, the descriptor passed with `SCM_RIGHTS`),
//! as the Pingora engine does. The socket stays open in the kernel throughout, so a client
//! connecting meanwhile waits in its backlog and is accepted by the new process: no call is
//! refused.
//!
//! | step | new process (`serve --upgrade`) | running process |
//! |---|---|---|
//! | 1 | listens on `upgrade_sock`, waits | serves |
//! | 2 | | `SIGQUIT`: connects, sends `permgate-listener <address>` and the descriptor |
//! | 3 | checks it is a listening TCP socket on its own `listen.address`; answers `ok` (or `no: why`) | waits for the answer (10 s) |
//! | 4 | serves on it | on `ok`: stops accepting, drains, exits; otherwise keeps serving and logs why |

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, sockopt, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tracing::{info, warn};

const HELLO: &str = "permgate-listener ";
/// How long the running process tries to reach the new one, and then waits for its answer.
const CONNECT_TRIES: u32 = 5;
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// New process: wait on `path` for the running permgate's listening socket, and take it if it
/// listens on `address` (`listen.address`). A hand-over that does not fit is answered `no` and
/// refused with the reason (the running process keeps serving).
pub fn receive(path: &Path, address: &str) -> Result<TcpListener, String> {
    let wanted: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| format!("listen.address {address}: {e}"))?
        .collect();
    // A socket file left by an earlier upgrade.
    let _ = std::fs::remove_file(path);
    let waiting = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on upgrade_sock {}: {e}", path.display()))?;
    info!(
        "upgrade: waiting on {} for the listening socket; send SIGQUIT to the running permgate",
        path.display()
    );
    let taken = loop {
        let (mut stream, _) = waiting
            .accept()
            .map_err(|e| format!("upgrade_sock {}: {e}", path.display()))?;
        let _ = stream.set_read_timeout(Some(ANSWER_WAIT));
        match take(&stream, &wanted) {
            Ok(listener) => {
                if let Err(e) = stream.write_all(b"ok") {
                    // The sender gave up: it keeps serving, and so can we (same socket).
                    warn!("upgrade: the running process did not wait for the answer: {e}");
                }
                break Ok(listener);
            }
            Err(Refusal::NotAHandover(why)) => {
                // Something else connected: not ours to answer; wait on.
                warn!("upgrade: ignored a connection on the upgrade socket: {why}");
            }
            Err(Refusal::Wrong(why)) => {
                let _ = stream.write_all(format!("no: {why}").as_bytes());
                break Err(format!(
                    "upgrade: the socket handed over was refused: {why}"
                ));
            }
        }
    };
    let _ = std::fs::remove_file(path);
    taken
}

enum Refusal {
    /// No descriptor, or not our greeting.
    NotAHandover(String),
    /// A hand-over, of a socket this process must not serve on.
    Wrong(String),
}

fn take(stream: &UnixStream, wanted: &[SocketAddr]) -> Result<TcpListener, Refusal> {
    let mut text = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| Refusal::NotAHandover(format!("recvmsg: {e}")))?;
    let n = msg.bytes;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = c {
            fds.extend(received);
        }
    }
    let greeting = std::str::from_utf8(&text[..n]).unwrap_or("");
    let Some(sent_address) = greeting.strip_prefix(HELLO) else {
        return Err(Refusal::NotAHandover(format!("greeting {greeting:?}")));
    };
    let mut fds = fds.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err(Refusal::NotAHandover(
            "not exactly one descriptor sent".into(),
        ));
    };
    match sockopt::socket_acceptconn(&fd) {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::Wrong("not a listening socket".into())),
        Err(e) => return Err(Refusal::Wrong(format!("not a socket: {e}"))),
    }
    let listener = TcpListener::from(fd);
    let local = listener
        .local_addr()
        .map_err(|e| Refusal::Wrong(format!("not a TCP socket: {e}")))?;
    // `listen.address` with port 0 takes whatever port the running process listens on.
    let fits = wanted
        .iter()
        .any(|w| w.ip() == local.ip() && (w.port() == 0 || w.port() == local.port()));
    if !fits {
        return Err(Refusal::Wrong(format!(
            "it listens on {local} (sent as {sent_address}), this process's listen.address is {}",
            wanted
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Refusal::Wrong(format!("set_nonblocking: {e}")))?;
    Ok(listener)
}

/// Running process: hand `listener` (listening on `local`) to the new process waiting on
/// `path`. `Ok` once the new process took it: stop accepting and drain. `Err`: keep serving.
pub fn send(path: &Path, listener: impl AsFd, local: SocketAddr) -> Result<(), String> {
    let mut stream = None;
    let mut last = String::new();
    for attempt in 0..CONNECT_TRIES {
        match UnixStream::connect(path) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                last = e.to_string();
                if attempt + 1 < CONNECT_TRIES {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    let Some(mut stream) = stream else {
        return Err(format!(
            "no new process waits on {} ({last}); start `permgate serve --upgrade` first",
            path.display()
        ));
    };
    let greeting = format!("{HELLO}{local}");
    let fds = [listener.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("no room for the descriptor (cannot happen)".into());
    }
    sendmsg(
        &stream,
        &[IoSlice::new(greeting.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| format!("sending the socket to {}: {e}", path.display()))?;
    let _ = stream.set_read_timeout(Some(ANSWER_WAIT));
    let mut answer = String::new();
    let _ = (&mut stream).take(512).read_to_string(&mut answer);
    if answer == "ok" {
        Ok(())
    } else if answer.is_empty() {
        Err("the new process did not answer".into())
    } else {
        Err(format!("the new process refused it: {answer}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("permgate-handover-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_listening_socket_goes_across_and_still_accepts() {
        let path = sock_path("ok");
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = old.local_addr().unwrap();
        let wanted = local.to_string();
        let receiver = {
            let path = path.clone();
            std::thread::spawn(move || receive(&path, &wanted))
        };
        send(&path, &old, local).unwrap();
        let new = receiver.join().unwrap().unwrap();
        assert_eq!(new.local_addr().unwrap(), local);
        drop(old);
        // A client connecting now is accepted by the new listener.
        let _client = std::net::TcpStream::connect(local).unwrap();
        new.set_nonblocking(false).unwrap();
        let (_, peer) = new.accept().unwrap();
        assert!(peer.ip().is_loopback());
        assert!(!path.exists(), "the upgrade socket file is removed");
    }

    #[test]
    fn a_socket_on_another_address_is_refused_and_the_sender_is_told() {
        let path = sock_path("wrong");
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = old.local_addr().unwrap();
        let receiver = {
            let path = path.clone();
            // A port nothing here listens on: the new process's config differs.
            std::thread::spawn(move || receive(&path, "127.0.0.1:1"))
        };
        let sent = send(&path, &old, local);
        let received = receiver.join().unwrap();
        let why = sent.unwrap_err();
        assert!(
            why.contains("refused it") && why.contains("listen.address"),
            "{why}"
        );
        let err = received.unwrap_err();
        assert!(err.contains(&local.to_string()), "{err}");
        // The old listener is untouched.
        assert_eq!(old.local_addr().unwrap(), local);
    }

    #[test]
    fn nobody_waiting_is_an_error_for_the_sender() {
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = old.local_addr().unwrap();
        let path = sock_path("nobody");
        let started = std::time::Instant::now();
        let err = send(&path, &old, local).unwrap_err();
        assert!(err.contains("no new process waits"), "{err}");
        assert!(started.elapsed() >= Duration::from_secs(3), "it retried");
    }
}

//! `TlsStream`: a rustls session over a connection's socket, the `Stream::Tls` the
//! connection reads plaintext from and writes plaintext to.
//!
//! rustls's non-blocking API does the protocol; this file moves bytes. Records come off
//! the socket with `read_tls`, are opened by `process_new_packets`, and the plaintext is
//! read out with `reader()`; plaintext goes in with `writer()` and the records out with
//! `write_tls`. The socket is non-blocking, so every call may stop at `WouldBlock`.
//!
//! Who calls what:
//! - The handshake is driven by [`TlsStream::drive`], from every readiness event of the
//!   connection (and once after `start_tls`), whatever the connection's reading state:
//!   a protocol that paused reading, filled its write buffer or asked to close still
//!   gets its handshake finished. Until then `read` says `WouldBlock` and `write` only
//!   fills rustls's plaintext buffer (64 KiB; the connection's own write buffer holds
//!   the rest).
//! - After the handshake, the connection's `read` and `write` go through [`read`] and
//!   [`write`] here, with its water marks and pauses, as over TCP. rustls holds at most
//!   64 KiB of records the socket did not take (its buffer limit); `write` says
//!   `WouldBlock` past that, so the connection buffers, and backpressure works as for a
//!   socket.
//! - A `read` that returns fewer bytes than asked has emptied the socket (it read to
//!   `WouldBlock`), as a TCP read does, so the next edge brings more; the exception (the
//!   peer's end of stream, or an error, behind the bytes returned) shows in
//!   `input_pending`, and the connection reads again.
//!
//! [`read`]: TlsStream::read
//! [`write`]: TlsStream::write

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Read, Write};

use rustls::Connection;

use super::TlsError;
use crate::reactor::stream::Stream;
use crate::reactor::DelayedCall;
use crate::{Deferred, Failure};

/// A rustls session over a socket. Every method takes `&self` (the connection lends its
/// stream by shared reference); each `RefCell` is borrowed only inside one method and
/// never while user code runs.
pub(crate) struct TlsStream {
    sock: Stream,
    session: RefCell<Connection>,
    /// Bytes written in the clear before `start_tls` that the socket has not taken yet:
    /// they go out before the first TLS record.
    clear: RefCell<Vec<u8>>,
    handshake: RefCell<Handshake>,
    close_notify_sent: Cell<bool>,
    /// The protocol wrote during the handshake: a close waits for the handshake, so
    /// that it reaches the peer.
    wrote_early: Cell<bool>,
    /// A short read left the peer's end of stream (a `close_notify`, or an unclean end)
    /// in rustls: the next read returns it.
    end_pending: Cell<bool>,
    /// An error met after plaintext was read in the same call: the next read returns it.
    error_pending: RefCell<Option<io::Error>>,
    /// Bytes read from the socket that rustls has not taken yet (when a read filled the
    /// caller's buffer first); usually empty, and then unallocated.
    incoming: RefCell<Vec<u8>>,
}

/// Where the handshake is.
enum Handshake {
    /// In progress: the Deferreds waiting for it, and the timer that ends it.
    Running { waiters: Vec<Deferred<()>>, timer: Option<DelayedCall> },
    /// Finished; nobody waits and no timer runs.
    Done,
    /// Failed with this; the connection is being closed with it.
    Failed(Failure),
}

/// What [`TlsStream::drive`] did.
pub(super) enum Step {
    /// Nothing to report (the handshake is running, or finished earlier).
    Quiet,
    /// The handshake finished now: fire these.
    Completed(Vec<Deferred<()>>),
    /// The handshake (or a write after it) failed: close the connection with this, and
    /// fail these.
    Failed(Failure, Vec<Deferred<()>>),
}

impl TlsStream {
    /// A session over `sock` whose handshake starts now; `clear` goes out first.
    pub(super) fn new(sock: Stream, session: Connection, clear: Vec<u8>) -> TlsStream {
        TlsStream {
            sock,
            session: RefCell::new(session),
            clear: RefCell::new(clear),
            handshake: RefCell::new(Handshake::Running { waiters: Vec::new(), timer: None }),
            close_notify_sent: Cell::new(false),
            wrote_early: Cell::new(false),
            end_pending: Cell::new(false),
            error_pending: RefCell::new(None),
            incoming: RefCell::new(Vec::new()),
        }
    }

    /// The socket under the session.
    pub(crate) fn socket(&self) -> &Stream {
        &self.sock
    }

    /// Gives the running handshake its timeout timer (cancelled when it ends).
    pub(super) fn set_timer(&self, timer: DelayedCall) {
        match &mut *self.handshake.borrow_mut() {
            Handshake::Running { timer: slot, .. } => *slot = Some(timer),
            _ => drop(timer.cancel()),
        }
    }

    /// A Deferred that fires when the handshake finishes (at once if it has).
    pub(super) fn when_done(&self) -> Deferred<()> {
        match &mut *self.handshake.borrow_mut() {
            Handshake::Running { waiters, .. } => {
                let d = Deferred::new();
                waiters.push(d.clone());
                d
            }
            Handshake::Done => crate::succeed(()),
            Handshake::Failed(f) => crate::fail(f.clone()),
        }
    }

    /// Runs `f` on the rustls session (for what the transport reports of it).
    pub(super) fn with_session<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.session.borrow())
    }

    /// Handshake I/O, and the records rustls still has to send: see the module docs.
    pub(super) fn drive(&self) -> Step {
        let mut session = self.session.borrow_mut();
        if !matches!(*self.handshake.borrow(), Handshake::Running { .. }) {
            return match self.flush(&mut session) {
                Ok(()) => Step::Quiet,
                Err(e) => Step::Failed(Failure::new(e), Vec::new()),
            };
        }
        loop {
            if let Err(e) = self.flush(&mut session) {
                return self.end_handshake(Err(Failure::new(e)));
            }
            if !session.is_handshaking() {
                return self.end_handshake(Ok(()));
            }
            match session.read_tls(&mut Io(&self.sock)) {
                Ok(0) => return self.end_handshake(Err(Failure::new(TlsError::ClosedDuringHandshake))),
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Tell the peer why (rustls queued an alert), as far as the socket takes it.
                        let _ = self.flush(&mut session);
                        return self.end_handshake(Err(Failure::new(TlsError::Rustls(e))));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Quiet,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.end_handshake(Err(Failure::new(e))),
            }
        }
    }

    /// Ends a running handshake with `outcome` (the timeout's, or `drive`'s): the timer
    /// is cancelled and the waiters are handed back to be fired.
    pub(super) fn end_handshake(&self, outcome: Result<(), Failure>) -> Step {
        let next = match &outcome {
            Ok(()) => Handshake::Done,
            Err(f) => Handshake::Failed(f.clone()),
        };
        let Handshake::Running { waiters, timer } =
            std::mem::replace(&mut *self.handshake.borrow_mut(), next)
        else {
            return Step::Quiet;
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        match outcome {
            Ok(()) => Step::Completed(waiters),
            Err(f) => Step::Failed(f, waiters),
        }
    }

    /// Reads plaintext: see the module docs. `WouldBlock` until the handshake finished;
    /// `Ok(0)` once the peer sent `close_notify`; [`TlsError::UnexpectedEof`] if the
    /// connection ended without it.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.error_pending.borrow_mut().take() {
            return Err(e);
        }
        self.end_pending.set(false);
        let mut session = self.session.borrow_mut();
        if session.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut incoming = self.incoming.borrow_mut();
            let mut feed = Feed { sock: &self.sock, incoming: &mut incoming, scratch, window: 0..0 };
            let r = self.read_records(&mut session, buf, &mut feed);
            // What the socket gave that rustls did not take yet stays with this connection.
            let Feed { incoming, scratch, window, .. } = feed;
            incoming.extend_from_slice(&scratch[window]);
            r
        })
    }

    /// `read`'s loop: plaintext out of rustls, records into it from `feed`.
    fn read_records(
        &self,
        session: &mut Connection,
        buf: &mut [u8],
        feed: &mut Feed<'_>,
    ) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match session.reader().read(&mut buf[n..]) {
                Ok(0) => return self.end_after(n, Ok(0)),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        return Ok(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return self.end_after(n, Err(TlsError::UnexpectedEof.into_io()));
                }
                Err(e) => return self.error_after(n, e),
            }
            // rustls has no plaintext left: open more records.
            match session.read_tls(feed) {
                // 0: the socket's end of file; the reader reports it on the next round.
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        let _ = self.flush(session);
                        return self.error_after(n, TlsError::Rustls(e).into_io());
                    }
                    // A key update's answer, say.
                    if let Err(e) = self.flush(session) {
                        return self.error_after(n, e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.error_after(n, e),
            }
        }
    }

    /// Writes plaintext: what rustls's buffer takes is encrypted and sent as far as the
    /// socket takes it. `WouldBlock` when rustls's buffer is full.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// As [`write`](Self::write), for several slices.
    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut session = self.session.borrow_mut();
        let n = session.writer().write_vectored(bufs)?;
        if n > 0 && session.is_handshaking() {
            self.wrote_early.set(true);
        }
        self.flush(&mut session)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// True if a read would return something without the socket signalling: see the
    /// module docs.
    pub(crate) fn input_pending(&self) -> bool {
        self.end_pending.get() || self.error_pending.borrow().is_some() || !self.incoming.borrow().is_empty()
    }

    /// Called before the write side is shut or the socket closed: sends `close_notify`
    /// and the records left; true when everything is out. If the protocol wrote during
    /// a handshake still running, that waits for the handshake to finish first, so what
    /// it wrote reaches the peer (the handshake timeout bounds the wait).
    pub(crate) fn ready_to_close(&self) -> io::Result<bool> {
        if self.wrote_early.get() && matches!(*self.handshake.borrow(), Handshake::Running { .. }) {
            return Ok(false);
        }
        let mut session = self.session.borrow_mut();
        if !self.close_notify_sent.replace(true) {
            session.send_close_notify();
        }
        self.flush(&mut session)?;
        Ok(self.clear.borrow().is_empty() && !session.wants_write())
    }

    /// Sends the clear bytes, then rustls's records, until done or `WouldBlock`.
    fn flush(&self, session: &mut Connection) -> io::Result<()> {
        let mut clear = self.clear.borrow_mut();
        while !clear.is_empty() {
            match self.sock.write(&clear) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(clear.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while session.wants_write() {
            match session.write_tls(&mut Io(&self.sock)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The end of the stream (`end`) behind `n` bytes read: those first, the end next.
    fn end_after(&self, n: usize, end: io::Result<usize>) -> io::Result<usize> {
        if n == 0 {
            return end;
        }
        self.end_pending.set(true);
        Ok(n)
    }

    /// An error behind `n` bytes read: those first, the error next.
    fn error_after(&self, n: usize, e: io::Error) -> io::Result<usize> {
        if n == 0 {
            return Err(e);
        }
        *self.error_pending.borrow_mut() = Some(e);
        Ok(n)
    }
}

impl Drop for TlsStream {
    /// The connection closed: a handshake still running fails its waiters with
    /// [`TlsError::Closed`] (a Deferred handed out is never left unfired).
    fn drop(&mut self) {
        if let Step::Failed(f, waiters) = self.end_handshake(Err(Failure::new(TlsError::Closed))) {
            for w in waiters {
                let _ = w.errback(f.clone());
            }
        }
    }
}

/// How much one socket read after the handshake takes: rustls reads at most 4 KiB at a
/// time, so a 16 KiB record would cost several system calls.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// The buffer a connection's `read` reads the socket into before rustls takes the
    /// bytes, shared by the thread's connections (a read leaves nothing in it: what
    /// rustls did not take goes to the connection's `incoming`).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// What `read_tls` reads from after the handshake: the connection's leftover bytes
/// first, then the scratch buffer's `window` of bytes from the last socket read, then
/// the socket (a fresh read of up to 64 KiB into the scratch buffer).
struct Feed<'a> {
    sock: &'a Stream,
    incoming: &'a mut Vec<u8>,
    scratch: &'a mut [u8],
    window: std::ops::Range<usize>,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.incoming.is_empty() {
            let k = out.len().min(self.incoming.len());
            out[..k].copy_from_slice(&self.incoming[..k]);
            self.incoming.drain(..k);
            return Ok(k);
        }
        if self.window.is_empty() {
            let k = self.sock.read(self.scratch)?;
            self.window = 0..k;
        }
        let k = out.len().min(self.window.len());
        out[..k].copy_from_slice(&self.scratch[self.window.start..self.window.start + k]);
        self.window.start += k;
        Ok(k)
    }
}

/// The socket as the `Read`/`Write` rustls moves records through.
struct Io<'a>(&'a Stream);

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

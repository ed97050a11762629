//! A reactor per core: [`ReactorGroup`] runs `n` reactors, each on its own thread, and
//! stops them together; [`Reactor::run_per_core`] is the one-call form for a daemon.
//!
//! weft's reactor is single-threaded by design (a `Deferred` is an `Rc`), so a server
//! uses more cores by running more reactors: each thread owns a reactor and everything
//! on it, and the kernel spreads connections among the reactors' listening sockets,
//! which share one port through `SO_REUSEPORT` ([`ListenOptions::reuse_port`]). Nothing
//! is shared between the reactors but what the application shares itself, through
//! `Send` types and [`ThreadHandle::call_from_thread`].
//!
//! The stop is coordinated: a stop of any one reactor (its own
//! [`stop`](super::ReactorHandle::stop), a [`ThreadHandle::stop`], SIGINT or SIGTERM
//! under `run_per_core`) stops them all, each running its own shutdown phases (so every
//! connection gets its `connection_lost`), and [`ReactorGroup::join`] returns once every
//! thread has ended.
//!
//! [`ListenOptions::reuse_port`]: super::ListenOptions::reuse_port

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{Phase, Reactor, ThreadHandle};

/// `n` reactors, each running on its own thread, stopped together: the form of
/// [`Reactor::run_per_core`] that returns at once, with a handle to each reactor.
///
/// Made by [`start`](Self::start), which returns once every reactor is set up and
/// running. [`stop`](Self::stop) (or a stop of any one reactor) stops them all;
/// [`join`](Self::join) waits for every thread to end.
///
/// ```
/// use std::net::SocketAddr;
/// use weft::reactor::{Address, ListenOptions, Protocol, ReactorGroup, Transport};
///
/// struct Echo(Option<Transport>);
/// impl Protocol for Echo {
///     fn connection_made(&mut self, t: Transport) {
///         self.0 = Some(t);
///     }
///     fn data_received(&mut self, data: &[u8]) {
///         self.0.as_ref().unwrap().write(data);
///     }
/// }
///
/// # let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
/// let addr = SocketAddr::from(([127, 0, 0, 1], port));
/// let group = ReactorGroup::start(2, move |reactor, _index| {
///     // Each reactor listens on the same port; the kernel shares out the connections.
///     reactor.listen_tcp(addr, |_: &Address| Echo(None), ListenOptions::new().reuse_port(true))?;
///     Ok(())
/// })
/// .unwrap();
/// assert_eq!(group.handles().len(), 2);
/// group.stop();
/// group.join().unwrap();
/// ```
///
/// # Drop
///
/// Dropping the group without [`join`](Self::join) stops every reactor and waits for
/// their threads, ignoring their errors.
pub struct ReactorGroup {
    shared: Arc<GroupShared>,
    /// One per reactor, in index order; empty once joined.
    threads: Vec<JoinHandle<()>>,
}

/// Why a [`ReactorGroup`] (or [`Reactor::run_per_core`]) failed.
#[derive(Debug)]
pub enum ReactorGroupError {
    /// Reactor `index` could not be made, or its setup returned this error; the reactors
    /// started before it were stopped.
    Setup {
        /// Which reactor.
        index: usize,
        /// What went wrong.
        error: io::Error,
    },
    /// The thread of reactor `index` panicked, in its setup (the reactors started before
    /// it were stopped) or later, outside the callbacks (a panic in a callback is caught
    /// and logged, and the reactor goes on).
    Panicked {
        /// Which reactor.
        index: usize,
        /// The panic's message.
        message: String,
    },
}

impl fmt::Display for ReactorGroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReactorGroupError::Setup { index, error } => write!(f, "reactor {index}: setup failed: {error}"),
            ReactorGroupError::Panicked { index, message } => {
                write!(f, "reactor {index} panicked: {message}")
            }
        }
    }
}

impl std::error::Error for ReactorGroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReactorGroupError::Setup { error, .. } => Some(error),
            ReactorGroupError::Panicked { .. } => None,
        }
    }
}

/// What the group's threads and its owner share.
struct GroupShared {
    /// The reactors' thread handles, in index order, and whether the group is stopping;
    /// one lock, so a reactor registered while the group stops is stopped too.
    state: Mutex<GroupState>,
}

struct GroupState {
    handles: Vec<ThreadHandle>,
    stopping: bool,
}

impl GroupShared {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a reactor (stopping it at once if the group is stopping).
    fn register(&self, handle: ThreadHandle) {
        let mut state = self.lock();
        if state.stopping {
            let _ = handle.stop();
        }
        state.handles.push(handle);
    }

    /// Stops every reactor (once; a reactor already gone is skipped).
    fn stop_all(&self) {
        let mut state = self.lock();
        if !std::mem::replace(&mut state.stopping, true) {
            for handle in &state.handles {
                let _ = handle.stop();
            }
        }
    }
}

/// What a reactor's thread reports once its setup has run.
type SetupOutcome = Result<(), ReactorGroupError>;

impl ReactorGroup {
    /// Starts `n` reactors (one per available core if `n` is 0), each on its own thread
    /// named `weft-reactor-<index>`, and returns once every one is set up and running.
    ///
    /// Each thread makes its reactor, calls `setup(&reactor, index)` (listen, connect,
    /// schedule: anything a single-reactor program does before `run`), then runs the
    /// reactor until the group stops. Setups run one after the other, in index order, so
    /// reactor 0 may bind a port the others then share.
    ///
    /// # Errors
    ///
    /// [`ReactorGroupError::Setup`] if a reactor could not be made or its setup failed,
    /// [`ReactorGroupError::Panicked`] if a setup panicked; the reactors already started
    /// are stopped and joined first.
    pub fn start<F>(n: usize, setup: F) -> Result<ReactorGroup, ReactorGroupError>
    where
        F: Fn(&Reactor, usize) -> io::Result<()> + Send + Sync + 'static,
    {
        ReactorGroup::start_with(n, setup, false)
    }

    fn start_with<F>(n: usize, setup: F, stop_on_signals: bool) -> Result<ReactorGroup, ReactorGroupError>
    where
        F: Fn(&Reactor, usize) -> io::Result<()> + Send + Sync + 'static,
    {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let shared = Arc::new(GroupShared {
            state: Mutex::new(GroupState { handles: Vec::with_capacity(n), stopping: false }),
        });
        let setup = Arc::new(setup);
        let mut group = ReactorGroup { shared: shared.clone(), threads: Vec::with_capacity(n) };
        for index in 0..n {
            let (ready, setup_done) = mpsc::channel::<SetupOutcome>();
            let (shared, setup) = (shared.clone(), setup.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("weft-reactor-{index}"))
                .spawn(move || run_one(index, &shared, &*setup, stop_on_signals && index == 0, ready));
            let thread = match spawned {
                Ok(t) => t,
                Err(error) => {
                    group.stop_and_wait();
                    return Err(ReactorGroupError::Setup { index, error });
                }
            };
            group.threads.push(thread);
            // Wait for this reactor's setup before the next one's.
            let outcome = setup_done.recv().unwrap_or_else(|_| {
                // The thread ended without reporting: it panicked outside the setup's guard.
                let message = group.threads.pop().map_or_else(String::new, |t| match t.join() {
                    Err(payload) => panic_message(&*payload),
                    Ok(()) => "the reactor's thread ended during its setup".to_string(),
                });
                Err(ReactorGroupError::Panicked { index, message })
            });
            if let Err(e) = outcome {
                group.stop_and_wait();
                return Err(e);
            }
        }
        Ok(group)
    }

    /// How many reactors the group runs.
    pub fn len(&self) -> usize {
        self.shared.lock().handles.len()
    }

    /// True for a group of no reactors (never, once started).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A [`ThreadHandle`] to each reactor, in index order, to hand work to a given
    /// reactor from any thread (or stop one: that stops the group).
    pub fn handles(&self) -> Vec<ThreadHandle> {
        self.shared.lock().handles.clone()
    }

    /// Stops every reactor gracefully: each runs its shutdown phases, closing its
    /// connections (each protocol gets `connection_lost`). Returns at once; [`join`]
    /// waits for the end. Calling it again does nothing.
    ///
    /// [`join`]: Self::join
    pub fn stop(&self) {
        self.shared.stop_all();
    }

    /// Waits until every reactor has stopped and its thread ended (after a [`stop`], a
    /// stop of any one reactor, or a signal under [`Reactor::run_per_core`]).
    ///
    /// # Errors
    ///
    /// [`ReactorGroupError::Panicked`] for the first (by index) thread that panicked; the
    /// others were stopped and are joined too.
    ///
    /// [`stop`]: Self::stop
    pub fn join(mut self) -> Result<(), ReactorGroupError> {
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), ReactorGroupError> {
        let mut first = None;
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            if let Err(payload) = thread.join() {
                // A thread that panicked cannot stop the others through its shutdown.
                self.shared.stop_all();
                let message = panic_message(&*payload);
                first.get_or_insert(ReactorGroupError::Panicked { index, message });
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn stop_and_wait(&mut self) {
        self.shared.stop_all();
        let _ = self.join_all();
    }
}

impl Drop for ReactorGroup {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_and_wait();
        }
    }
}

impl fmt::Debug for ReactorGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("ReactorGroup")
            .field("reactors", &state.handles.len())
            .field("stopping", &state.stopping)
            .finish()
    }
}

impl Reactor {
    /// Runs `n` reactors, one per thread (one per available core if `n` is 0), until
    /// SIGINT, SIGTERM or a stop of any of them; then each runs its shutdown phases, and
    /// this returns once all have stopped. `setup(&reactor, index)` runs on each
    /// reactor's thread before it runs, in index order; a reactor-per-core server listens
    /// there with [`ListenOptions::reuse_port`](super::ListenOptions::reuse_port), so
    /// the kernel shares the connections out among the reactors.
    ///
    /// The signals are handled as [`stop_on_signals`](Self::stop_on_signals) does, on
    /// reactor 0 (whose stop stops the others). For control from another thread (the
    /// reactors' [`ThreadHandle`]s, a stop without a signal), use [`ReactorGroup`].
    ///
    /// # Errors
    ///
    /// As [`ReactorGroup::start`] and [`ReactorGroup::join`]: a setup that failed or
    /// panicked, or a reactor thread that panicked.
    ///
    /// # Examples
    ///
    /// `examples/echo_per_core.rs` is an echo server on every core.
    pub fn run_per_core<F>(n: usize, setup: F) -> Result<(), ReactorGroupError>
    where
        F: Fn(&Reactor, usize) -> io::Result<()> + Send + Sync + 'static,
    {
        ReactorGroup::start_with(n, setup, true)?.join()
    }
}

/// The body of reactor `index`'s thread: make the reactor, join the group, set up, report,
/// run until stopped.
fn run_one(
    index: usize,
    shared: &Arc<GroupShared>,
    setup: &(dyn Fn(&Reactor, usize) -> io::Result<()> + Send + Sync),
    stop_on_signals: bool,
    ready: mpsc::Sender<SetupOutcome>,
) {
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(error) => {
            let _ = ready.send(Err(ReactorGroupError::Setup { index, error }));
            return;
        }
    };
    shared.register(reactor.thread_handle());
    // A stop of this reactor, whoever asked for it, stops the group.
    let group = shared.clone();
    reactor.add_shutdown_trigger(Phase::Before, move || group.stop_all());
    let outcome = match crate::panics::caught(|| {
        if stop_on_signals {
            reactor.stop_on_signals()?;
        }
        setup(&reactor, index)
    }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ReactorGroupError::Setup { index, error }),
        Err(payload) => Err(ReactorGroupError::Panicked { index, message: panic_message(&*payload) }),
    };
    let failed = outcome.is_err();
    if ready.send(outcome).is_err() || failed {
        return;
    }
    reactor.run();
}

/// The message of a panic payload (a `&str` or a `String`; otherwise a placeholder).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

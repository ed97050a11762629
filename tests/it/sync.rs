//! Ports of Twisted's DeferredLock/Semaphore/Queue tests and Synapse's Linearizer and
//! ReadWriteLock tests.

use std::cell::RefCell;
use std::rc::Rc;

use weft::future::ensure_deferred;
use weft::{
    CancelledError, Deferred, DeferredLock, DeferredQueue, DeferredSemaphore, Failure, Linearizer,
    ReadWriteLock,
};

/// TW test_defer.py LockTests.testLock
#[test]
fn lock_serialises_in_fifo_order() {
    let lock = DeferredLock::new();
    let a = lock.acquire().take_result().unwrap().unwrap();
    let (b, c) = (lock.acquire(), lock.acquire());
    assert_eq!(lock.waiting(), 2);
    drop(a);
    assert!(b.is_called() && !c.is_called());
    drop(b.take_result());
    assert!(c.is_called());
    drop(c.take_result());
    assert!(!lock.locked());
}

/// TW test_defer.py LockTests.test_cancelLockBeforeAcquired / test_cancelLockAfterAcquired
#[test]
fn cancelled_lock_waiter_is_removed() {
    let lock = DeferredLock::new();
    let held = lock.acquire().take_result().unwrap().unwrap();
    let w = lock.acquire();
    w.cancel();
    assert!(w.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert_eq!(lock.waiting(), 0);
    drop(held);
    assert!(!lock.locked());
    // After acquiring, cancel is a no-op and the permit stays in the result.
    let got = lock.acquire();
    got.cancel();
    assert!(lock.locked());
    drop(got); // dropping the Deferred drops the permit
    assert!(!lock.locked());
}

/// The asyncio queue case: a waiter handed the lock and cancelled in the same turn
/// passes it on if its chain drops the permit.
#[test]
fn handed_then_dropped_passes_on() {
    let lock = DeferredLock::new();
    let held = lock.acquire().take_result().unwrap().unwrap();
    let w1 = lock.acquire();
    w1.add_callback(|p| {
        drop(p);
        weft::fail::<weft::Permit>(weft::Failure::msg("gave up"))
    });
    let w2 = lock.acquire();
    drop(held);
    w1.cancel();
    assert!(w2.is_called(), "no lost wake-up");
    let _ = w1.take_result();
}

/// TW test_defer.py SemaphoreTests.testSemaphore / test_cancelSemaphoreBeforeAcquired
#[test]
fn semaphore_limits_and_cancels() {
    let sem = DeferredSemaphore::new(2);
    let a = sem.acquire().take_result().unwrap().unwrap();
    let _b = sem.acquire().take_result().unwrap().unwrap();
    let c = sem.acquire();
    let d = sem.acquire();
    c.cancel();
    assert_eq!(sem.waiting(), 1);
    drop(a);
    assert!(d.is_called());
    assert_eq!(sem.tokens(), 0);
    let _ = c.take_result();
}

#[test]
fn semaphore_run_releases_when_done() {
    let sem = DeferredSemaphore::new(1);
    let gate: weft::Deferred<u8> = weft::Deferred::new();
    let g = gate.clone();
    let r: weft::Deferred<u8> = sem.run(move || g);
    assert_eq!(sem.tokens(), 0);
    gate.callback(3).unwrap();
    assert_eq!(r.take_result().unwrap().unwrap(), 3);
    assert_eq!(sem.tokens(), 1);
}

/// TW test_defer.py OtherPrimitivesTests.testQueue (its unbounded part)
#[test]
fn queue_fifo_and_waiting_getters() {
    let q = DeferredQueue::unbounded();
    let gets: Vec<_> = (0..3).map(|_| q.get()).collect();
    for i in 0..3 {
        q.put(i).take_result().unwrap().unwrap();
    }
    let got: Vec<i32> = gets.iter().map(|g| g.take_result().unwrap().unwrap()).collect();
    assert_eq!(got, [0, 1, 2]);
}

/// TW test_defer.py QueueTests.test_cancelQueueAfterSynchronousGet / test_cancelQueueAfterGet
#[test]
fn cancelled_getter_never_receives_an_item() {
    let q = DeferredQueue::unbounded();
    let g1 = q.get();
    let g2 = q.get();
    g1.cancel();
    q.put("x").take_result().unwrap().unwrap();
    assert_eq!(g2.take_result().unwrap().unwrap(), "x");
    assert!(g1.take_result().unwrap().unwrap_err().check::<CancelledError>());
    // Cancel after handed: the item stays in the result.
    let g3 = q.get();
    q.put("y").take_result().unwrap().unwrap();
    g3.cancel();
    assert_eq!(g3.take_result().unwrap().unwrap(), "y");
}

#[test]
fn bounded_queue_backpressure_and_put_cancel() {
    let q = DeferredQueue::bounded(1);
    q.put(1).take_result().unwrap().unwrap();
    let p2 = q.put(2);
    let p3 = q.put(3);
    assert_eq!(q.waiting_putters(), 2);
    p2.cancel(); // item 2 is dropped, not queued
    assert_eq!(q.get().take_result().unwrap().unwrap(), 1);
    assert!(p3.is_called());
    assert_eq!(q.get().take_result().unwrap().unwrap(), 3);
    let _ = p2.take_result();
    // A rendezvous queue.
    let r = DeferredQueue::bounded(0);
    let p = r.put("hi");
    assert!(!p.is_called());
    assert_eq!(r.get().take_result().unwrap().unwrap(), "hi");
    assert!(p.is_called());
}

/// SY test_linearizer.py LinearizerTestCase.test_linearizer / test_multiple_entries
#[test]
fn linearizer_per_key_limit() {
    let lin = Linearizer::new(2);
    let a = lin.queue("k").take_result().unwrap().unwrap();
    let b = lin.queue("k").take_result().unwrap().unwrap();
    let c = lin.queue("k");
    let other = lin.queue("j");
    assert!(!c.is_called() && other.is_called());
    drop(a);
    assert!(c.is_called());
    drop((b, c.take_result(), other.take_result()));
    assert_eq!(lin.active_keys(), 0, "keys are cleaned up");
}

/// SY test_linearizer.py LinearizerTestCase.test_cancellation
#[test]
fn linearizer_cancel_waiter() {
    let lin = Linearizer::new(1);
    let a = lin.queue(1).take_result().unwrap().unwrap();
    let b = lin.queue(1);
    let c = lin.queue(1);
    b.cancel();
    assert!(b.take_result().unwrap().unwrap_err().check::<CancelledError>());
    drop(a);
    assert!(c.is_called());
    drop(c.take_result());
    assert!(!lin.is_held(&1));
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_rwlock
#[test]
fn rwlock_ordering() {
    let lock = ReadWriteLock::new();
    let r1 = lock.read("k");
    let r2 = lock.read("k");
    let w1 = lock.write("k");
    let r3 = lock.read("k");
    let w2 = lock.write("k");
    assert!(r1.is_called() && r2.is_called() && !w1.is_called() && !r3.is_called());
    drop((r1.take_result(), r2.take_result()));
    assert!(w1.is_called() && !r3.is_called());
    drop(w1.take_result());
    assert!(r3.is_called() && !w2.is_called());
    drop(r3.take_result());
    assert!(w2.is_called());
    drop(w2.take_result());
    assert!(!lock.is_locked(&"k"));
}

/// SY test_rwlock.py ReadWriteLockTestCase.test_cancellation_while_waiting_for_write_lock
#[test]
fn rwlock_cancel_waiting_writer_lets_readers_in() {
    let lock = ReadWriteLock::new();
    let r1 = lock.read(1).take_result().unwrap().unwrap();
    let w = lock.write(1);
    let r2 = lock.read(1);
    assert!(!r2.is_called());
    w.cancel();
    assert!(w.take_result().unwrap().unwrap_err().check::<CancelledError>());
    assert!(r2.is_called(), "the reader behind the cancelled writer goes in");
    drop((r1, r2.take_result()));
    assert!(!lock.is_locked(&1));
}

/// SY test_linearizer.py `_start_task`: a task that takes the key, says so, waits to be
/// unblocked, and releases. Returns the task's Deferred, the "acquired" Deferred and the
/// unblocking Deferred.
pub(crate) fn start_task(
    lin: &Linearizer<&'static str>,
    key: &'static str,
) -> (Deferred<()>, Deferred<()>, Deferred<()>) {
    let (acquired, unblock) = (Deferred::new(), Deferred::new());
    let (l, a, u) = (lin.clone(), acquired.clone(), unblock.clone());
    let task = ensure_deferred(async move {
        let _permit = l.queue(key).await?;
        a.callback(()).unwrap();
        u.await
    });
    (task, acquired, unblock)
}

/// SY test_linearizer.py LinearizerTestCase.test_linearizer_is_queued: `is_queued` means
/// someone is waiting, not that the key is held (which is `is_held`). Before, it was
/// true while the first task merely held the key.
#[test]
fn linearizer_is_queued_means_someone_is_waiting() {
    let lin = Linearizer::new(1);
    let (_, acquired1, unblock1) = start_task(&lin, "key");
    assert!(acquired1.is_called());
    assert!(!lin.is_queued(&"key"), "held, nobody waiting");
    assert!(lin.is_held(&"key"));
    let (_, acquired2, unblock2) = start_task(&lin, "key");
    assert!(!acquired2.is_called());
    assert!(lin.is_queued(&"key"));
    unblock1.callback(()).unwrap();
    assert!(acquired2.is_called());
    assert!(!lin.is_queued(&"key"));
    unblock2.callback(()).unwrap();
    assert!(!lin.is_queued(&"key") && !lin.is_held(&"key"));
}

/// SY test_linearizer.py LinearizerTestCase.test_lots_of_queued_things: many tasks, each
/// in its own log context, queue behind a slow one; each runs in its own context while
/// holding the key and after releasing it, and nothing blows the stack.
#[test]
fn linearizer_lots_of_queued_things_keep_their_contexts() {
    use weft::logcontext::{current_context, LoggingContext};
    let lin = Linearizer::new(1);
    let func = |i: u32| {
        let lin = lin.clone();
        ensure_deferred(async move {
            let lc = LoggingContext::new(format!("func({i})"));
            let _scope = lc.enter();
            {
                let _permit = lin.queue("").await?;
                assert!(LoggingContext::ptr_eq(&current_context(), &lc), "{:?}", current_context());
            }
            assert!(LoggingContext::ptr_eq(&current_context(), &lc), "{:?}", current_context());
            Ok::<_, Failure>(())
        })
    };
    let (_, _, unblock) = start_task(&lin, "");
    let others: Vec<_> = (1..100).map(func).collect();
    let d = func(1000);
    assert!(current_context().is_sentinel());
    unblock.callback(()).unwrap();
    d.take_result().unwrap().unwrap();
    for o in others {
        o.take_result().unwrap().unwrap();
    }
    assert!(current_context().is_sentinel());
}

/// TW test_defer.py OtherPrimitivesTests.testQueue: `DeferredQueue(size, backlog)` with
/// `QueueUnderflow` past the backlog of waiting getters and `QueueOverflow` past the
/// size (`try_put`, Twisted's `put`).
#[test]
fn queue_size_and_backlog_limits() {
    use weft::sync::{QueueOverflow, QueueUnderflow};
    let (n, m) = (2, 2);
    let queue = DeferredQueue::new(Some(n), Some(m));
    let gotten = Rc::new(RefCell::new(Vec::new()));
    let getters: Vec<_> = (0..m)
        .map(|_| {
            let g = gotten.clone();
            queue
                .get()
                .add_callback(move |v: usize| {
                    g.borrow_mut().push(v);
                    v
                })
                .clone()
        })
        .collect();
    assert!(queue.get().take_result().unwrap().unwrap_err().check::<QueueUnderflow>());
    for i in 0..m {
        queue.try_put(i).unwrap();
        assert_eq!(*gotten.borrow(), (0..=i).collect::<Vec<_>>());
    }
    for i in 0..n {
        queue.try_put(n + i).unwrap();
        assert_eq!(*gotten.borrow(), (0..m).collect::<Vec<_>>());
    }
    assert!(matches!(queue.try_put(99), Err(QueueOverflow(99))));
    for i in 0..n {
        assert_eq!(queue.get().take_result().unwrap().unwrap(), n + i);
    }
    drop(getters);

    let rendezvous: DeferredQueue<()> = DeferredQueue::new(Some(0), None);
    assert!(rendezvous.try_put(()).is_err());
    let no_waiting: DeferredQueue<()> = DeferredQueue::new(None, Some(0));
    assert!(no_waiting.get().take_result().unwrap().unwrap_err().check::<QueueUnderflow>());
}

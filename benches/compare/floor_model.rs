//! The floor under a nested level: a minimal model of the Deferred protocol in safe
//! Rust, for `benches/deferred.rs` (beside weft, in criterion) and `examples/peer_bench.rs`
//! (`floor-chain-nested`, `floor-cancel-chain`: the peers' scenarios, measured the same
//! way), both of which include this file (`#[path] mod floor_model;`).
//!
//! Issue 15 asks for 25 ns per nested level and per cancelled layer. This model measures
//! what the protocol itself costs on the machine at hand, with everything weft adds to
//! it taken away. A Deferred is an `Rc<RefCell<_>>` holding a result slot and a list of
//! links (room for one inline); firing runs the links in a loop; a callback that returns
//! another Deferred makes the loop give that one a continuation link, hold it (for a
//! cancel to reach it) and stop; the continuation hands the result over and the loop
//! goes on with the waiting Deferred's links, without recursion; a dropped Deferred is
//! kept on a per-thread free list of its (one, known) type. A cancel walks down the chain
//! of waiting Deferreds to the one with no result, which runs its canceller and fails,
//! and the failure comes back out through the continuations.
//!
//! What the model leaves out: failures as values (an error is `()`), errbacks, cancel
//! handles, layer cancellers and cancel identities, log contexts, panics caught per
//! loop, pausing, the trampoline's depth bound, ring and cycle checks, debugging, and
//! any type but `u64`. Two ways to store a callback: inline (a function and the one
//! Deferred it captures: what weft's `CallOnce` does, with no allocation), and boxed
//! (`Box<dyn FnOnce>`, what a link costs in safe Rust without an inline store); and a
//! fan-out observer's callback (`Sum`, inline). A fan-out here is a list of Deferreds
//! each fired in turn; no source Deferred, no clone of the result (a `u64`). A gather
//! (`Gather`, `Member`) gives each member a link that hands its value to a shared state,
//! and the last one collects them; no failures, no Deferred for the outcome.

#![allow(dead_code)] // Each includer uses part of it.

use std::cell::{Cell, RefCell};
use std::mem;
use std::rc::Rc;

use smallvec::SmallVec;

/// How a link stores a callback (it gets the result and returns what comes next),
/// and the per-thread free list of Deferreds of that kind (the model knows its
/// types; weft's `free_list.rs` finds a list by `TypeId`).
pub trait Store: Sized + 'static {
    fn call(self, value: V) -> Next<Self>;
    fn with_free<R>(f: impl FnOnce(&mut Vec<Rc<RefCell<Node<Self>>>>) -> R) -> R;
}

/// A result: a value or a failure (cancelled).
pub type V = Result<u64, ()>;

/// What a callback returns: a value, or a Deferred to wait on.
pub enum Next<S: Store> {
    Ready(V),
    Wait(D<S>),
}

enum Link<S: Store> {
    Call(S),
    Continue(D<S>),
}

enum Slot<S: Store> {
    Pending,
    Running,
    Ready(V),
    /// Waiting on this Deferred (held, for a cancel to reach it).
    Waiting(D<S>),
    Consumed,
}

pub struct Node<S: Store> {
    slot: Slot<S>,
    links: SmallVec<[Option<Link<S>>; 1]>,
    head: usize,
    /// Counts the cancels that reached it with no result.
    canceller: Option<Rc<Cell<u32>>>,
}

impl<S: Store> Node<S> {
    /// Empties the list once every link ran.
    fn compact(&mut self) {
        if self.head == self.links.len() {
            self.links.clear();
            self.head = 0;
        }
    }
}

/// A Deferred of the model.
pub struct D<S: Store>(Rc<RefCell<Node<S>>>);

impl<S: Store> Clone for D<S> {
    fn clone(&self) -> Self {
        D(self.0.clone())
    }
}

impl<S: Store> D<S> {
    pub fn new() -> D<S> {
        if let Some(rc) = S::with_free(Vec::pop) {
            return D(rc);
        }
        D(Rc::new(RefCell::new(Node {
            slot: Slot::Pending,
            links: SmallVec::new(),
            head: 0,
            canceller: None,
        })))
    }

    pub fn with_canceller(count: Rc<Cell<u32>>) -> D<S> {
        let d = D::new();
        d.0.borrow_mut().canceller = Some(count);
        d
    }

    pub fn add_callback(&self, call: S) {
        // (A fired, idle Deferred would run the new link here; not in this scenario.)
        self.0.borrow_mut().links.push(Some(Link::Call(call)));
    }

    pub fn callback(&self, value: V) {
        {
            let mut node = self.0.borrow_mut();
            assert!(matches!(node.slot, Slot::Pending), "already called");
            node.slot = Slot::Running;
        }
        run(self.clone(), value);
    }

    /// Cancels: down the chain of waiting Deferreds to the one with no result,
    /// which runs its canceller and fails.
    pub fn cancel(&self) {
        let mut d = self.clone();
        loop {
            let next = match &d.0.borrow().slot {
                Slot::Waiting(waited) => waited.clone(),
                Slot::Pending => break,
                _ => return,
            };
            d = next;
        }
        let canceller = d.0.borrow_mut().canceller.take();
        if let Some(count) = canceller {
            count.set(count.get() + 1);
        }
        d.callback(Err(()));
    }

    pub fn result(&self) -> Option<V> {
        match self.0.borrow().slot {
            Slot::Ready(v) => Some(v),
            _ => None,
        }
    }
}

/// The callback loop: runs `this`'s links with `value`; a continuation moves it on
/// to the Deferred that waited.
fn run<S: Store>(mut this: D<S>, mut value: V) {
    loop {
        let link = {
            let mut guard = this.0.borrow_mut();
            let node = &mut *guard;
            match node.links.get_mut(node.head) {
                Some(link) => {
                    node.head += 1;
                    link.take()
                }
                None => {
                    node.slot = Slot::Ready(value);
                    node.compact();
                    return;
                }
            }
        };
        match link {
            Some(Link::Call(call)) => match call.call(value) {
                Next::Ready(v) => value = v,
                Next::Wait(other) => {
                    let mut o = other.0.borrow_mut();
                    if let Slot::Ready(v) = o.slot {
                        if o.head == o.links.len() {
                            o.slot = Slot::Consumed;
                            value = v;
                            continue;
                        }
                    }
                    o.links.push(Some(Link::Continue(this.clone())));
                    drop(o);
                    let mut node = this.0.borrow_mut();
                    node.slot = Slot::Waiting(other);
                    node.compact();
                    return;
                }
            },
            Some(Link::Continue(outer)) => {
                {
                    let mut node = this.0.borrow_mut();
                    node.slot = Slot::Consumed;
                    node.compact();
                }
                // The hold on this one goes, outside the borrow.
                let waited = mem::replace(&mut outer.0.borrow_mut().slot, Slot::Running);
                drop(waited);
                this = outer;
            }
            None => unreachable!("a link runs once"),
        }
    }
}

impl<S: Store> Drop for D<S> {
    /// The last handle keeps the emptied Deferred for reuse.
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) == 1 && Rc::weak_count(&self.0) == 0 {
            let mut node = self.0.borrow_mut();
            node.slot = Slot::Pending;
            node.links.clear();
            node.head = 0;
            node.canceller = None;
            drop(node);
            let rc = self.0.clone();
            S::with_free(|f| f.push(rc));
        }
    }
}

thread_local! {
    static INLINE: RefCell<Vec<Rc<RefCell<Node<Inline>>>>> = const { RefCell::new(Vec::new()) };
    static BOXED: RefCell<Vec<Rc<RefCell<Node<Boxed>>>>> = const { RefCell::new(Vec::new()) };
    static SUM: RefCell<Vec<Rc<RefCell<Node<Sum>>>>> = const { RefCell::new(Vec::new()) };
    static MEMBER: RefCell<Vec<Rc<RefCell<Node<Member>>>>> = const { RefCell::new(Vec::new()) };
}

/// The callback stored inline: a function and the one Deferred it captures.
pub struct Inline(pub fn(D<Inline>, V) -> Next<Inline>, pub D<Inline>);

impl Store for Inline {
    fn call(self, value: V) -> Next<Inline> {
        (self.0)(self.1, value)
    }

    fn with_free<R>(f: impl FnOnce(&mut Vec<Rc<RefCell<Node<Self>>>>) -> R) -> R {
        INLINE.with(|l| f(&mut l.borrow_mut()))
    }
}

/// The nested scenario's chain on the model, callbacks inline: `n` Deferreds, each but
/// the last fired with a callback that returns the next, so each waits on the next; firing
/// the last (with `Ok(v)`) hands `v` back up to the first.
pub fn nested_chain(n: usize) -> Vec<D<Inline>> {
    let ds: Vec<D<Inline>> = (0..n).map(|_| D::new()).collect();
    for i in (0..n - 1).rev() {
        ds[i].add_callback(Inline(|next, _| Next::Wait(next), ds[i + 1].clone()));
        ds[i].callback(Ok(0));
    }
    ds
}

/// The chained-cancel scenario's chain on the model: `n` Deferreds each waiting on the
/// next, the last on one whose canceller counts its runs in the `Rc` returned; a cancel
/// of the first walks down to it.
pub fn cancel_chain(n: usize) -> (Vec<D<Inline>>, Rc<Cell<u32>>) {
    let ran = Rc::new(Cell::new(0u32));
    let inner = D::<Inline>::with_canceller(ran.clone());
    let ds: Vec<D<Inline>> = (0..n).map(|_| D::new()).collect();
    for i in (0..n).rev() {
        let next = if i + 1 < n { ds[i + 1].clone() } else { inner.clone() };
        ds[i].add_callback(Inline(|next, _| Next::Wait(next), next));
        ds[i].callback(Ok(0));
    }
    (ds, ran)
}

/// The callback boxed.
pub struct Boxed(pub Box<dyn FnOnce(V) -> Next<Boxed>>);

impl Store for Boxed {
    fn call(self, value: V) -> Next<Boxed> {
        (self.0)(value)
    }

    fn with_free<R>(f: impl FnOnce(&mut Vec<Rc<RefCell<Node<Self>>>>) -> R) -> R {
        BOXED.with(|l| f(&mut l.borrow_mut()))
    }
}

/// A callback that adds the value to a shared sum and passes it on (a fan-out observer's),
/// stored inline.
pub struct Sum(pub Rc<Cell<u64>>);

impl Store for Sum {
    fn call(self, value: V) -> Next<Sum> {
        if let Ok(v) = value {
            self.0.set(self.0.get() + v);
        }
        Next::Ready(value)
    }

    fn with_free<R>(f: impl FnOnce(&mut Vec<Rc<RefCell<Node<Self>>>>) -> R) -> R {
        SUM.with(|l| f(&mut l.borrow_mut()))
    }
}

/// A gather's state: one slot per member, how many are still to come, the members held
/// until then (as weft's list holds them, for a cancel), and the values once all came.
pub struct Gather {
    results: RefCell<Vec<Option<u64>>>,
    remaining: Cell<usize>,
    members: RefCell<Vec<D<Member>>>,
    pub values: RefCell<Option<Vec<u64>>>,
}

impl Gather {
    /// Gathers `members`' values, in order (a failure is not modelled).
    pub fn new(members: Vec<D<Member>>) -> Rc<Gather> {
        let n = members.len();
        let state = Rc::new(Gather {
            results: RefCell::new(vec![None; n]),
            remaining: Cell::new(n),
            members: RefCell::new(Vec::new()),
            values: RefCell::new(None),
        });
        for (index, d) in members.iter().enumerate() {
            d.add_callback(Member(state.clone(), index));
        }
        *state.members.borrow_mut() = members;
        state
    }
}

/// A gather's link on member `.1`: hands its value to the state.
pub struct Member(pub Rc<Gather>, pub usize);

impl Store for Member {
    fn call(self, value: V) -> Next<Member> {
        let Member(state, index) = self;
        state.results.borrow_mut()[index] = value.ok();
        state.remaining.set(state.remaining.get() - 1);
        if state.remaining.get() == 0 {
            let all = mem::take(&mut *state.results.borrow_mut());
            *state.values.borrow_mut() = Some(all.into_iter().map(|v| v.expect("every member")).collect());
            drop(mem::take(&mut *state.members.borrow_mut()));
        }
        Next::Ready(value)
    }

    fn with_free<R>(f: impl FnOnce(&mut Vec<Rc<RefCell<Node<Self>>>>) -> R) -> R {
        MEMBER.with(|l| f(&mut l.borrow_mut()))
    }
}

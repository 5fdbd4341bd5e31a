//! The per-client event queue behind `callplus_client_poll_event`, and the dispatcher thread
//! behind event callbacks.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use ::callplus_client::{EventStream, MediaEventStream};

use super::event::{EventData, Queued, callplus_event};
use super::kind::media_kind;
use crate::ffi::{boundary, to_const_ptr};
use crate::result::callplus_result;
use crate::server_clock::ServerClock;

/// Media events kept in a client's queue before the app takes them; beyond, new ones are
/// dropped (an app that never reads its events loses reports, never memory).
pub(super) const MEDIA_EVENT_CAPACITY: usize = 1024;

/// An event callback: called with the `user_data` given to `callplus_client_set_event_callback`
/// and an event borrowed for the duration of the call.
pub type callplus_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const callplus_event)>;

/// The callback and its user data.
#[derive(Clone, Copy)]
pub(crate) struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const callplus_event),
    user_data: *mut c_void,
}

// SAFETY: the C API documents that `user_data` is used from the dispatcher thread; the app
// vouches that this is sound when it installs the callback.
unsafe impl Send for Callback {}

#[derive(Default)]
pub(super) struct QueueState {
    pub(super) queue: VecDeque<Queued>,
    /// How many of the queued events are media events.
    pub(super) media_queued: usize,
    /// The client's event stream ended: no more events will come.
    pub(super) closed: bool,
    /// The client is being freed: the dispatcher stops at once.
    stopping: bool,
    callback: Option<Callback>,
    /// A callback invocation is in progress.
    in_callback: bool,
    /// The dispatcher thread, while it runs.
    dispatcher: Option<(ThreadId, JoinHandle<()>)>,
    /// The dispatcher thread has not yet seen the callback removed.
    dispatcher_running: bool,
}

/// The events of one client, between the client's runtime (which pushes) and C (which polls,
/// or gets called back).
#[derive(Default)]
pub(crate) struct Events {
    state: Mutex<QueueState>,
    changed: Condvar,
    /// The client's server clock, handed to the sessions of its events.
    clock: Arc<ServerClock>,
}

impl QueueState {
    pub(super) fn pop(&mut self) -> Option<Queued> {
        let event = self.queue.pop_front()?;
        if !matches!(event, Queued::Call(_)) {
            self.media_queued = self.media_queued.saturating_sub(1);
        }
        Some(event)
    }

    /// Queues a media event unless the client stopped or too many wait already.
    pub(super) fn push_media(&mut self, event: Queued) -> bool {
        if self.closed || self.stopping || self.media_queued >= MEDIA_EVENT_CAPACITY {
            return false;
        }
        self.media_queued += 1;
        self.queue.push_back(event);
        true
    }
}

impl Events {
    /// The client's server clock: the sessions of its events and of its current call read it.
    pub(crate) fn clock(&self) -> &Arc<ServerClock> {
        &self.clock
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the client's events into the queue until the client stops (runs on the client's
    /// runtime).
    pub(crate) async fn pump(self: Arc<Self>, mut stream: EventStream) {
        while let Some(event) = stream.next().await {
            self.lock().queue.push_back(Queued::Call(event));
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Moves the built-in media's events into the queue, behind the call events before them,
    /// until the client stops (runs on the client's runtime).
    pub(crate) async fn pump_media(self: Arc<Self>, mut stream: MediaEventStream) {
        while let Some(event) = stream.next().await {
            if media_kind(&event).is_none() {
                continue;
            }
            if self.lock().push_media(Queued::Media(event)) {
                self.changed.notify_all();
            }
        }
    }

    /// Tells the app that its camera should send a key frame (from the media's threads).
    pub(crate) fn keyframe_requested(&self) {
        if self.lock().push_media(Queued::KeyframeRequested) {
            self.changed.notify_all();
        }
    }

    /// The next event within `timeout`: `NoEvent` when none came, `NotConnected` once the
    /// client stopped and every event was taken, `InvalidState` while a callback is installed.
    pub(crate) fn poll(&self, timeout: Duration) -> Result<Queued, callplus_result> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.lock();
        loop {
            if st.callback.is_some() {
                return Err(callplus_result::InvalidState);
            }
            if let Some(event) = st.pop() {
                return Ok(event);
            }
            if st.closed || st.stopping {
                return Err(callplus_result::NotConnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(callplus_result::NoEvent);
            }
            st = self.changed.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Installs (or, with `None`, removes) the callback. On removal, waits until a running
    /// invocation returns (unless called from that invocation).
    pub(crate) fn set_callback(self: &Arc<Self>, callback: Option<Callback>) -> Result<(), callplus_result> {
        let me = std::thread::current().id();
        let mut st = self.lock();
        if st.stopping {
            return Err(callplus_result::NotConnected);
        }
        st.callback = callback;
        self.changed.notify_all();
        let on_dispatcher = st.dispatcher.as_ref().is_some_and(|(id, _)| *id == me);
        match callback {
            Some(_) if !st.dispatcher_running => {
                // A previous dispatcher may still be winding down; it exits without touching
                // the queue again, so it is joined (briefly) before the new one starts.
                let old = st.dispatcher.take();
                st.dispatcher_running = true;
                let events = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("callplus-events".into())
                    .spawn(move || events.dispatch());
                match spawned {
                    Ok(handle) => st.dispatcher = Some((handle.thread().id(), handle)),
                    Err(_) => {
                        st.dispatcher_running = false;
                        st.callback = None;
                        return Err(callplus_result::Internal);
                    }
                }
                drop(st);
                if let Some((id, handle)) = old
                    && id != me
                {
                    let _ = handle.join();
                }
            }
            Some(_) => {}
            None => {
                while st.in_callback && !on_dispatcher {
                    st = self.wait(st);
                }
            }
        }
        Ok(())
    }

    /// The dispatcher thread: hands queued events to the callback until it is removed or the
    /// client is freed.
    fn dispatch(&self) {
        loop {
            let (callback, event) = {
                let mut st = self.lock();
                loop {
                    if st.stopping || st.callback.is_none() {
                        st.dispatcher_running = false;
                        self.changed.notify_all();
                        return;
                    }
                    if let Some(event) = st.pop() {
                        st.in_callback = true;
                        break (st.callback, event);
                    }
                    st = self.wait(st);
                }
            };
            let data = EventData::new(event, &self.clock);
            if let Some(cb) = callback {
                let ptr = to_const_ptr::<callplus_event>(&data);
                // SAFETY: the app installed `f` for exactly this call; the event outlives it.
                boundary(|| unsafe { (cb.f)(cb.user_data, ptr) });
            }
            drop(data);
            self.lock().in_callback = false;
            self.changed.notify_all();
        }
    }

    /// Stops event delivery for good (the client is being freed): wakes pollers, stops the
    /// dispatcher and waits for it, unless called from the callback itself.
    pub(crate) fn stop(&self) {
        let me = std::thread::current().id();
        let mut st = self.lock();
        st.stopping = true;
        self.changed.notify_all();
        let Some((id, handle)) = st.dispatcher.take() else { return };
        if id == me {
            // Freed from inside the callback: the dispatcher exits when the callback returns.
            return;
        }
        while st.dispatcher_running {
            st = self.wait(st);
        }
        drop(st);
        let _ = handle.join();
    }
}

/// Builds the callback of a C function pointer and user data.
pub(crate) fn callback(f: callplus_event_callback, user_data: *mut c_void) -> Option<Callback> {
    f.map(|f| Callback { f, user_data })
}

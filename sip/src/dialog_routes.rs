//! One channel for the states of every dialog, routed to the call that
//! drives each dialog.
//!
//! rsipstack asks for a `DialogState` sender per dialog. A tokio channel
//! allocates 32 slots of its message at once, and a `DialogState` is about
//! 300 bytes, so a channel per call held 9.8 KB of every call's memory
//! (issue 15). Here every dialog shares one sender; a task routes each
//! state, boxed, to its call's own channel, whose slots are a pointer each.
//! A dialog is known by its Call-ID and our tag, which stays the same for
//! its life (the far end's tag arrives later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, DialogStateSender};
use rsipstack::dialog::DialogId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Call-ID → (our tag, the call's channel): a Call-ID is shared only when a
/// call comes back to the gateway, so each list is one or two long.
type Table = HashMap<String, Vec<(String, mpsc::UnboundedSender<Box<DialogState>>)>>;

/// The shared sender rsipstack gets, and where each dialog's states go.
#[derive(Clone)]
pub(crate) struct DialogRoutes {
    shared: DialogStateSender,
    table: Arc<Mutex<Table>>,
}

impl DialogRoutes {
    /// The routes, and the task that delivers states until `stop`.
    pub(crate) fn new(
        stop: CancellationToken,
    ) -> (DialogRoutes, impl std::future::Future<Output = ()>) {
        let (shared, states) = mpsc::unbounded_channel();
        let routes = DialogRoutes {
            shared,
            table: Arc::default(),
        };
        let delivery = routes.clone().deliver(states, stop);
        (routes, delivery)
    }

    /// Makes a dialog with the shared sender, and routes its states to the
    /// returned receiver. The table stays locked while the dialog is made,
    /// so no state it sends at once can arrive before its route.
    pub(crate) fn open<D, E>(
        &self,
        make: impl FnOnce(DialogStateSender) -> Result<D, E>,
        id: impl Fn(&D) -> DialogId,
    ) -> Result<(D, DialogStates), E> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut table = self.lock();
        let made = make(self.shared.clone())?;
        let DialogId {
            call_id, local_tag, ..
        } = id(&made);
        table
            .entry(call_id.clone())
            .or_default()
            .push((local_tag, sender));
        drop(table);
        let states = DialogStates {
            receiver,
            table: self.table.clone(),
            call_id,
        };
        Ok((made, states))
    }

    async fn deliver(self, mut states: DialogStateReceiver, stop: CancellationToken) {
        loop {
            let state = tokio::select! {
                state = states.recv() => state,
                _ = stop.cancelled() => return,
            };
            // Never `None`: `self` holds a sender.
            let Some(state) = state else { return };
            let id = state.id();
            let route = self.lock().get(&id.call_id).and_then(|routes| {
                routes
                    .iter()
                    .find(|(tag, _)| *tag == id.local_tag)
                    .map(|(_, sender)| sender.clone())
            });
            match route {
                Some(sender) => {
                    let _ = sender.send(Box::new(state));
                }
                None => debug!(dialog = %id, "a state of a dialog no call drives any more"),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The states of one dialog; its route goes when this is dropped.
pub(crate) struct DialogStates {
    receiver: mpsc::UnboundedReceiver<Box<DialogState>>,
    table: Arc<Mutex<Table>>,
    call_id: String,
}

impl DialogStates {
    /// The next state; never `None` while the routes live.
    pub(crate) async fn recv(&mut self) -> Option<DialogState> {
        self.receiver.recv().await.map(|state| *state)
    }
}

impl Drop for DialogStates {
    fn drop(&mut self) {
        // Closed, this route is the one whose sender says so.
        self.receiver.close();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(routes) = table.get_mut(&self.call_id) {
            routes.retain(|(_, sender)| !sender.is_closed());
            if routes.is_empty() {
                table.remove(&self.call_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(call_id: &str, local_tag: &str, remote_tag: &str) -> DialogId {
        DialogId {
            call_id: call_id.to_string(),
            local_tag: local_tag.to_string(),
            remote_tag: remote_tag.to_string(),
        }
    }

    fn open(routes: &DialogRoutes, dialog: DialogId) -> DialogStates {
        let result: Result<_, ()> = routes.open(|_| Ok(()), |_| dialog.clone());
        let Ok(((), states)) = result else {
            unreachable!("the maker does not fail")
        };
        states
    }

    /// The next state routed to `states`; `None` if none comes within a
    /// second (a misrouted state would leave a test waiting).
    async fn next(states: &mut DialogStates) -> Option<DialogState> {
        tokio::time::timeout(std::time::Duration::from_secs(1), states.recv())
            .await
            .ok()
            .flatten()
    }

    /// What rsipstack does for any dialog: sends on the one shared sender.
    fn send(routes: &DialogRoutes, state: DialogState) {
        routes.shared.send(state).unwrap();
    }

    #[tokio::test]
    async fn each_dialog_hears_its_own_states_even_with_a_shared_call_id() {
        let stop = CancellationToken::new();
        let (routes, delivery) = DialogRoutes::new(stop.clone());
        let delivering = tokio::spawn(delivery);
        // A call the gateway places to one of its own users: both dialogs
        // have the Call-ID, each its own tag.
        let mut outgoing = open(&routes, id("c1", "ours-out", ""));
        let mut incoming = open(&routes, id("c1", "ours-in", "ours-out"));
        send(
            &routes,
            DialogState::Trying(id("c1", "ours-in", "ours-out")),
        );
        // The far end's tag has arrived since the route was made.
        send(
            &routes,
            DialogState::Calling(id("c1", "ours-out", "ours-in")),
        );
        assert!(matches!(
            next(&mut incoming).await,
            Some(DialogState::Trying(_))
        ));
        assert!(matches!(
            next(&mut outgoing).await,
            Some(DialogState::Calling(_))
        ));
        stop.cancel();
        delivering.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_dialog_loses_its_route_and_others_keep_theirs() {
        let stop = CancellationToken::new();
        let (routes, delivery) = DialogRoutes::new(stop.clone());
        let delivering = tokio::spawn(delivery);
        let given_up = open(&routes, id("c2", "first", ""));
        let mut kept = open(&routes, id("c2", "second", ""));
        drop(given_up);
        assert_eq!(routes.lock().get("c2").map(Vec::len), Some(1));
        // A late state of the given-up dialog goes nowhere; the kept one's arrives.
        send(&routes, DialogState::Trying(id("c2", "first", "x")));
        send(&routes, DialogState::Calling(id("c2", "second", "")));
        assert!(matches!(
            next(&mut kept).await,
            Some(DialogState::Calling(_))
        ));
        drop(kept);
        assert!(routes.lock().is_empty());
        // Even two routes with one key: dropping one removes that one alone.
        let first = open(&routes, id("c3", "same", ""));
        let mut second = open(&routes, id("c3", "same", ""));
        drop(first);
        send(&routes, DialogState::Calling(id("c3", "same", "")));
        assert!(matches!(
            next(&mut second).await,
            Some(DialogState::Calling(_))
        ));
        stop.cancel();
        delivering.await.unwrap();
    }
}

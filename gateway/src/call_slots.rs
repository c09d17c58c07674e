//! Caps on calls held at once, per connection and per gateway (the
//! session's own cap is its call table's size): one client must not take
//! the whole port pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many calls a scope holds, and its cap.
#[derive(Debug, Clone)]
pub struct CallCount {
    held: Arc<AtomicUsize>,
    max: usize,
}

/// A call's place in its connection's and the gateway's counts, given back
/// when the call task drops it.
#[derive(Debug)]
pub struct CallSlot {
    counts: Vec<CallCount>,
}

/// Which cap was reached, with its value.
#[derive(Debug, PartialEq, Eq)]
pub enum CapReached {
    Session(usize),
    Connection(usize),
    Gateway(usize),
}

impl CallCount {
    pub fn new(max: usize) -> CallCount {
        CallCount {
            held: Arc::default(),
            max,
        }
    }

    fn try_take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CallSlot {
    /// A slot in both counts, or which one is full (taking nothing).
    pub fn take(connection: &CallCount, gateway: &CallCount) -> Result<CallSlot, CapReached> {
        if !connection.try_take() {
            return Err(CapReached::Connection(connection.max));
        }
        if !gateway.try_take() {
            connection.give_back();
            return Err(CapReached::Gateway(gateway.max));
        }
        Ok(CallSlot {
            counts: vec![connection.clone(), gateway.clone()],
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        for count in &self.counts {
            count.give_back();
        }
    }
}

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapReached::Session(max) => write!(
                f,
                "this session already holds {max} calls (calls.max_calls_per_session)"
            ),
            CapReached::Connection(max) => write!(
                f,
                "this connection already holds {max} calls (calls.max_calls_per_connection)"
            ),
            CapReached::Gateway(max) => {
                write!(f, "the gateway already holds {max} calls (calls.max_calls)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let gateway = CallCount::new(3);
        let (first, second) = (CallCount::new(2), CallCount::new(2));
        let a = CallSlot::take(&first, &gateway).unwrap();
        let _b = CallSlot::take(&first, &gateway).unwrap();
        assert_eq!(
            CallSlot::take(&first, &gateway).unwrap_err(),
            CapReached::Connection(2)
        );
        let _c = CallSlot::take(&second, &gateway).unwrap();
        assert_eq!(
            CallSlot::take(&second, &gateway).unwrap_err(),
            CapReached::Gateway(3)
        );
        // The refusal took nothing from the connection's count.
        drop(a);
        let _d = CallSlot::take(&second, &gateway).unwrap();
    }
}

//! What waits for the guest's RX buffers, in the order it gets them: control packets first
//! (RST, REQUEST, RESPONSE, SHUTDOWN, CREDIT_UPDATE; a bounded queue, so a guest that posts
//! no buffers cannot make the device hold more), then connections whose host socket has data
//! for a guest with credit, served in turn (each connection at most once in the queue).

use std::collections::VecDeque;

use super::conn::Key;

/// A control packet waiting for an RX buffer; counters are filled in when it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Control {
    pub(super) key: Key,
    pub(super) op: u16,
    pub(super) flags: u32,
}

#[derive(Debug)]
pub(super) struct RxQueue {
    control: VecDeque<Control>,
    ready: VecDeque<Key>,
    max_control: usize,
}

impl RxQueue {
    /// An empty queue that holds at most `max_control` control packets.
    pub(super) fn new(max_control: usize) -> Self {
        Self {
            control: VecDeque::new(),
            ready: VecDeque::new(),
            max_control,
        }
    }

    /// Queues a control packet; false (and nothing queued) when the queue is full.
    pub(super) fn push_control(&mut self, key: Key, op: u16, flags: u32) -> bool {
        if self.control.len() >= self.max_control {
            return false;
        }
        self.control.push_back(Control { key, op, flags });
        true
    }

    pub(super) fn pop_control(&mut self) -> Option<Control> {
        self.control.pop_front()
    }

    /// Control packets queued.
    pub(super) fn control_len(&self) -> usize {
        self.control.len()
    }

    /// Puts a connection with data for the guest at the back of the queue, unless it is in it.
    pub(super) fn mark_ready(&mut self, key: Key) {
        if !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    pub(super) fn pop_ready(&mut self) -> Option<Key> {
        self.ready.pop_front()
    }

    /// Puts back a connection just taken, to be served first (it could not be served now).
    pub(super) fn retry_first(&mut self, key: Key) {
        self.ready.push_front(key);
    }

    /// Puts back a connection just served, behind the others (round robin).
    pub(super) fn retry_last(&mut self, key: Key) {
        self.ready.push_back(key);
    }

    /// Whether anything waits.
    pub(super) fn is_empty(&self) -> bool {
        self.control.is_empty() && self.ready.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.control.clear();
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{OP_CREDIT_UPDATE, OP_RESPONSE, OP_RST};

    fn key(guest_port: u32) -> Key {
        Key {
            host_cid: 3,
            host_port: 5000,
            guest_port,
        }
    }

    #[test]
    fn control_packets_are_bounded_and_kept_in_order() {
        let mut q = RxQueue::new(3);
        assert!(q.is_empty());
        assert!(q.push_control(key(1), OP_RESPONSE, 0));
        assert!(q.push_control(key(2), OP_RST, 0));
        assert!(q.push_control(key(1), OP_CREDIT_UPDATE, 0));
        assert!(!q.push_control(key(3), OP_RST, 0), "a full queue refuses");
        assert_eq!(q.control_len(), 3);
        let ops: Vec<_> = std::iter::from_fn(|| q.pop_control())
            .map(|c| (c.key.guest_port, c.op))
            .collect();
        assert_eq!(ops, [(1, OP_RESPONSE), (2, OP_RST), (1, OP_CREDIT_UPDATE)]);
        assert!(q.push_control(key(3), OP_RST, 0), "room again once drained");
    }

    #[test]
    fn a_ready_connection_is_queued_once_and_served_in_turn() {
        let mut q = RxQueue::new(1);
        q.mark_ready(key(1));
        q.mark_ready(key(2));
        q.mark_ready(key(1));
        assert!(!q.is_empty());
        assert_eq!(q.pop_ready(), Some(key(1)));
        q.retry_last(key(1));
        assert_eq!(q.pop_ready(), Some(key(2)));
        q.retry_first(key(2));
        assert_eq!(q.pop_ready(), Some(key(2)));
        assert_eq!(q.pop_ready(), Some(key(1)));
        assert_eq!(q.pop_ready(), None);
        q.mark_ready(key(4));
        assert!(q.push_control(key(4), OP_RST, 0));
        q.clear();
        assert!(q.is_empty());
    }
}

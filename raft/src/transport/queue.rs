//! The bounded send queue toward one store, and how it cuts frames.
//!
//! A core keeps one queue per destination store. [`SendQueue::push`] never waits: when the
//! queue is full the message is dropped and the caller counts it (raft tolerates lost
//! messages: it retries appends and heartbeats). [`SendQueue::next_frame`] takes the
//! oldest messages up to the per-frame bounds and encodes them as one frame.

use super::message::{encode_batch, RaftEnvelope};
use crate::wire;
use std::collections::VecDeque;

/// Bounds of a send queue and of the frames cut from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages waiting for one store.
    pub max_queued_messages: usize,
    /// Most bytes (encoded envelopes) waiting for one store.
    pub max_queued_bytes: usize,
    /// Most messages in one frame.
    pub max_frame_messages: usize,
    /// Most payload bytes in one frame, unless a single message is larger (it then goes
    /// alone, up to `max_message_bytes`).
    pub max_frame_bytes: usize,
    /// Largest single message (encoded envelope); larger ones are dropped. At most the
    /// receivers' frame payload bound.
    pub max_message_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_queued_messages: 4096,
            max_queued_bytes: 64 << 20,
            max_frame_messages: 256,
            max_frame_bytes: 1 << 20,
            max_message_bytes: wire::DEFAULT_MAX_PAYLOAD as usize,
        }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue holds its bound of messages or bytes.
    QueueFull,
    /// The message alone is over `max_message_bytes`.
    TooLarge,
}

impl DropReason {
    /// The `reason` label of the dropped-messages counter.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// Messages waiting for one store, bounded in count and bytes.
#[derive(Debug)]
pub struct SendQueue {
    limits: QueueLimits,
    /// Each message with its encoded size in a batch.
    queue: VecDeque<(RaftEnvelope, usize)>,
    bytes: usize,
}

/// A frame cut from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    /// The frame's bytes (header and payload).
    pub bytes: Vec<u8>,
    /// Messages in it.
    pub messages: usize,
}

impl SendQueue {
    /// An empty queue with these bounds.
    pub fn new(limits: QueueLimits) -> SendQueue {
        SendQueue {
            limits,
            queue: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Queues `env`, or says why it was dropped. Never waits.
    pub fn push(&mut self, env: RaftEnvelope) -> Result<(), DropReason> {
        let size = env.batch_bytes();
        if size > self.limits.max_message_bytes {
            return Err(DropReason::TooLarge);
        }
        if self.queue.len() >= self.limits.max_queued_messages
            || self.bytes + size > self.limits.max_queued_bytes
        {
            return Err(DropReason::QueueFull);
        }
        self.bytes += size;
        self.queue.push_back((env, size));
        Ok(())
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Encoded bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every waiting message; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.bytes = 0;
        n
    }

    /// Takes the oldest messages that fit one frame (at least one, if any wait) and encodes
    /// them for cluster `cluster_id`; `None` when the queue is empty.
    pub fn next_frame(&mut self, cluster_id: u64) -> Option<OutFrame> {
        let mut envelopes = Vec::new();
        let mut payload = 0usize;
        while let Some((_, size)) = self.queue.front() {
            let size = *size;
            let full = envelopes.len() >= self.limits.max_frame_messages
                || payload + size > self.limits.max_frame_bytes;
            if full && !envelopes.is_empty() {
                break;
            }
            let Some((env, _)) = self.queue.pop_front() else {
                break;
            };
            self.bytes -= size;
            payload += size;
            envelopes.push(env);
        }
        if envelopes.is_empty() {
            return None;
        }
        let messages = envelopes.len();
        let mut bytes = Vec::with_capacity(wire::HEADER_LEN + payload);
        encode_batch(&mut bytes, cluster_id, envelopes);
        debug_assert_eq!(bytes.len(), wire::HEADER_LEN + payload);
        Some(OutFrame { bytes, messages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::message::RaftBatch;
    use crate::wire::{FrameDecoder, FrameLimits};

    fn env(n: u64, body: usize) -> RaftEnvelope {
        RaftEnvelope {
            region_id: n + 1,
            to_store: 2,
            message: vec![n as u8; body],
            ..RaftEnvelope::default()
        }
    }

    fn decode(frame: &OutFrame) -> Vec<RaftEnvelope> {
        let mut d = FrameDecoder::new(FrameLimits::new(7));
        d.feed(&frame.bytes);
        let f = d.next_frame().expect("valid").expect("whole frame");
        assert_eq!(d.pending(), 0);
        f.decode::<RaftBatch>().expect("batch").envelopes
    }

    #[test]
    fn frames_hold_at_most_the_message_bound_in_order() {
        let limits = QueueLimits {
            max_frame_messages: 3,
            ..QueueLimits::default()
        };
        let mut q = SendQueue::new(limits);
        for n in 0..10 {
            q.push(env(n, 10)).expect("room");
        }
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(f) = q.next_frame(7) {
            let envs = decode(&f);
            assert_eq!(envs.len(), f.messages);
            sizes.push(f.messages);
            got.extend(envs.into_iter().map(|e| e.region_id - 1));
        }
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert!(q.is_empty() && q.bytes() == 0);
    }

    #[test]
    fn frames_hold_at_most_the_byte_bound_unless_one_message_is_larger() {
        let one = env(0, 100).batch_bytes();
        let limits = QueueLimits {
            max_frame_bytes: one * 2 + 1,
            ..QueueLimits::default()
        };
        let mut q = SendQueue::new(limits);
        for n in 0..5 {
            q.push(env(n, 100)).expect("room");
        }
        q.push(env(5, 1000)).expect("room: under max_message_bytes");
        q.push(env(6, 100)).expect("room");
        let mut frames = Vec::new();
        while let Some(f) = q.next_frame(7) {
            assert!(
                f.bytes.len() - wire::HEADER_LEN <= limits.max_frame_bytes || f.messages == 1,
                "a frame over the bound holds one message"
            );
            frames.push(
                decode(&f)
                    .iter()
                    .map(|e| e.region_id - 1)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            frames,
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6]]
        );
    }

    #[test]
    fn a_full_queue_drops_and_says_why() {
        let limits = QueueLimits {
            max_queued_messages: 4,
            max_queued_bytes: 1 << 20,
            max_message_bytes: 500,
            ..QueueLimits::default()
        };
        let mut q = SendQueue::new(limits);
        for n in 0..4 {
            q.push(env(n, 10)).expect("room");
        }
        assert_eq!(q.push(env(4, 10)), Err(DropReason::QueueFull));
        assert_eq!(q.len(), 4);
        assert_eq!(q.push(env(5, 600)), Err(DropReason::TooLarge));
        // Taking a frame makes room again.
        assert!(q.next_frame(7).is_some());
        q.push(env(6, 10)).expect("room after a frame");

        let byte_bound = QueueLimits {
            max_queued_bytes: env(0, 100).batch_bytes() * 2,
            ..QueueLimits::default()
        };
        let mut q = SendQueue::new(byte_bound);
        q.push(env(0, 100)).expect("room");
        q.push(env(1, 100)).expect("room");
        assert_eq!(q.push(env(2, 1)), Err(DropReason::QueueFull));
        assert_eq!(q.clear(), 2);
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.push(env(2, 1)), Ok(()));
        assert_eq!(DropReason::QueueFull.label(), "queue_full");
    }
}

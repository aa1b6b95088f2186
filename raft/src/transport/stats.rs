//! The transport's counters: kept as atomics (one [`TransportStats`] per store, read by
//! tests and by `INFO`-like reports) and mirrored to the `metrics` facade under the names
//! listed in docs/metrics.md.

use super::queue::DropReason;
use crate::wire::FrameError;
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the transport counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Raft messages handed to a connection (`nokv_transport_messages_sent_total`).
    MessagesSent,
    /// Frames written (`nokv_transport_frames_sent_total`).
    FramesSent,
    /// Frame bytes written (`nokv_transport_sent_bytes_total`).
    BytesSent,
    /// Messages that passed validation on arrival (`nokv_transport_messages_received_total`).
    MessagesReceived,
    /// Messages put into a core's inbox (`nokv_transport_messages_delivered_total`).
    MessagesDelivered,
    /// Outgoing connections established (`nokv_transport_connects_total`).
    Connects,
    /// Outgoing connection attempts that failed, resolution included
    /// (`nokv_transport_connect_failures_total`).
    ConnectFailures,
    /// Incoming connections accepted (`nokv_transport_connections_accepted_total`).
    Accepted,
    /// Incoming connections refused over the per-core bound
    /// (`nokv_transport_connections_refused_total`).
    Refused,
    /// A message dropped before delivery (`nokv_transport_messages_dropped_total{reason}`).
    Dropped(DropCause),
    /// A frame refused on arrival; its connection was dropped
    /// (`nokv_transport_frames_rejected_total{reason}`).
    FrameRejected(FrameReject),
    /// A message refused on arrival (`nokv_transport_envelopes_rejected_total{reason}`).
    EnvelopeRejected(EnvelopeReject),
}

/// Why a message was dropped on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The send queue toward its store was full.
    QueueFull,
    /// The message alone was over the frame bound.
    TooLarge,
    /// Its frame was being written when the connection failed.
    ConnectionLost,
    /// The mesh channel toward the owning core was full.
    MeshFull,
    /// The owning core's inbox was full.
    InboxFull,
    /// The transport was stopping.
    Stopping,
    /// Addressed to a core this store does not have (sent to the local store).
    NoSuchCore,
    /// Dropped by an injected network fault (test-only `NOKV_DEBUG_NET_FAULTS`).
    Fault,
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameReject {
    /// Not a NoKV frame (bad magic).
    Magic,
    /// Another protocol version.
    Version,
    /// Another cluster.
    Cluster,
    /// Over the payload bound.
    TooLarge,
    /// Header or payload fail the checksum.
    Checksum,
    /// The connection ended inside a frame.
    Truncated,
    /// Not a kind this port takes, or an undecodable payload.
    Payload,
}

/// Why a message was refused on arrival (its frame was fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeReject {
    /// Addressed to another store.
    WrongStore,
    /// Addressed to a core this store does not have.
    NoSuchCore,
}

const DROPS: [DropCause; 8] = [
    DropCause::QueueFull,
    DropCause::TooLarge,
    DropCause::ConnectionLost,
    DropCause::MeshFull,
    DropCause::InboxFull,
    DropCause::Stopping,
    DropCause::NoSuchCore,
    DropCause::Fault,
];
const FRAME_REJECTS: [FrameReject; 7] = [
    FrameReject::Magic,
    FrameReject::Version,
    FrameReject::Cluster,
    FrameReject::TooLarge,
    FrameReject::Checksum,
    FrameReject::Truncated,
    FrameReject::Payload,
];
const ENVELOPE_REJECTS: [EnvelopeReject; 2] =
    [EnvelopeReject::WrongStore, EnvelopeReject::NoSuchCore];

impl DropCause {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::QueueFull => "queue_full",
            DropCause::TooLarge => "too_large",
            DropCause::ConnectionLost => "connection_lost",
            DropCause::MeshFull => "mesh_full",
            DropCause::InboxFull => "inbox_full",
            DropCause::Stopping => "stopping",
            DropCause::NoSuchCore => "no_such_core",
            DropCause::Fault => "fault",
        }
    }
}

impl From<DropReason> for DropCause {
    fn from(r: DropReason) -> DropCause {
        match r {
            DropReason::QueueFull => DropCause::QueueFull,
            DropReason::TooLarge => DropCause::TooLarge,
        }
    }
}

impl FrameReject {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            FrameReject::Magic => "magic",
            FrameReject::Version => "version",
            FrameReject::Cluster => "cluster",
            FrameReject::TooLarge => "too_large",
            FrameReject::Checksum => "checksum",
            FrameReject::Truncated => "truncated",
            FrameReject::Payload => "payload",
        }
    }

    /// The reason for a decoder error; `None` for an IO error (not the peer's bytes).
    pub fn of(e: &FrameError) -> Option<FrameReject> {
        Some(match e {
            FrameError::BadMagic(_) => FrameReject::Magic,
            FrameError::Version { .. } => FrameReject::Version,
            FrameError::Cluster { .. } => FrameReject::Cluster,
            FrameError::TooLarge { .. } => FrameReject::TooLarge,
            FrameError::Checksum { .. } => FrameReject::Checksum,
            FrameError::Truncated { .. } => FrameReject::Truncated,
            FrameError::Payload { .. } => FrameReject::Payload,
            FrameError::Io(_) => return None,
        })
    }
}

impl EnvelopeReject {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            EnvelopeReject::WrongStore => "wrong_store",
            EnvelopeReject::NoSuchCore => "no_such_core",
        }
    }
}

/// Name of every transport metric with its label values (for registration at zero).
pub fn metric_names() -> Vec<(&'static str, Option<&'static str>)> {
    let mut out: Vec<(&'static str, Option<&'static str>)> = [
        Event::MessagesSent,
        Event::FramesSent,
        Event::BytesSent,
        Event::MessagesReceived,
        Event::MessagesDelivered,
        Event::Connects,
        Event::ConnectFailures,
        Event::Accepted,
        Event::Refused,
    ]
    .iter()
    .map(|e| (e.metric().0, None))
    .collect();
    out.extend(
        DROPS
            .iter()
            .map(|d| (Event::Dropped(*d).metric().0, Some(d.label()))),
    );
    out.extend(
        FRAME_REJECTS
            .iter()
            .map(|r| (Event::FrameRejected(*r).metric().0, Some(r.label()))),
    );
    out.extend(
        ENVELOPE_REJECTS
            .iter()
            .map(|r| (Event::EnvelopeRejected(*r).metric().0, Some(r.label()))),
    );
    out
}

impl Event {
    /// The metric name and its `reason` label, if any.
    pub fn metric(self) -> (&'static str, Option<&'static str>) {
        match self {
            Event::MessagesSent => ("nokv_transport_messages_sent_total", None),
            Event::FramesSent => ("nokv_transport_frames_sent_total", None),
            Event::BytesSent => ("nokv_transport_sent_bytes_total", None),
            Event::MessagesReceived => ("nokv_transport_messages_received_total", None),
            Event::MessagesDelivered => ("nokv_transport_messages_delivered_total", None),
            Event::Connects => ("nokv_transport_connects_total", None),
            Event::ConnectFailures => ("nokv_transport_connect_failures_total", None),
            Event::Accepted => ("nokv_transport_connections_accepted_total", None),
            Event::Refused => ("nokv_transport_connections_refused_total", None),
            Event::Dropped(d) => ("nokv_transport_messages_dropped_total", Some(d.label())),
            Event::FrameRejected(r) => ("nokv_transport_frames_rejected_total", Some(r.label())),
            Event::EnvelopeRejected(r) => {
                ("nokv_transport_envelopes_rejected_total", Some(r.label()))
            }
        }
    }

    /// Index into the counter arrays.
    fn slot(self) -> usize {
        const PLAIN: usize = 9;
        match self {
            Event::MessagesSent => 0,
            Event::FramesSent => 1,
            Event::BytesSent => 2,
            Event::MessagesReceived => 3,
            Event::MessagesDelivered => 4,
            Event::Connects => 5,
            Event::ConnectFailures => 6,
            Event::Accepted => 7,
            Event::Refused => 8,
            Event::Dropped(d) => PLAIN + DROPS.iter().position(|x| *x == d).unwrap_or(0),
            Event::FrameRejected(r) => {
                PLAIN + DROPS.len() + FRAME_REJECTS.iter().position(|x| *x == r).unwrap_or(0)
            }
            Event::EnvelopeRejected(r) => {
                PLAIN
                    + DROPS.len()
                    + FRAME_REJECTS.len()
                    + ENVELOPE_REJECTS.iter().position(|x| *x == r).unwrap_or(0)
            }
        }
    }
}

const SLOTS: usize = 9 + DROPS.len() + FRAME_REJECTS.len() + ENVELOPE_REJECTS.len();

/// A store's transport counters (shared by its cores).
pub struct TransportStats {
    counts: [AtomicU64; SLOTS],
    /// Facade handles, made when the stats are (after the recorder is installed).
    handles: Vec<Counter>,
}

impl std::fmt::Debug for TransportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportStats")
            .field("counts", &self.counts)
            .finish()
    }
}

impl Default for TransportStats {
    fn default() -> Self {
        TransportStats::new()
    }
}

impl TransportStats {
    /// Zeroed counters, with facade handles from the installed `metrics` recorder (none
    /// installed: the facade side does nothing).
    pub fn new() -> TransportStats {
        let mut handles = Vec::with_capacity(SLOTS);
        for (name, reason) in metric_names() {
            handles.push(match reason {
                Some(r) => metrics::counter!(name, "reason" => r),
                None => metrics::counter!(name),
            });
        }
        TransportStats {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            handles,
        }
    }

    /// Counts `n` of `event`.
    pub fn add(&self, event: Event, n: u64) {
        let slot = event.slot();
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(h) = self.handles.get(slot) {
            h.increment(n);
        }
    }

    /// How many of `event` were counted.
    pub fn get(&self, event: Event) -> u64 {
        self.counts
            .get(event.slot())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Frames rejected, all reasons.
    pub fn frames_rejected(&self) -> u64 {
        FRAME_REJECTS
            .iter()
            .map(|r| self.get(Event::FrameRejected(*r)))
            .sum()
    }

    /// Messages dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        DROPS.iter().map(|d| self.get(Event::Dropped(*d))).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_own_slot_in_registration_order() {
        let mut events = vec![
            Event::MessagesSent,
            Event::FramesSent,
            Event::BytesSent,
            Event::MessagesReceived,
            Event::MessagesDelivered,
            Event::Connects,
            Event::ConnectFailures,
            Event::Accepted,
            Event::Refused,
        ];
        events.extend(DROPS.iter().map(|d| Event::Dropped(*d)));
        events.extend(FRAME_REJECTS.iter().map(|r| Event::FrameRejected(*r)));
        events.extend(ENVELOPE_REJECTS.iter().map(|r| Event::EnvelopeRejected(*r)));
        assert_eq!(events.len(), SLOTS);
        let names = metric_names();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.slot(), i, "{e:?}");
            assert_eq!(e.metric(), names[i], "{e:?}");
        }
        let s = TransportStats::new();
        s.add(Event::Dropped(DropCause::QueueFull), 2);
        s.add(Event::Dropped(DropReason::TooLarge.into()), 1);
        s.add(Event::FrameRejected(FrameReject::Cluster), 1);
        assert_eq!(s.get(Event::Dropped(DropCause::QueueFull)), 2);
        assert_eq!(s.dropped(), 3);
        assert_eq!(s.frames_rejected(), 1);
        assert_eq!(s.get(Event::MessagesSent), 0);
    }
}

//! [`Node`]: the one state machine a host drives (DESIGN §3).
//!
//! The host feeds [`Input`]s with the current time and drains [`Output`]s.
//! The node never blocks, reads no clock and touches no socket.
//!
//! Ordering rules that keep data safe:
//! - A local change is handed to the host to persist first; it enters the
//!   log and leaves the device only after the host acknowledges it
//!   ([`Input::Persisted`]). So a crash can never make this replica reuse a
//!   seq for different content (an equivocation).
//! - Remote envelopes are verified before they are stored, forwarded or
//!   applied; bad ones are reported as events and dropped.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::aead::GcmKey;
use minicbor::bytes::ByteVec;

use crate::crypto::{
    CryptoError, DocKey, DocKeys, Identity, MAX_SEAL_BATCH, Rng, Verifier, open_transport,
    presence_digest, seal_transport, sign_digest, signal_digest, transport_cipher, verify_digest,
};
use crate::gossip::codec::is_gossip;
use crate::gossip::{self, GossipConfig, SealedGossip, SealedOutput};
use crate::id::{DocId, PeerId, RoomId};
use crate::log::{DocLog, Inserted};
use crate::sync::{Session, SyncConfig};
use crate::time::Timestamp;
use crate::wire::{
    DirectFrame, Envelope, EnvelopeKind, MAX_SIGNAL, PeerTag, RelayEvent, RelayRequest,
    SyncMessage, VersionVector, WireError, decode_frame, encode_frame,
};

/// A link as the host numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// What is at the other end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A relay: frames are [`RelayRequest`] / [`RelayEvent`]; many rooms, many peers.
    Relay,
    /// One peer directly (WebRTC data channel, in-process pipe): [`DirectFrame`]s.
    Direct,
}

/// How much of a document this node may see.
#[derive(Debug, Clone)]
pub enum DocAccess {
    /// The key: read, write, apply.
    Full(DocKey),
    /// Blind pinning: store and serve envelopes, never read them.
    Blind(RoomId),
}

/// Configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node pins documents for others: its vectors count for
    /// `stored-remotely`, and it advertises only what it persisted.
    pub pinning: bool,
    /// Largest frame this node sends or accepts.
    pub max_frame: usize,
    pub sync: SyncConfig,
    /// Direct links (protocol.md §5.3): with a gossip configuration, each
    /// document runs a gossip swarm whose active view names the peers to
    /// link with directly ([`Event::LinkWanted`]), and live changes travel
    /// through the mesh of direct links rather than the relay. `None`
    /// (the default): relay and host-made direct links only.
    pub mesh: Option<GossipConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            pinning: false,
            max_frame: crate::wire::MAX_FRAME,
            sync: SyncConfig::default(),
            mesh: None,
        }
    }
}

/// What the host tells the node.
#[derive(Debug, Clone)]
pub enum Input {
    LinkUp {
        link: LinkId,
        kind: LinkKind,
    },
    LinkDown {
        link: LinkId,
    },
    Received {
        link: LinkId,
        bytes: Vec<u8>,
    },
    /// The app made a change (an Automerge change's bytes).
    LocalChange {
        doc: DocId,
        change: Vec<u8>,
    },
    /// The app made several changes at once (an import, or changes a host
    /// gathered before handing them over), in order. They are sealed as
    /// consecutive envelopes signed once per batch (see
    /// [`DocKeys::seal_batch`]) and persisted as one `Persist`.
    LocalChanges {
        doc: DocId,
        changes: Vec<Vec<u8>>,
    },
    /// The host stored every `Persist` batch of `doc` up to `batch`.
    Persisted {
        doc: DocId,
        batch: u64,
    },
    /// This replica's presence in a document ("who is here"): app bytes
    /// such as a name and a colour, at most [`MAX_PRESENCE_STATE`] bytes;
    /// empty to leave. Sealed under the document key, signed, sent to the
    /// document's peers and never persisted: at most once per
    /// [`PRESENCE_MIN_INTERVAL_MS`] (a newer state waits for the next
    /// slot), refreshed every [`PRESENCE_REFRESH_MS`]; peers forget it
    /// [`PRESENCE_EXPIRY_MS`] after they last heard it.
    SetPresence {
        doc: DocId,
        state: Vec<u8>,
    },
    /// Signaling for a direct link to `peer` (a WebRTC offer, answer or
    /// ICE candidate: the host's bytes, at most [`MAX_SIGNAL`]): signed,
    /// transport-sealed and sent to `peer` alone through a relay room
    /// where it is a member (a direct link to it if there is no relay
    /// path). The peer's node reports it as [`Event::Signal`].
    Signal {
        doc: DocId,
        peer: PeerId,
        payload: Vec<u8>,
    },
    /// A direct link to `peer` that was wanted ([`Event::LinkWanted`])
    /// could not be opened (no connection within the host's timeout);
    /// gossip picks another peer. (A link that was up and went down is
    /// [`Input::LinkDown`].)
    DirectFailed {
        peer: PeerId,
    },
    /// A timer the node asked for ([`Output::WakeAt`]) fired, or any time.
    Tick,
}

/// Presence messages of one document are sent at most this often.
pub const PRESENCE_MIN_INTERVAL_MS: u64 = 1_000;
/// A presence state is sent again this often while it is set.
pub const PRESENCE_REFRESH_MS: u64 = 10_000;
/// A peer's presence is forgotten this long after its last message.
pub const PRESENCE_EXPIRY_MS: u64 = 30_000;
/// The largest presence state (before sealing).
pub const MAX_PRESENCE_STATE: usize = 1_024;
/// At most this many peers' presence is kept per document.
const MAX_PRESENCE_PEERS: usize = 256;
/// At most this many peers' last signal seq is kept per document.
const MAX_SIGNAL_PEERS: usize = 256;

/// What the node asks the host to do.
#[derive(Debug, Clone)]
pub enum Output {
    Send {
        link: LinkId,
        bytes: Vec<u8>,
    },
    /// Append these envelopes to the store, then answer [`Input::Persisted`].
    Persist {
        doc: DocId,
        batch: u64,
        records: Vec<Envelope>,
    },
    /// Verified, decrypted changes, in order per author.
    Apply {
        doc: DocId,
        changes: Vec<Vec<u8>>,
    },
    Event(Event),
    /// Call `handle(now, Input::Tick)` at this time.
    WakeAt(Timestamp),
}

/// Things the app or operator may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This replica's changes up to `upto` are durable in the local store.
    SavedLocally { doc: DocId, upto: u64 },
    /// This replica's changes up to `upto` have left the device.
    Sent { doc: DocId, upto: u64 },
    /// This replica's changes up to `upto` are held by at least `copies`
    /// pinning nodes.
    StoredRemotely {
        doc: DocId,
        upto: u64,
        copies: usize,
    },
    /// A peer's presence state in a document changed or was refreshed
    /// (see [`Input::SetPresence`]); empty when the peer left or was not
    /// heard for [`PRESENCE_EXPIRY_MS`].
    Presence {
        doc: DocId,
        peer: PeerId,
        state: Vec<u8>,
    },
    /// Signaling for a direct link from `peer` (see [`Input::Signal`]),
    /// its signature checked and addressed to this replica.
    Signal {
        doc: DocId,
        peer: PeerId,
        payload: Vec<u8>,
    },
    /// Open a direct link to `peer` (it entered a document's gossip
    /// active view; see [`NodeConfig::mesh`]). The `initiator` (the side
    /// with the smaller PeerId) makes the offer, sending its signaling
    /// with [`Input::Signal`] in `doc`; the other answers the offer that
    /// arrives as [`Event::Signal`]. When the link is up: [`Input::LinkUp`]
    /// with [`LinkKind::Direct`]; if it never comes up: [`Input::DirectFailed`].
    LinkWanted {
        doc: DocId,
        peer: PeerId,
        initiator: bool,
    },
    /// No document wants the direct link to `peer` any more: close it
    /// (and report [`Input::LinkDown`]).
    LinkUnwanted { peer: PeerId },
    /// A peer introduced itself in a document's room.
    PeerSeen {
        doc: DocId,
        peer: PeerId,
        pinning: bool,
    },
    /// An author signed two envelopes for one position; the first is kept.
    Equivocation {
        doc: DocId,
        author: PeerId,
        seq: u64,
    },
    /// An envelope from the network was refused.
    Rejected { doc: DocId, reason: NodeError },
    /// Remote changes were applied to the document (from
    /// [`crate::doc::Replica`], which applies `Apply` outputs itself).
    Changed { doc: DocId },
    /// The relay reported an error.
    RelayError {
        link: LinkId,
        code: u16,
        message: String,
    },
}

/// Errors of [`Node`] calls. Bad network input is an error value, never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    UnknownDoc(DocId),
    UnknownLink(LinkId),
    /// The document is pinned blindly: it cannot be changed or read here.
    Blind(DocId),
    /// Open twice with different access.
    AlreadyOpen(DocId),
    Wire(WireError),
    Crypto(CryptoError),
    /// A peer sent an envelope signed with this replica's own identity at a
    /// position it never wrote: the identity is in use elsewhere.
    OwnSeqConflict {
        seq: u64,
    },
    /// A decrypted change that the document refused (Automerge's reason).
    BadChange(String),
    /// No session of the document reaches this peer (for a signal).
    NoRouteTo(PeerId),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::UnknownDoc(d) => write!(f, "document {d} is not open"),
            NodeError::UnknownLink(l) => write!(f, "link {} is not up", l.0),
            NodeError::Blind(d) => {
                write!(
                    f,
                    "document {d} is pinned without its key: it cannot be read or changed here"
                )
            }
            NodeError::AlreadyOpen(d) => write!(f, "document {d} is already open"),
            NodeError::Wire(e) => write!(f, "{e}"),
            NodeError::Crypto(e) => write!(f, "{e}"),
            NodeError::BadChange(e) => write!(f, "a change was refused by the document: {e}"),
            NodeError::NoRouteTo(p) => write!(
                f,
                "peer {p} is not reachable: it is in none of this document's relay rooms or direct links"
            ),
            NodeError::OwnSeqConflict { seq } => write!(
                f,
                "a peer holds change {seq} signed by this replica's identity, which it never wrote: the identity is in use elsewhere"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NodeError {}

impl From<WireError> for NodeError {
    fn from(e: WireError) -> Self {
        NodeError::Wire(e)
    }
}
impl From<CryptoError> for NodeError {
    fn from(e: CryptoError) -> Self {
        NodeError::Crypto(e)
    }
}

/// Where sync with one peer of a document stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSync {
    pub peer: PeerId,
    pub pinning: bool,
    /// We hold everything the peer said it holds.
    pub have_theirs: bool,
    /// The peer holds everything we hold (acknowledged).
    pub has_ours: bool,
}

impl PeerSync {
    pub fn synced(&self) -> bool {
        self.have_theirs && self.has_ours
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Of `bytes_out`: on direct links (WebRTC data channels).
    pub bytes_out_direct: u64,
    /// Of `bytes_out`: to relays.
    pub bytes_out_relay: u64,
    pub frames_rejected: u64,
    pub envelopes_received: u64,
    pub envelopes_duplicate: u64,
    pub envelopes_rejected: u64,
}

/// What a document's sessions sent ([`Node::traffic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocTraffic {
    /// Bytes of room publishes (live changes, presence), each counted
    /// once, whatever the number of members.
    pub published: u64,
    pub peers: Vec<PeerTraffic>,
}

/// Sealed payload bytes sent to one peer of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTraffic {
    pub peer: PeerId,
    /// A direct link to the peer is up.
    pub direct: bool,
    pub bytes_direct: u64,
    pub bytes_relay: u64,
}

/// Where a session's frames go: a direct link, or a peer behind a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    link: LinkId,
    tag: Option<PeerTag>,
}

struct DocState {
    room: RoomId,
    keys: Option<DocKeys>,
    transport: GcmKey,
    log: DocLog,
    sessions: BTreeMap<Route, Session>,
    /// Own envelopes handed to the host, not yet acknowledged: (batch, envelope).
    unsaved_local: VecDeque<(u64, Envelope)>,
    /// Remote envelopes handed to the host, not yet acknowledged.
    unsaved_remote: VecDeque<(u64, Envelope)>,
    next_persist_batch: u64,
    next_local_seq: u64,
    persisted: VersionVector,
    sent_upto: u64,
    /// Pinning peers -> highest own seq they hold.
    pinned_by: BTreeMap<PeerId, u64>,
    /// stored_remotely[k-1] = highest own seq held by >= k pinners (as last reported).
    stored_reported: Vec<u64>,
    /// This replica's presence state, while set.
    own_presence: Option<OwnPresence>,
    /// Peers' presence: state, seq, when last heard.
    presence: BTreeMap<PeerId, PeerPresence>,
    /// The seq of the last signal accepted from each peer.
    signals_from: BTreeMap<PeerId, u64>,
    /// The document's gossip swarm, with direct links on.
    gossip: Option<SealedGossip>,
    /// Whether our last `Have`s said we are in the mesh.
    meshed_announced: bool,
    /// Bytes of room publishes (to no peer in particular).
    published_bytes: u64,
}

impl DocState {
    /// The peers this replica has a direct link with for this document.
    /// (A Vec: a handful of links, and a set type of its own would add
    /// its code to the browser's .wasm.)
    fn direct_peers(&self) -> Vec<PeerId> {
        self.sessions
            .iter()
            .filter(|(r, _)| r.tag.is_none())
            .filter_map(|(_, s)| s.remote_peer)
            .collect()
    }

    /// This replica gets live changes through direct links: it has one
    /// with a peer that said who it is.
    fn meshed(&self) -> bool {
        self.sessions
            .iter()
            .any(|(r, s)| r.tag.is_none() && s.remote_peer.is_some())
    }

    /// A relay session with a peer that is also linked directly: the
    /// direct session carries sync, this one stands by (it takes over
    /// when the direct link goes down).
    fn standing_by(&self, route: Route) -> bool {
        route.tag.is_some()
            && self
                .sessions
                .get(&route)
                .and_then(|s| s.remote_peer)
                .is_some_and(|p| {
                    self.sessions
                        .iter()
                        .any(|(r, s)| r.tag.is_none() && s.remote_peer == Some(p))
                })
    }
}

#[derive(Debug)]
struct OwnPresence {
    state: Vec<u8>,
    last_sent: Option<Timestamp>,
    /// A newer state, or a new peer, waits for the next slot.
    pending: bool,
}

#[derive(Debug)]
struct PeerPresence {
    state: Vec<u8>,
    seq: u64,
    heard: Timestamp,
}

impl fmt::Debug for DocState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocState")
            .field("room", &self.room)
            .field("envelopes", &self.log.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// A relay room as one relay link sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    /// `Join` sent at this time, not yet answered (re-sent if it stays so).
    Joining(Timestamp),
    Joined(PeerTag),
}

#[derive(Debug)]
struct LinkState {
    kind: LinkKind,
    /// Relay links: rooms joined or asked for.
    rooms: BTreeMap<RoomId, Membership>,
}

/// How long a `Join` may go unanswered before it is sent again.
const JOIN_RETRY_MS: u64 = 5_000;

/// The sans-IO node. See the [crate docs](crate) for an example.
pub struct Node {
    identity: Identity,
    config: NodeConfig,
    rng: Rng,
    now: Timestamp,
    docs: BTreeMap<DocId, DocState>,
    rooms: BTreeMap<RoomId, DocId>,
    links: BTreeMap<LinkId, LinkState>,
    outputs: VecDeque<Output>,
    wake_at: Option<Timestamp>,
    stats: NodeStats,
    verifier: Verifier,
    /// The seq of this replica's last presence message: a random
    /// incarnation (high 32 bits, new at every start) and a counter;
    /// drawn at the first presence message (so nodes that never send one
    /// use their randomness exactly as before).
    presence_seq: Option<u64>,
    /// The same for signaling messages.
    signal_seq: Option<u64>,
    /// The peers reported as [`Event::LinkWanted`] and not since unwanted.
    wanted: Vec<PeerId>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("peer", &self.identity.peer_id())
            .field("docs", &self.docs.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// `seed` must be fresh randomness from the host on every start (nonces
    /// come from it).
    pub fn new(identity: Identity, config: NodeConfig, seed: [u8; 32]) -> Node {
        Node {
            identity,
            config,
            rng: Rng::from_seed(seed),
            now: Timestamp(0),
            docs: BTreeMap::new(),
            rooms: BTreeMap::new(),
            links: BTreeMap::new(),
            outputs: VecDeque::new(),
            wake_at: None,
            stats: NodeStats::default(),
            verifier: Verifier::default(),
            presence_seq: None,
            signal_seq: None,
            wanted: Vec::new(),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Randomness for the host's own needs (new document ids and keys), so
    /// a seeded run stays reproducible.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Opens a document with the envelopes the host loaded from its store
    /// (as persisted earlier, any order). With the key, their changes come
    /// out as one [`Output::Apply`].
    pub fn open_doc<'a>(
        &mut self,
        now: Timestamp,
        doc: DocId,
        access: DocAccess,
        stored: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), NodeError> {
        self.now = now;
        if self.docs.contains_key(&doc) {
            return Err(NodeError::AlreadyOpen(doc));
        }
        let (room, keys) = match access {
            DocAccess::Full(key) => {
                let keys = DocKeys::new(doc, key);
                (keys.room(), Some(keys))
            }
            DocAccess::Blind(room) => (room, None),
        };
        let mut state = DocState {
            room,
            transport: keys
                .as_ref()
                .map_or_else(|| transport_cipher(&doc, &room), |k| k.transport().clone()),
            keys,
            log: DocLog::new(room),
            sessions: BTreeMap::new(),
            unsaved_local: VecDeque::new(),
            unsaved_remote: VecDeque::new(),
            next_persist_batch: 1,
            next_local_seq: 1,
            persisted: VersionVector::default(),
            sent_upto: 0,
            pinned_by: BTreeMap::new(),
            stored_reported: Vec::new(),
            own_presence: None,
            presence: BTreeMap::new(),
            signals_from: BTreeMap::new(),
            gossip: None,
            meshed_announced: false,
            published_bytes: 0,
        };
        if let Some(config) = self.config.mesh.clone() {
            state.gossip = Some(SealedGossip::new(
                &self.identity,
                &doc,
                &room,
                config,
                self.rng.array(),
            ));
        }
        let me = self.identity.peer_id();
        let mut changes = Vec::new();
        for bytes in stored {
            // The store is ours and checksummed: structure is checked, the
            // signature was checked when the envelope first arrived.
            let env = Envelope::decode(bytes)?;
            if let Inserted::New { ready } = state.log.insert(env) {
                for env in ready {
                    if let Some(keys) = state.keys.as_mut() {
                        changes.push(keys.decrypt_verified(&env)?);
                    }
                }
            }
        }
        state.persisted = state.log.vector();
        state.next_local_seq = state.log.contiguous(&me) + 1;
        // What we stored was sent before or will be streamed on sync.
        state.sent_upto = 0;
        self.rooms.insert(room, doc);
        self.docs.insert(doc, state);
        if !changes.is_empty() {
            self.outputs.push_back(Output::Apply { doc, changes });
        }
        let links: Vec<(LinkId, LinkKind)> = self.links.iter().map(|(l, s)| (*l, s.kind)).collect();
        for (link, kind) in links {
            self.attach(link, kind, doc);
        }
        self.schedule();
        Ok(())
    }

    /// Forgets a document (its store is the host's business). Leaves its rooms.
    pub fn close_doc(&mut self, doc: DocId) -> Result<(), NodeError> {
        // Its swarm says goodbye while the routes to its peers still exist.
        self.gossip_input(doc, gossip::Input::Leave);
        let state = self.docs.remove(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        if state.gossip.is_some() {
            // Links only this document wanted are no longer wanted.
            self.update_wanted(doc);
        }
        self.rooms.remove(&state.room);
        let relay_links: Vec<LinkId> = self
            .links
            .iter_mut()
            .filter(|(_, l)| l.kind == LinkKind::Relay)
            .filter_map(|(id, l)| l.rooms.remove(&state.room).map(|_| *id))
            .collect();
        for link in relay_links {
            self.send_relay(link, &RelayRequest::Leave { room: state.room });
        }
        Ok(())
    }

    /// The document's version vector (in memory).
    pub fn vector(&self, doc: DocId) -> Option<VersionVector> {
        self.docs.get(&doc).map(|d| d.log.vector())
    }

    /// The document's envelopes.
    pub fn log(&self, doc: DocId) -> Option<&DocLog> {
        self.docs.get(&doc).map(|d| &d.log)
    }

    pub fn room(&self, doc: DocId) -> Option<RoomId> {
        self.docs.get(&doc).map(|d| d.room)
    }

    /// Peers known in a document's room and their latest vectors, once
    /// per peer (one reached both directly and through a relay has a
    /// session on each: the vectors are merged).
    pub fn peers(&self, doc: DocId) -> Vec<(PeerId, VersionVector, bool)> {
        let mut out: Vec<(PeerId, VersionVector, bool)> = Vec::new();
        let Some(d) = self.docs.get(&doc) else {
            return out;
        };
        for s in d.sessions.values() {
            let Some(p) = s.remote_peer else { continue };
            match out.iter_mut().find(|(q, _, _)| *q == p) {
                Some((_, v, pinning)) => {
                    for (a, n) in s.remote_vector.iter() {
                        if *n > v.get(a) {
                            v.set(*a, *n);
                        }
                    }
                    *pinning |= s.remote_pinning;
                }
                None => out.push((p, s.remote_vector.clone(), s.remote_pinning)),
            }
        }
        out
    }

    /// The presence states of the peers of a document heard from in the
    /// last [`PRESENCE_EXPIRY_MS`] (see [`Input::SetPresence`]).
    pub fn presence(&self, doc: DocId) -> Vec<(PeerId, Vec<u8>)> {
        self.docs.get(&doc).map_or_else(Vec::new, |d| {
            d.presence
                .iter()
                .filter(|(_, p)| !p.state.is_empty())
                .map(|(peer, p)| (*peer, p.state.clone()))
                .collect()
        })
    }

    /// Sync status with each peer met in a document's room.
    pub fn sync_status(&self, doc: DocId) -> Vec<PeerSync> {
        let Some(d) = self.docs.get(&doc) else {
            return Vec::new();
        };
        let mine = d.log.vector();
        // Once per peer: one reached directly and through a relay holds
        // what either session says (merged vectors; delivered on either).
        self.peers(doc)
            .into_iter()
            .map(|(peer, vector, pinning)| PeerSync {
                peer,
                pinning,
                have_theirs: mine.covers(&vector),
                has_ours: d
                    .sessions
                    .values()
                    .any(|s| s.remote_peer == Some(peer) && s.delivered(&d.log)),
            })
            .collect()
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), NodeError> {
        self.now = self.now.max(now);
        let result = match input {
            Input::LinkUp { link, kind } => {
                self.links.insert(
                    link,
                    LinkState {
                        kind,
                        rooms: BTreeMap::new(),
                    },
                );
                let docs: Vec<DocId> = self.docs.keys().copied().collect();
                for doc in docs {
                    self.attach(link, kind, doc);
                }
                Ok(())
            }
            Input::LinkDown { link } => {
                self.links.remove(&link);
                let mut takeover = Vec::new();
                let mut failed = Vec::new();
                for (doc, d) in self.docs.iter_mut() {
                    let lost: Vec<PeerId> = d
                        .sessions
                        .iter()
                        .filter(|(r, _)| r.link == link && r.tag.is_none())
                        .filter_map(|(_, s)| s.remote_peer)
                        .collect();
                    d.sessions.retain(|r, _| r.link != link);
                    failed.extend(lost.iter().map(|p| (*doc, *p)));
                    // The relay path takes over at once for the peers of a
                    // direct link that went down: a `Have` now resumes sync
                    // from what each side holds (nothing in flight is lost).
                    takeover.extend(
                        d.sessions
                            .iter()
                            .filter(|(r, s)| {
                                r.tag.is_some() && s.remote_peer.is_some_and(|p| lost.contains(&p))
                            })
                            .map(|(r, _)| (*doc, *r)),
                    );
                }
                for (doc, route) in takeover {
                    // No stream yet: the relay session's cursor is from
                    // before the direct link. The peer's own takeover
                    // `Have` (or its reply) tells what it lacks.
                    self.send_have(doc, route);
                }
                for (doc, peer) in failed {
                    self.gossip_input(doc, gossip::Input::LinkFailed { peer });
                }
                let docs: Vec<DocId> = self.docs.keys().copied().collect();
                for doc in docs {
                    self.announce_mesh(doc);
                }
                Ok(())
            }
            Input::DirectFailed { peer } => {
                let docs: Vec<DocId> = self.docs.keys().copied().collect();
                for doc in docs {
                    self.gossip_input(doc, gossip::Input::LinkFailed { peer });
                }
                Ok(())
            }
            Input::Received { link, bytes } => self.on_received(link, &bytes),
            Input::LocalChange { doc, change } => self.on_local_change(doc, &change),
            Input::LocalChanges { doc, changes } => self.on_local_changes(doc, &changes),
            Input::Persisted { doc, batch } => self.on_persisted(doc, batch),
            Input::SetPresence { doc, state } => self.on_set_presence(doc, state),
            Input::Signal { doc, peer, payload } => self.on_signal_out(doc, peer, payload),
            Input::Tick => {
                self.on_tick();
                Ok(())
            }
        };
        self.schedule();
        result
    }

    /// Drains one output.
    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- links -------------------------------------------------------

    fn attach(&mut self, link: LinkId, kind: LinkKind, doc: DocId) {
        let Some(state) = self.docs.get(&doc) else {
            return;
        };
        let room = state.room;
        match kind {
            LinkKind::Relay => {
                let now = self.now;
                if let Some(l) = self.links.get_mut(&link) {
                    l.rooms.insert(room, Membership::Joining(now));
                }
                self.send_relay(link, &RelayRequest::Join { room });
            }
            LinkKind::Direct => {
                let route = Route { link, tag: None };
                self.start_session(doc, route);
            }
        }
    }

    fn start_session(&mut self, doc: DocId, route: Route) {
        if let Some(state) = self.docs.get_mut(&doc) {
            state.sessions.entry(route).or_default();
            self.send_have(doc, route);
        }
    }

    fn send_relay(&mut self, link: LinkId, req: &RelayRequest) {
        let bytes = encode_frame(req);
        self.emit(link, bytes);
    }

    /// Hands a frame for `link` to the host, counting it.
    fn emit(&mut self, link: LinkId, bytes: Vec<u8>) {
        let n = bytes.len() as u64;
        self.stats.frames_out += 1;
        self.stats.bytes_out += n;
        match self.links.get(&link).map(|l| l.kind) {
            Some(LinkKind::Direct) => self.stats.bytes_out_direct += n,
            Some(LinkKind::Relay) | None => self.stats.bytes_out_relay += n,
        }
        self.outputs.push_back(Output::Send { link, bytes });
    }

    /// Seals a sync message and sends it along `route`.
    fn send_sync(&mut self, doc: DocId, route: Route, msg: &SyncMessage) {
        let Some(state) = self.docs.get(&doc) else {
            return;
        };
        let sealed = seal_transport(
            &state.transport,
            &state.room,
            &encode_frame(msg),
            &mut self.rng,
        );
        self.send_sealed(doc, route, sealed);
    }

    /// Sends a transport-sealed payload along `route`, counting its bytes
    /// for the session (per-peer traffic).
    fn send_sealed(&mut self, doc: DocId, route: Route, sealed: Vec<u8>) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        let room = state.room;
        if let Some(s) = state.sessions.get_mut(&route) {
            s.bytes_out += sealed.len() as u64;
        }
        match route.tag {
            Some(to) => self.send_relay(
                route.link,
                &RelayRequest::Send {
                    room,
                    to,
                    payload: ByteVec::from(sealed),
                },
            ),
            None => {
                let bytes = encode_frame(&DirectFrame {
                    room,
                    sealed: ByteVec::from(sealed),
                });
                self.emit(route.link, bytes);
            }
        }
    }

    fn have_message(&self, doc: DocId) -> Option<SyncMessage> {
        let state = self.docs.get(&doc)?;
        let vector = if self.config.pinning {
            state.persisted.clone()
        } else {
            state.log.vector()
        };
        Some(SyncMessage::Have {
            from: self.identity.peer_id(),
            vector,
            pinning: self.config.pinning,
            meshed: state.meshed(),
        })
    }

    fn send_have(&mut self, doc: DocId, route: Route) {
        let Some(msg) = self.have_message(doc) else {
            return;
        };
        let standing_by = self.docs.get(&doc).is_some_and(|d| d.standing_by(route));
        if !standing_by {
            self.send_sync(doc, route, &msg);
        }
        // Noted as sent either way, so a session standing by is not due
        // again at every tick.
        let now = self.now;
        if let Some(s) = self
            .docs
            .get_mut(&doc)
            .and_then(|d| d.sessions.get_mut(&route))
        {
            s.note_have_sent(now);
        }
    }

    // ---- receiving ---------------------------------------------------

    fn on_received(&mut self, link: LinkId, bytes: &[u8]) -> Result<(), NodeError> {
        let kind = self
            .links
            .get(&link)
            .ok_or(NodeError::UnknownLink(link))?
            .kind;
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let result = match kind {
            LinkKind::Relay => {
                let event: RelayEvent = decode_frame(bytes, self.config.max_frame)?;
                self.on_relay_event(link, event)
            }
            LinkKind::Direct => {
                let frame: DirectFrame = decode_frame(bytes, self.config.max_frame)?;
                match self.rooms.get(&frame.room) {
                    Some(doc) => {
                        let doc = *doc;
                        let route = Route { link, tag: None };
                        self.on_sealed(doc, route, &frame.sealed)
                    }
                    // A room we do not hold: the peer shares other documents.
                    None => Ok(()),
                }
            }
        };
        if result.is_err() {
            self.stats.frames_rejected += 1;
        }
        result
    }

    fn on_relay_event(&mut self, link: LinkId, event: RelayEvent) -> Result<(), NodeError> {
        match event {
            RelayEvent::Joined { room, you, peers } => {
                let Some(&doc) = self.rooms.get(&room) else {
                    return Ok(());
                };
                if let Some(l) = self.links.get_mut(&link) {
                    l.rooms.insert(room, Membership::Joined(you));
                }
                for peer in peers {
                    if peer != you {
                        self.start_session(
                            doc,
                            Route {
                                link,
                                tag: Some(peer),
                            },
                        );
                    }
                }
            }
            RelayEvent::PeerJoined { room, peer } => {
                if let Some(&doc) = self.rooms.get(&room) {
                    self.start_session(
                        doc,
                        Route {
                            link,
                            tag: Some(peer),
                        },
                    );
                }
            }
            RelayEvent::PeerLeft { room, peer } => {
                let Some(&doc) = self.rooms.get(&room) else {
                    return Ok(());
                };
                let Some(state) = self.docs.get_mut(&doc) else {
                    return Ok(());
                };
                let gone = state
                    .sessions
                    .remove(&Route {
                        link,
                        tag: Some(peer),
                    })
                    .and_then(|s| s.remote_peer);
                // Its presence leaves with it (no need to wait for expiry).
                if let Some(p) = gone
                    && state
                        .presence
                        .remove(&p)
                        .is_some_and(|p| !p.state.is_empty())
                {
                    self.outputs.push_back(Output::Event(Event::Presence {
                        doc,
                        peer: p,
                        state: Vec::new(),
                    }));
                }
            }
            RelayEvent::Message {
                room,
                from,
                payload,
            } => {
                if let Some(&doc) = self.rooms.get(&room) {
                    let route = Route {
                        link,
                        tag: Some(from),
                    };
                    if let Some(state) = self.docs.get_mut(&doc) {
                        state.sessions.entry(route).or_default();
                    }
                    return self.on_sealed(doc, route, &payload);
                }
            }
            RelayEvent::Error { code, message } => {
                self.outputs.push_back(Output::Event(Event::RelayError {
                    link,
                    code,
                    message,
                }));
            }
            RelayEvent::Pong { .. } => {}
        }
        Ok(())
    }

    fn on_sealed(&mut self, doc: DocId, route: Route, sealed: &[u8]) -> Result<(), NodeError> {
        let state = self.docs.get(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let plain = open_transport(&state.transport, &state.room, sealed)?;
        if is_gossip(&plain) {
            let now = self.now;
            if let Some(g) = self.docs.get_mut(&doc).and_then(|d| d.gossip.as_mut()) {
                // Refused gossip (stale, replayed, forged) is counted by
                // the swarm; it is no error of the link.
                let _ = g.receive_opened(now, &plain);
                self.drain_gossip(doc);
            }
            return Ok(());
        }
        let msg: SyncMessage = decode_frame(&plain, self.config.max_frame)?;
        match msg {
            SyncMessage::Have {
                from,
                vector,
                pinning,
                meshed,
            } => self.on_have(doc, route, from, vector, pinning, meshed),
            SyncMessage::Envelopes { batch, envelopes } => {
                self.on_envelopes(doc, route, &envelopes);
                if batch > 0 {
                    self.send_sync(doc, route, &SyncMessage::Ack { batch });
                }
                Ok(())
            }
            SyncMessage::Ack { batch } => {
                if let Some(s) = self
                    .docs
                    .get_mut(&doc)
                    .and_then(|d| d.sessions.get_mut(&route))
                {
                    s.on_ack(batch);
                }
                self.pump(doc, route);
                Ok(())
            }
            SyncMessage::Presence {
                from,
                seq,
                sealed,
                signature,
            } => self.on_presence(doc, from, seq, &sealed, &signature),
            SyncMessage::Signal {
                from,
                to,
                seq,
                payload,
                signature,
            } => self.on_signal_in(doc, from, to, seq, payload.into(), &signature),
        }
    }

    // ---- the mesh (gossip and direct links) ---------------------------

    /// Feeds the document's gossip swarm (if direct links are on) and
    /// carries out what it asks.
    fn gossip_input(&mut self, doc: DocId, input: gossip::Input) {
        let now = self.now;
        if let Some(g) = self.docs.get_mut(&doc).and_then(|d| d.gossip.as_mut()) {
            let _ = g.handle(now, input);
            self.drain_gossip(doc);
        }
    }

    fn drain_gossip(&mut self, doc: DocId) {
        let mut view_changed = false;
        while let Some(out) = self
            .docs
            .get_mut(&doc)
            .and_then(|d| d.gossip.as_mut())
            .and_then(SealedGossip::poll)
        {
            match out {
                SealedOutput::Send { to, bytes, .. } => {
                    // The direct link if there is one, else the relay.
                    let route = self.docs.get(&doc).and_then(|d| {
                        d.sessions
                            .iter()
                            .filter(|(_, s)| s.remote_peer == Some(to))
                            .map(|(r, _)| *r)
                            .min_by_key(|r| r.tag.is_some())
                    });
                    if let Some(route) = route {
                        self.send_sealed(doc, route, bytes);
                    }
                }
                SealedOutput::Other(gossip::Output::ViewChanged { .. }) => view_changed = true,
                // Broadcasts are not used (sync carries changes); timers
                // are read in `schedule`.
                SealedOutput::Other(_) => {}
            }
        }
        if view_changed {
            self.update_wanted(doc);
        }
    }

    /// Reports peers entering or leaving the union of the documents'
    /// active views.
    fn update_wanted(&mut self, doc: DocId) {
        let me = self.identity.peer_id();
        let mut now_wanted: Vec<PeerId> = Vec::new();
        for d in self.docs.values() {
            if let Some(g) = d.gossip.as_ref() {
                for p in g.gossip().active_view() {
                    if !now_wanted.contains(&p) {
                        now_wanted.push(p);
                    }
                }
            }
        }
        for peer in &now_wanted {
            if !self.wanted.contains(peer) {
                self.outputs.push_back(Output::Event(Event::LinkWanted {
                    doc,
                    peer: *peer,
                    initiator: me < *peer,
                }));
            }
        }
        for peer in &self.wanted {
            if !now_wanted.contains(peer) {
                self.outputs
                    .push_back(Output::Event(Event::LinkUnwanted { peer: *peer }));
            }
        }
        self.wanted = now_wanted;
    }

    /// When this replica joins or leaves the mesh of a document, its relay
    /// peers hear it at once (a `Have` says so), so they publish to the
    /// room again, or stop.
    fn announce_mesh(&mut self, doc: DocId) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let meshed = d.meshed();
        if meshed == d.meshed_announced {
            return;
        }
        d.meshed_announced = meshed;
        let relay: Vec<Route> = d
            .sessions
            .keys()
            .filter(|r| r.tag.is_some())
            .copied()
            .collect();
        for route in relay {
            self.send_have(doc, route);
        }
    }

    /// Whether a direct link to `peer` is wanted ([`Event::LinkWanted`] and
    /// no [`Event::LinkUnwanted`] since): a host answers an offer only
    /// then (protocol.md §5.3), which keeps its links within the active
    /// views.
    pub fn wants_link(&self, peer: &PeerId) -> bool {
        self.wanted.contains(peer)
    }

    /// Bytes sent to each peer of a document, directly and through relays
    /// (sessions' directed traffic; a room publish is counted once, in
    /// [`DocTraffic::published`]).
    pub fn traffic(&self, doc: DocId) -> Option<DocTraffic> {
        let d = self.docs.get(&doc)?;
        let mut peers: Vec<PeerTraffic> = Vec::new();
        for (route, s) in &d.sessions {
            let Some(peer) = s.remote_peer else { continue };
            let i = match peers.iter().position(|t| t.peer == peer) {
                Some(i) => i,
                None => {
                    peers.push(PeerTraffic {
                        peer,
                        direct: false,
                        bytes_direct: 0,
                        bytes_relay: 0,
                    });
                    peers.len() - 1
                }
            };
            let t = &mut peers[i];
            if route.tag.is_none() {
                t.direct = true;
                t.bytes_direct += s.bytes_out;
            } else {
                t.bytes_relay += s.bytes_out;
            }
        }
        Some(DocTraffic {
            published: d.published_bytes,
            peers,
        })
    }

    // ---- signaling ---------------------------------------------------

    fn on_signal_out(
        &mut self,
        doc: DocId,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> Result<(), NodeError> {
        if payload.len() > MAX_SIGNAL {
            return Err(WireError::TooLarge {
                len: payload.len(),
                max: MAX_SIGNAL,
            }
            .into());
        }
        let d = self.docs.get(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        // Through a relay if possible: signaling is what repairs a failing
        // direct link, so it must not depend on one.
        let route = d
            .sessions
            .iter()
            .filter(|(_, s)| s.remote_peer == Some(peer))
            .map(|(r, _)| *r)
            .min_by_key(|r| r.tag.is_none())
            .ok_or(NodeError::NoRouteTo(peer))?;
        let room = d.room;
        let me = self.identity.peer_id();
        let seq = match self.signal_seq {
            Some(s) => s + 1,
            None => ((self.rng.u64() >> 32) << 32) + 1,
        };
        self.signal_seq = Some(seq);
        let signature = sign_digest(
            &self.identity,
            &signal_digest(&room, &me, &peer, seq, &payload),
        );
        let msg = SyncMessage::Signal {
            from: me,
            to: peer,
            seq,
            payload: ByteVec::from(payload),
            signature: ByteVec::from(signature.to_vec()),
        };
        self.send_sync(doc, route, &msg);
        Ok(())
    }

    fn on_signal_in(
        &mut self,
        doc: DocId,
        from: PeerId,
        to: PeerId,
        seq: u64,
        payload: Vec<u8>,
        signature: &[u8],
    ) -> Result<(), NodeError> {
        if to != self.identity.peer_id() {
            // Not ours (a relay that misroutes): nothing to do with it.
            return Ok(());
        }
        let d = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        // An older message of the same incarnation (reordered or replayed) is dropped.
        if let Some(last) = d.signals_from.get(&from)
            && *last >> 32 == seq >> 32
            && seq <= *last
        {
            return Ok(());
        }
        verify_digest(
            &from,
            &signal_digest(&d.room, &from, &to, seq, &payload),
            signature,
        )?;
        if !d.signals_from.contains_key(&from) && d.signals_from.len() >= MAX_SIGNAL_PEERS {
            // Bounded: forget the lowest peer id (only replay detection
            // for it is lost, not the signal).
            d.signals_from.pop_first();
        }
        d.signals_from.insert(from, seq);
        self.outputs.push_back(Output::Event(Event::Signal {
            doc,
            peer: from,
            payload,
        }));
        Ok(())
    }

    // ---- presence ----------------------------------------------------

    fn on_set_presence(&mut self, doc: DocId, state: Vec<u8>) -> Result<(), NodeError> {
        if state.len() > MAX_PRESENCE_STATE {
            return Err(CryptoError::TooLarge {
                len: state.len(),
                max: MAX_PRESENCE_STATE,
            }
            .into());
        }
        let d = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        if d.keys.is_none() {
            return Err(NodeError::Blind(doc));
        }
        match d.own_presence.as_mut() {
            Some(own) => {
                own.state = state;
                own.pending = true;
            }
            None if state.is_empty() => return Ok(()),
            None => {
                d.own_presence = Some(OwnPresence {
                    state,
                    last_sent: None,
                    pending: true,
                })
            }
        }
        self.presence_if_due(doc);
        Ok(())
    }

    /// Sends this replica's presence in `doc` if a message is due now.
    fn presence_if_due(&mut self, doc: DocId) {
        let now = self.now;
        let due = self
            .docs
            .get(&doc)
            .and_then(|d| d.own_presence.as_ref())
            .is_some_and(|o| o.next_send().is_none_or(|t| t <= now));
        if due {
            self.send_presence(doc);
        }
    }

    fn send_presence(&mut self, doc: DocId) {
        let me = self.identity.peer_id();
        let now = self.now;
        let seq = match self.presence_seq {
            Some(s) => s + 1,
            None => ((self.rng.u64() >> 32) << 32) + 1,
        };
        self.presence_seq = Some(seq);
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let (Some(keys), Some(own)) = (d.keys.as_ref(), d.own_presence.as_mut()) else {
            return;
        };
        own.last_sent = Some(now);
        own.pending = false;
        let sealed = seal_transport(keys.presence(), &d.room, &own.state, &mut self.rng);
        let signature = sign_digest(&self.identity, &presence_digest(&d.room, &me, seq, &sealed));
        if own.state.is_empty() {
            // Left: nothing more to refresh.
            d.own_presence = None;
        }
        let msg = SyncMessage::Presence {
            from: me,
            seq,
            sealed: ByteVec::from(sealed),
            signature: ByteVec::from(signature.to_vec()),
        };
        self.broadcast(doc, &msg);
    }

    /// The relay links where `doc`'s room must be published to: joined,
    /// with a member that has no direct link to this replica (or that has
    /// not said who it is yet). When every member of a room is linked
    /// directly, the direct links carry everything and the relay only
    /// stands by.
    fn relay_links_needed(&self, doc: DocId) -> Vec<LinkId> {
        let Some(d) = self.docs.get(&doc) else {
            return Vec::new();
        };
        let direct = d.direct_peers();
        self.links
            .iter()
            .filter(|(_, l)| matches!(l.rooms.get(&d.room), Some(Membership::Joined(_))))
            .filter(|(id, _)| {
                let mut members = d.sessions.iter().filter(|(r, _)| r.link == **id);
                // A member is reached without the relay if it is linked
                // directly, or if both of us are in the mesh (a change
                // travels along the direct links; anti-entropy over the
                // relay repairs what the mesh missed).
                let meshed = d.meshed();
                let all_direct = members.all(|(_, s)| {
                    s.remote_peer.is_some_and(|p| direct.contains(&p))
                        || (meshed && s.remote_meshed)
                });
                // A room where no one else is known is published to too:
                // its members may not have introduced themselves yet.
                !all_direct || !d.sessions.keys().any(|r| r.link == **id)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Publishes a sync message (encoded, not sealed) to `doc`'s room on
    /// each of `links`; whether anything was sent.
    fn publish(&mut self, doc: DocId, links: &[LinkId], plain: &[u8]) -> bool {
        let mut frames = Vec::with_capacity(links.len());
        if let Some(d) = self.docs.get_mut(&doc) {
            for link in links {
                let sealed = seal_transport(&d.transport, &d.room, plain, &mut self.rng);
                d.published_bytes += sealed.len() as u64;
                let bytes = encode_frame(&RelayRequest::Publish {
                    room: d.room,
                    payload: ByteVec::from(sealed),
                });
                frames.push((*link, bytes));
            }
        }
        let sent = !frames.is_empty();
        for (link, bytes) in frames {
            self.emit(link, bytes);
        }
        sent
    }

    /// Sends `msg` to every peer of `doc`: one publish per relay room
    /// that needs it ([`Node::relay_links_needed`]), and each direct link.
    fn broadcast(&mut self, doc: DocId, msg: &SyncMessage) {
        let Some(d) = self.docs.get(&doc) else {
            return;
        };
        let direct: Vec<Route> = d
            .sessions
            .keys()
            .filter(|r| r.tag.is_none())
            .copied()
            .collect();
        let links = self.relay_links_needed(doc);
        self.publish(doc, &links, &encode_frame(msg));
        for r in direct {
            self.send_sync(doc, r, msg);
        }
    }

    fn on_presence(
        &mut self,
        doc: DocId,
        from: PeerId,
        seq: u64,
        sealed: &[u8],
        signature: &[u8],
    ) -> Result<(), NodeError> {
        if from == self.identity.peer_id() {
            return Ok(());
        }
        let now = self.now;
        let d = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        // A blind pinning node cannot read presence, and keeps none.
        let Some(keys) = d.keys.as_ref() else {
            return Ok(());
        };
        let max = MAX_PRESENCE_STATE + 12 + 16;
        if sealed.len() > max {
            return Err(CryptoError::TooLarge {
                len: sealed.len(),
                max,
            }
            .into());
        }
        // An older message of the same incarnation (reordered or replayed) is dropped.
        if let Some(p) = d.presence.get(&from)
            && p.seq >> 32 == seq >> 32
            && seq <= p.seq
        {
            return Ok(());
        }
        verify_digest(
            &from,
            &presence_digest(&d.room, &from, seq, sealed),
            signature,
        )?;
        let state = open_transport(keys.presence(), &d.room, sealed)?;
        if state.len() > MAX_PRESENCE_STATE {
            return Err(CryptoError::TooLarge {
                len: state.len(),
                max: MAX_PRESENCE_STATE,
            }
            .into());
        }
        if state.is_empty() {
            if d.presence
                .remove(&from)
                .is_some_and(|p| !p.state.is_empty())
            {
                self.outputs.push_back(Output::Event(Event::Presence {
                    doc,
                    peer: from,
                    state,
                }));
            }
            return Ok(());
        }
        if !d.presence.contains_key(&from) && d.presence.len() >= MAX_PRESENCE_PEERS {
            return Ok(());
        }
        d.presence.insert(
            from,
            PeerPresence {
                state: state.clone(),
                seq,
                heard: now,
            },
        );
        self.outputs.push_back(Output::Event(Event::Presence {
            doc,
            peer: from,
            state,
        }));
        Ok(())
    }

    /// Presence work of a tick: sends what is due, forgets peers not heard.
    fn presence_tick(&mut self, doc: DocId) {
        let now = self.now;
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let expired: Vec<PeerId> = d
            .presence
            .iter()
            .filter(|(_, p)| now.since(p.heard) >= PRESENCE_EXPIRY_MS)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            d.presence.remove(&peer);
            self.outputs.push_back(Output::Event(Event::Presence {
                doc,
                peer,
                state: Vec::new(),
            }));
        }
        self.presence_if_due(doc);
    }

    fn on_have(
        &mut self,
        doc: DocId,
        route: Route,
        from: PeerId,
        vector: VersionVector,
        pinning: bool,
        meshed: bool,
    ) -> Result<(), NodeError> {
        let me = self.identity.peer_id();
        let state = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let session = state.sessions.entry(route).or_default();
        let first = !session.have_received();
        session.remote_meshed = meshed;
        if first && let Some(own) = state.own_presence.as_mut() {
            // A new peer hears who is here at the next slot, not the next refresh.
            own.pending = true;
        }
        let pinned_upto = vector.get(&me);
        session.on_have(from, vector, pinning);
        if first {
            self.outputs.push_back(Output::Event(Event::PeerSeen {
                doc,
                peer: from,
                pinning,
            }));
        }
        if pinning {
            let e = state.pinned_by.entry(from).or_insert(0);
            *e = (*e).max(pinned_upto);
            self.report_stored(doc);
        }
        if first {
            self.gossip_input(doc, gossip::Input::PeerMet { peer: from });
            if route.tag.is_none() {
                // A direct link said who is at its end: we may have
                // joined the mesh.
                self.announce_mesh(doc);
            }
        }
        self.pump(doc, route);
        if first {
            // Our own first `Have` may have been dropped (the peer opened
            // the document after it arrived): answer once, so the peer
            // learns our vector now rather than at the next anti-entropy
            // round. Only the first: two peers never bounce `Have`s.
            self.send_have(doc, route);
        }
        Ok(())
    }

    fn on_envelopes(&mut self, doc: DocId, route: Route, envelopes: &[ByteVec]) {
        let mut changes = Vec::new();
        let mut ready_all = Vec::new();
        for bytes in envelopes {
            self.stats.envelopes_received += 1;
            match self.accept_envelope(doc, bytes) {
                Ok(ready) => {
                    if let Some(state) = self.docs.get_mut(&doc) {
                        for env in &ready {
                            if let Some(keys) = state.keys.as_mut() {
                                match keys.decrypt_verified(env) {
                                    Ok(c) => changes.push(c),
                                    Err(e) => {
                                        self.outputs.push_back(Output::Event(Event::Rejected {
                                            doc,
                                            reason: e.into(),
                                        }))
                                    }
                                }
                            }
                        }
                    }
                    ready_all.extend(ready);
                }
                Err(reason) => {
                    self.stats.envelopes_rejected += 1;
                    self.outputs
                        .push_back(Output::Event(Event::Rejected { doc, reason }));
                }
            }
        }
        if !changes.is_empty() {
            self.outputs.push_back(Output::Apply { doc, changes });
        }
        if !ready_all.is_empty() {
            self.persist_remote(doc, ready_all);
            // Forward along direct links (a mesh); relay rooms already saw
            // the push, and anti-entropy repairs the rest.
            let direct: Vec<Route> = self
                .docs
                .get(&doc)
                .map(|d| {
                    d.sessions
                        .keys()
                        .filter(|r| r.tag.is_none() && **r != route)
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for r in direct {
                self.pump(doc, r);
            }
        }
    }

    /// Decodes, verifies and inserts one envelope; returns what became ready.
    fn accept_envelope(&mut self, doc: DocId, bytes: &[u8]) -> Result<Vec<Envelope>, NodeError> {
        let env = Envelope::decode(bytes)?;
        let state = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        if env.header().room != state.room {
            return Err(CryptoError::WrongRoom.into());
        }
        if env.author() == self.identity.peer_id() && env.seq() >= state.next_local_seq {
            // Our own identity at a position we never wrote: a clone of this
            // identity elsewhere, or lost local state. Refuse rather than
            // later overwrite it with different content.
            return Err(NodeError::OwnSeqConflict { seq: env.seq() });
        }
        if state.log.get(&env.author(), env.seq()).map(|e| e.id()) == Some(env.id()) {
            self.stats.envelopes_duplicate += 1;
            return Ok(Vec::new());
        }
        self.verifier.verify(&env)?;
        match state.log.insert(env) {
            Inserted::New { ready } => Ok(ready),
            Inserted::Duplicate => {
                self.stats.envelopes_duplicate += 1;
                Ok(Vec::new())
            }
            Inserted::Equivocation { author, seq } => {
                self.outputs
                    .push_back(Output::Event(Event::Equivocation { doc, author, seq }));
                Ok(Vec::new())
            }
            Inserted::WrongRoom => Err(CryptoError::WrongRoom.into()),
        }
    }

    // ---- local changes and persistence -------------------------------

    fn on_local_change(&mut self, doc: DocId, change: &[u8]) -> Result<(), NodeError> {
        let state = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let keys = state.keys.as_mut().ok_or(NodeError::Blind(doc))?;
        let seq = state.next_local_seq;
        let env = keys.seal(
            &self.identity,
            EnvelopeKind::Change,
            seq,
            change,
            &mut self.rng,
        )?;
        state.next_local_seq += 1;
        let batch = state.next_persist_batch;
        state.next_persist_batch += 1;
        state.unsaved_local.push_back((batch, env.clone()));
        self.outputs.push_back(Output::Persist {
            doc,
            batch,
            records: alloc::vec![env],
        });
        Ok(())
    }

    fn on_local_changes(&mut self, doc: DocId, changes: &[Vec<u8>]) -> Result<(), NodeError> {
        let state = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let keys = state.keys.as_mut().ok_or(NodeError::Blind(doc))?;
        // Seal everything first: an error leaves no seq used.
        let mut records = Vec::with_capacity(changes.len());
        let mut seq = state.next_local_seq;
        for chunk in changes.chunks(MAX_SEAL_BATCH) {
            let envs = keys.seal_batch(
                &self.identity,
                EnvelopeKind::Change,
                seq,
                chunk,
                &mut self.rng,
            )?;
            seq += envs.len() as u64;
            records.extend(envs);
        }
        if records.is_empty() {
            return Ok(());
        }
        state.next_local_seq = seq;
        let batch = state.next_persist_batch;
        state.next_persist_batch += 1;
        for env in &records {
            state.unsaved_local.push_back((batch, env.clone()));
        }
        self.outputs.push_back(Output::Persist {
            doc,
            batch,
            records,
        });
        Ok(())
    }

    fn persist_remote(&mut self, doc: DocId, records: Vec<Envelope>) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        let batch = state.next_persist_batch;
        state.next_persist_batch += 1;
        for env in &records {
            state.unsaved_remote.push_back((batch, env.clone()));
        }
        self.outputs.push_back(Output::Persist {
            doc,
            batch,
            records,
        });
    }

    fn on_persisted(&mut self, doc: DocId, batch: u64) -> Result<(), NodeError> {
        let me = self.identity.peer_id();
        let state = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let mut saved = Vec::new();
        while let Some((b, _)) = state.unsaved_local.front() {
            if *b > batch {
                break;
            }
            if let Some((_, env)) = state.unsaved_local.pop_front() {
                saved.push(env);
            }
        }
        let mut remote_advanced = false;
        while let Some((b, _)) = state.unsaved_remote.front() {
            if *b > batch {
                break;
            }
            if let Some((_, env)) = state.unsaved_remote.pop_front()
                && env.seq() > state.persisted.get(&env.author())
            {
                state.persisted.set(env.author(), env.seq());
                remote_advanced = true;
            }
        }
        if let Some(last) = saved.last() {
            let upto = last.seq();
            for env in &saved {
                state.log.insert(env.clone());
            }
            state.persisted.set(me, upto);
            self.outputs
                .push_back(Output::Event(Event::SavedLocally { doc, upto }));
            self.push_live(doc, saved);
        }
        if remote_advanced && self.config.pinning {
            // Tell peers at once, so authors learn `stored-remotely`.
            let routes: Vec<Route> = self
                .docs
                .get(&doc)
                .map(|d| d.sessions.keys().copied().collect())
                .unwrap_or_default();
            for r in routes {
                self.send_have(doc, r);
            }
        }
        Ok(())
    }

    /// Sends freshly saved local envelopes to every room and direct peer.
    fn push_live(&mut self, doc: DocId, envs: Vec<Envelope>) {
        let me = self.identity.peer_id();
        let Some(upto) = envs.last().map(Envelope::seq) else {
            return;
        };
        let mut sent = false;
        // Relay rooms: one publish reaches every member (unless each of
        // them has a direct link, which carries it below).
        let relay_links = self.relay_links_needed(doc);
        for chunk in chunk_by_bytes(&envs, self.config.sync.batch_bytes) {
            let msg = SyncMessage::Envelopes {
                batch: 0,
                envelopes: chunk
                    .iter()
                    .map(|e| ByteVec::from(e.bytes().to_vec()))
                    .collect(),
            };
            sent |= self.publish(doc, &relay_links, &encode_frame(&msg));
        }
        if let Some(state) = self.docs.get_mut(&doc) {
            for (route, s) in state.sessions.iter_mut() {
                if route.tag.is_some() && relay_links.contains(&route.link) {
                    for e in &envs {
                        s.pushed(me, e.seq());
                    }
                }
            }
        }
        // Direct peers: their streams carry it (flow-controlled).
        let direct: Vec<Route> = self
            .docs
            .get(&doc)
            .map(|d| {
                d.sessions
                    .keys()
                    .filter(|r| r.tag.is_none())
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for r in direct {
            self.pump(doc, r);
        }
        if sent {
            self.note_sent(doc, upto);
        }
    }

    fn note_sent(&mut self, doc: DocId, upto: u64) {
        if let Some(state) = self.docs.get_mut(&doc)
            && upto > state.sent_upto
        {
            state.sent_upto = upto;
            self.outputs
                .push_back(Output::Event(Event::Sent { doc, upto }));
        }
    }

    fn report_stored(&mut self, doc: DocId) {
        let Some(state) = self.docs.get_mut(&doc) else {
            return;
        };
        let mut held: Vec<u64> = state
            .pinned_by
            .values()
            .copied()
            .filter(|s| *s > 0)
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        for (i, upto) in held.iter().enumerate() {
            let before = state.stored_reported.get(i).copied().unwrap_or(0);
            if *upto > before {
                self.outputs.push_back(Output::Event(Event::StoredRemotely {
                    doc,
                    upto: *upto,
                    copies: i + 1,
                }));
            }
        }
        state.stored_reported = held;
    }

    // ---- streaming and timers ---------------------------------------

    /// Sends stream batches along `route` while its window allows.
    fn pump(&mut self, doc: DocId, route: Route) {
        let me = self.identity.peer_id();
        let now = self.now;
        loop {
            let Some(state) = self.docs.get_mut(&doc) else {
                return;
            };
            if state.standing_by(route) {
                return;
            }
            let Some(session) = state.sessions.get_mut(&route) else {
                return;
            };
            let Some((batch, envs)) = session.next_batch(&state.log, &self.config.sync, now) else {
                return;
            };
            let own_upto = envs
                .iter()
                .filter(|e| e.author() == me)
                .map(Envelope::seq)
                .max();
            let msg = SyncMessage::Envelopes {
                batch,
                envelopes: envs
                    .iter()
                    .map(|e| ByteVec::from(e.bytes().to_vec()))
                    .collect(),
            };
            self.send_sync(doc, route, &msg);
            if let Some(upto) = own_upto {
                self.note_sent(doc, upto);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now;
        let swarms: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(_, d)| {
                d.gossip
                    .as_ref()
                    .is_some_and(|g| g.gossip().next_wake().is_some_and(|t| t <= now))
            })
            .map(|(doc, _)| *doc)
            .collect();
        for doc in swarms {
            self.gossip_input(doc, gossip::Input::Tick);
        }
        let mut rejoin = Vec::new();
        for (link, l) in self.links.iter_mut() {
            for (room, m) in l.rooms.iter_mut() {
                if let Membership::Joining(since) = m
                    && now.since(*since) >= JOIN_RETRY_MS
                {
                    *m = Membership::Joining(now);
                    rejoin.push((*link, *room));
                }
            }
        }
        for (link, room) in rejoin {
            self.send_relay(link, &RelayRequest::Join { room });
        }
        let docs: Vec<DocId> = self.docs.keys().copied().collect();
        for doc in docs {
            let mut have_due = Vec::new();
            let mut rewound = Vec::new();
            if let Some(state) = self.docs.get_mut(&doc) {
                for (route, s) in state.sessions.iter_mut() {
                    if s.have_due(now, &self.config.sync) {
                        have_due.push(*route);
                    }
                    if s.check_ack_timeout(now, &self.config.sync) {
                        rewound.push(*route);
                    }
                }
            }
            for r in have_due {
                self.send_have(doc, r);
            }
            for r in rewound {
                self.pump(doc, r);
            }
            self.presence_tick(doc);
        }
    }

    /// Asks for a tick at the earliest session deadline, once per change.
    fn schedule(&mut self) {
        let sessions = self
            .docs
            .values()
            .flat_map(|d| d.sessions.values())
            .filter_map(|s| s.next_deadline(&self.config.sync));
        let joins = self
            .links
            .values()
            .flat_map(|l| l.rooms.values())
            .filter_map(|m| match m {
                Membership::Joining(since) => Some(since.plus(JOIN_RETRY_MS)),
                Membership::Joined(_) => None,
            });
        let presence = self.docs.values().flat_map(|d| {
            let own = d.own_presence.as_ref().and_then(OwnPresence::next_send);
            let expiry = d
                .presence
                .values()
                .map(|p| p.heard.plus(PRESENCE_EXPIRY_MS))
                .min();
            own.into_iter().chain(expiry)
        });
        let swarms = self
            .docs
            .values()
            .filter_map(|d| d.gossip.as_ref().and_then(|g| g.gossip().next_wake()));
        let next = sessions.chain(joins).chain(presence).chain(swarms).min();
        if next != self.wake_at {
            self.wake_at = next;
            if let Some(t) = next {
                self.outputs.push_back(Output::WakeAt(t));
            }
        }
    }
}

impl OwnPresence {
    /// When the next message is due (`None`: now, it was never sent).
    fn next_send(&self) -> Option<Timestamp> {
        let last = self.last_sent?;
        Some(last.plus(if self.pending {
            PRESENCE_MIN_INTERVAL_MS
        } else {
            PRESENCE_REFRESH_MS
        }))
    }
}

/// Splits envelopes into runs of at most `max` bytes (one always fits).
fn chunk_by_bytes(envs: &[Envelope], max: usize) -> Vec<&[Envelope]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in envs.iter().enumerate() {
        if i > start && bytes + e.len() > max {
            out.push(&envs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += e.len();
    }
    if start < envs.len() {
        out.push(&envs[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const LINK: LinkId = LinkId(1);

    fn node(seed: u8) -> Node {
        let mut rng = Rng::from_seed([seed; 32]);
        Node::new(
            Identity::generate(&mut rng),
            NodeConfig::default(),
            rng.array(),
        )
    }

    /// Moves every frame `from` sends to `to` (over LINK); returns the
    /// frames moved and `to`'s presence events.
    fn deliver(now: Timestamp, from: &mut Node, to: &mut Node) -> (Vec<Vec<u8>>, Vec<Event>) {
        let mut frames = Vec::new();
        while let Some(out) = from.poll() {
            if let Output::Send { bytes, .. } = out {
                frames.push(bytes);
            }
        }
        for bytes in &frames {
            to.handle(
                now,
                Input::Received {
                    link: LINK,
                    bytes: bytes.clone(),
                },
            )
            .unwrap();
        }
        let mut events = Vec::new();
        while let Some(out) = to.poll() {
            if let Output::Event(e @ Event::Presence { .. }) = out {
                events.push(e);
            }
        }
        (frames, events)
    }

    /// Two nodes holding one document over a direct link, past the first `Have`s.
    fn pair(doc: DocId, key: &DocKey) -> (Node, Node) {
        linked(
            doc,
            (node(1), DocAccess::Full(key.clone())),
            (node(2), DocAccess::Full(key.clone())),
        )
    }

    /// Two nodes with `doc` open (each with its access), linked directly,
    /// after their first exchanges.
    fn linked(doc: DocId, a: (Node, DocAccess), b: (Node, DocAccess)) -> (Node, Node) {
        let now = Timestamp(0);
        let ((mut a, a_access), (mut b, b_access)) = (a, b);
        for (n, access) in [(&mut a, a_access), (&mut b, b_access)] {
            n.open_doc(now, doc, access, []).unwrap();
            n.handle(
                now,
                Input::LinkUp {
                    link: LINK,
                    kind: LinkKind::Direct,
                },
            )
            .unwrap();
        }
        for _ in 0..3 {
            deliver(now, &mut a, &mut b);
            deliver(now, &mut b, &mut a);
        }
        (a, b)
    }

    fn presence(doc: DocId, peer: PeerId, state: &[u8]) -> Event {
        Event::Presence {
            doc,
            peer,
            state: state.to_vec(),
        }
    }

    #[test]
    fn presence_is_sealed_signed_rate_limited_refreshed_and_expires() {
        let doc = DocId([7; 16]);
        let key = DocKey::from_bytes([8; 32]);
        let (mut a, mut b) = pair(doc, &key);
        let pa = a.peer_id();
        let t = Timestamp(1_000);
        let state = br##"{"name":"Ada","colour":"#2f6b4f"}"##;
        a.handle(
            t,
            Input::SetPresence {
                doc,
                state: state.to_vec(),
            },
        )
        .unwrap();
        let (frames, events) = deliver(t, &mut a, &mut b);
        assert_eq!(events, vec![presence(doc, pa, state)]);
        assert_eq!(b.presence(doc), vec![(pa, state.to_vec())]);
        // Sealed: the state is in no frame in clear.
        assert!(frames.iter().all(|f| !f.windows(3).any(|w| w == b"Ada")));

        // Rate limit: two more states within the second send nothing now;
        // the latest goes out one second after the last message.
        for s in [&b"one"[..], b"two"] {
            a.handle(
                t.plus(100),
                Input::SetPresence {
                    doc,
                    state: s.to_vec(),
                },
            )
            .unwrap();
        }
        let (frames, _) = deliver(t.plus(100), &mut a, &mut b);
        assert!(frames.is_empty(), "no message within the interval");
        a.handle(t.plus(PRESENCE_MIN_INTERVAL_MS), Input::Tick)
            .unwrap();
        let (frames, events) = deliver(t.plus(PRESENCE_MIN_INTERVAL_MS), &mut a, &mut b);
        assert_eq!(frames.len(), 1);
        assert_eq!(events, vec![presence(doc, pa, b"two")]);

        // A replayed (older) message is dropped; a tampered one is refused.
        let t2 = t.plus(PRESENCE_MIN_INTERVAL_MS);
        b.handle(
            t2,
            Input::Received {
                link: LINK,
                bytes: frames[0].clone(),
            },
        )
        .unwrap();
        assert!(
            !core::iter::from_fn(|| b.poll())
                .any(|o| matches!(o, Output::Event(Event::Presence { .. })))
        );
        assert_eq!(b.presence(doc), vec![(pa, b"two".to_vec())]);

        // Refreshed every 10 s while set.
        let t3 = t2.plus(PRESENCE_REFRESH_MS);
        a.handle(t3, Input::Tick).unwrap();
        let (frames, events) = deliver(t3, &mut a, &mut b);
        assert_eq!(frames.len(), 1);
        assert_eq!(events, vec![presence(doc, pa, b"two")]);

        // Not heard for 30 s: forgotten, with an event saying so.
        let t4 = t3.plus(PRESENCE_EXPIRY_MS);
        b.handle(t4, Input::Tick).unwrap();
        let gone: Vec<Event> = core::iter::from_fn(|| b.poll())
            .filter_map(|o| match o {
                Output::Event(e @ Event::Presence { .. }) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(gone, vec![presence(doc, pa, b"")]);
        assert!(b.presence(doc).is_empty());

        // Back, then leaving explicitly.
        a.handle(t4, Input::Tick).unwrap();
        let (_, events) = deliver(t4, &mut a, &mut b);
        assert_eq!(events, vec![presence(doc, pa, b"two")]);
        let t5 = t4.plus(PRESENCE_MIN_INTERVAL_MS);
        a.handle(
            t5,
            Input::SetPresence {
                doc,
                state: Vec::new(),
            },
        )
        .unwrap();
        let (_, events) = deliver(t5, &mut a, &mut b);
        assert_eq!(events, vec![presence(doc, pa, b"")]);
        assert!(b.presence(doc).is_empty());
        // Nothing more to refresh.
        a.handle(t5.plus(PRESENCE_REFRESH_MS), Input::Tick).unwrap();
        let (frames, _) = deliver(t5.plus(PRESENCE_REFRESH_MS), &mut a, &mut b);
        assert!(frames.is_empty());
    }

    #[test]
    fn presence_with_a_bad_signature_or_another_key_is_refused() {
        let doc = DocId([7; 16]);
        let key = DocKey::from_bytes([8; 32]);
        let (mut a, mut b) = pair(doc, &key);
        let t = Timestamp(1_000);
        let room = a.room(doc).unwrap();
        let transport = transport_cipher(&doc, &room);
        let mut rng = Rng::from_seed([9; 32]);
        // A presence message signed by A but altered after signing.
        a.handle(
            t,
            Input::SetPresence {
                doc,
                state: b"Ada".to_vec(),
            },
        )
        .unwrap();
        let frame = core::iter::from_fn(|| a.poll())
            .find_map(|o| match o {
                Output::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .unwrap();
        let direct: DirectFrame = decode_frame(&frame, MAX_PRESENCE_STATE * 64).unwrap();
        let plain = open_transport(&transport, &room, &direct.sealed).unwrap();
        let SyncMessage::Presence {
            from,
            seq,
            sealed,
            signature,
        } = decode_frame(&plain, 1 << 16).unwrap()
        else {
            panic!("not a presence message");
        };
        let resend = |b: &mut Node, msg: &SyncMessage, rng: &mut Rng| {
            let bytes = encode_frame(&DirectFrame {
                room,
                sealed: ByteVec::from(seal_transport(&transport, &room, &encode_frame(msg), rng)),
            });
            b.handle(t, Input::Received { link: LINK, bytes })
        };
        let mut tampered = sealed.to_vec();
        tampered[20] ^= 1;
        let bad = SyncMessage::Presence {
            from,
            seq,
            sealed: ByteVec::from(tampered),
            signature: signature.clone(),
        };
        assert_eq!(
            resend(&mut b, &bad, &mut rng),
            Err(NodeError::Crypto(CryptoError::BadSignature))
        );
        // Signed correctly by someone holding only the transport key (a
        // blind node), sealed under another presence key: refused.
        let other = crate::crypto::presence_cipher(&DocKey::from_bytes([1; 32]), &doc);
        let sealed = seal_transport(&other, &room, b"Eve", &mut rng);
        let eve = Identity::generate(&mut rng);
        let seq = 1;
        let signature = sign_digest(&eve, &presence_digest(&room, &eve.peer_id(), seq, &sealed));
        let forged = SyncMessage::Presence {
            from: eve.peer_id(),
            seq,
            sealed: ByteVec::from(sealed),
            signature: ByteVec::from(signature.to_vec()),
        };
        assert_eq!(
            resend(&mut b, &forged, &mut rng),
            Err(NodeError::Crypto(CryptoError::TransportOpen))
        );
        assert!(b.presence(doc).is_empty());
        assert!(
            !core::iter::from_fn(|| b.poll())
                .any(|o| matches!(o, Output::Event(Event::Presence { .. })))
        );
    }

    #[test]
    fn a_blind_node_forwards_nothing_it_cannot_read_and_keeps_no_presence() {
        let doc = DocId([7; 16]);
        let key = DocKey::from_bytes([8; 32]);
        let now = Timestamp(0);
        let room = crate::crypto::room_id(&key, &doc);
        let (mut a, mut pin) = linked(
            doc,
            (node(1), DocAccess::Full(key.clone())),
            (node(3), DocAccess::Blind(room)),
        );
        a.handle(
            now,
            Input::SetPresence {
                doc,
                state: b"Ada".to_vec(),
            },
        )
        .unwrap();
        let (frames, events) = deliver(now, &mut a, &mut pin);
        assert_eq!(frames.len(), 1);
        assert!(events.is_empty());
        assert!(pin.presence(doc).is_empty());
        assert_eq!(
            pin.handle(
                now,
                Input::SetPresence {
                    doc,
                    state: b"x".to_vec()
                }
            ),
            Err(NodeError::Blind(doc))
        );
    }

    /// The relay of one room of two nodes (tags 1 and 2), played by the
    /// test: forwards `Publish` and `Send` as `Message`, answers `Join`.
    struct FakeRelay {
        room: RoomId,
        /// Frames as the relay forwarded them.
        seen: Vec<Vec<u8>>,
        /// What each node (tag 1, 2) sent that is not forwarded yet.
        stash: [Vec<Output>; 2],
        /// Frames on the direct link ([`DIRECT`]) between the two: moved
        /// from one to the other, or dropped while `cut`.
        direct_frames: usize,
        cut: bool,
        /// Changes each node was handed to apply (tag 1, 2).
        applied: [Vec<Vec<u8>>; 2],
    }

    /// The direct link of [`FakeRelay`]'s two nodes.
    const DIRECT: LinkId = LinkId(2);

    impl FakeRelay {
        /// Moves one round of frames between `a` (tag 1) and `b` (tag 2).
        fn round(&mut self, now: Timestamp, a: &mut Node, b: &mut Node) -> Vec<Event> {
            let mut events = Vec::new();
            self.leg(now, 1, a, b, &mut events);
            self.leg(now, 2, b, a, &mut events);
            events
        }

        /// Moves what `from` (tag `from_tag`) sent; `to`'s events go to `events`.
        fn leg(
            &mut self,
            now: Timestamp,
            from_tag: u64,
            from: &mut Node,
            to: &mut Node,
            events: &mut Vec<Event>,
        ) {
            let mut stash = core::mem::take(&mut self.stash[from_tag as usize - 1]);
            stash.extend(core::iter::from_fn(|| from.poll()));
            let mut requests = Vec::new();
            for out in stash {
                match out {
                    Output::Send { link: DIRECT, .. } if self.cut => {}
                    Output::Send {
                        link: DIRECT,
                        bytes,
                    } => {
                        self.direct_frames += 1;
                        // A frame sent before the other end closed the link is lost.
                        let input = Input::Received {
                            link: DIRECT,
                            bytes,
                        };
                        match to.handle(now, input) {
                            Ok(()) | Err(NodeError::UnknownLink(DIRECT)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Output::Send { bytes, .. } => requests.push(
                        decode_frame::<RelayRequest>(&bytes, crate::wire::MAX_FRAME).unwrap(),
                    ),
                    Output::Persist { doc, batch, .. } => {
                        from.handle(now, Input::Persisted { doc, batch }).unwrap();
                    }
                    _ => {}
                }
            }
            for req in requests {
                let (ev, to_sender) = match req {
                    RelayRequest::Join { room } => {
                        let peers = if from_tag == 2 {
                            vec![PeerTag(1)]
                        } else {
                            vec![]
                        };
                        let you = PeerTag(from_tag);
                        (RelayEvent::Joined { room, you, peers }, true)
                    }
                    RelayRequest::Publish { room, payload }
                    | RelayRequest::Send { room, payload, .. } => (
                        RelayEvent::Message {
                            room,
                            from: PeerTag(from_tag),
                            payload,
                        },
                        false,
                    ),
                    _ => continue,
                };
                let bytes = encode_frame(&ev);
                self.seen.push(bytes.clone());
                let target: &mut Node = if to_sender { &mut *from } else { &mut *to };
                target
                    .handle(now, Input::Received { link: LINK, bytes })
                    .unwrap();
                if from_tag == 2 && to_sender {
                    // The first member hears of the second.
                    let ev = RelayEvent::PeerJoined {
                        room: self.room,
                        peer: PeerTag(2),
                    };
                    to.handle(
                        now,
                        Input::Received {
                            link: LINK,
                            bytes: encode_frame(&ev),
                        },
                    )
                    .unwrap();
                }
            }
            let to_tag = 3 - from_tag as usize;
            while let Some(out) = to.poll() {
                match out {
                    Output::Event(e) => events.push(e),
                    Output::Apply { changes, .. } => self.applied[to_tag - 1].extend(changes),
                    out @ (Output::Send { .. } | Output::Persist { .. }) => {
                        self.stash[to_tag - 1].push(out)
                    }
                    _ => {}
                }
            }
        }
    }

    /// Two nodes holding `doc` in one relay room, after their first
    /// exchanges; the relay has recorded every frame it forwarded.
    fn via_relay(doc: DocId, key: &DocKey) -> (Node, Node, FakeRelay) {
        let now = Timestamp(0);
        let (mut a, mut b) = (node(1), node(2));
        for n in [&mut a, &mut b] {
            n.open_doc(now, doc, DocAccess::Full(key.clone()), [])
                .unwrap();
            n.handle(
                now,
                Input::LinkUp {
                    link: LINK,
                    kind: LinkKind::Relay,
                },
            )
            .unwrap();
        }
        let mut relay = FakeRelay {
            room: crate::crypto::room_id(key, &doc),
            seen: Vec::new(),
            stash: [Vec::new(), Vec::new()],
            direct_frames: 0,
            cut: false,
            applied: [Vec::new(), Vec::new()],
        };
        for _ in 0..4 {
            relay.round(now, &mut a, &mut b);
        }
        (a, b, relay)
    }

    #[test]
    fn signals_reach_only_their_peer_signed_and_sealed() {
        let doc = DocId([5; 16]);
        let key = DocKey::from_bytes([6; 32]);
        let (mut a, mut b, mut relay) = via_relay(doc, &key);
        assert_eq!(a.peers(doc).len(), 1, "the peers met through the relay");
        let (pa, pb) = (a.peer_id(), b.peer_id());
        let now = Timestamp(10);
        let offer = b"v=0 o=- 4611731400430051336 2 IN IP4 127.0.0.1 canary-offer".to_vec();
        a.handle(
            now,
            Input::Signal {
                doc,
                peer: pb,
                payload: offer.clone(),
            },
        )
        .unwrap();
        let before = relay.seen.len();
        let events = relay.round(now, &mut a, &mut b);
        let signals: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Signal { .. }))
            .collect();
        assert_eq!(
            signals,
            vec![&Event::Signal {
                doc,
                peer: pa,
                payload: offer.clone()
            }]
        );
        // Directed and sealed: one frame, the payload in no frame in clear.
        assert_eq!(relay.seen.len(), before + 1);
        assert!(
            relay
                .seen
                .iter()
                .all(|f| !f.windows(12).any(|w| w == b"canary-offer"))
        );
        // The answer goes back the same way.
        b.handle(
            now,
            Input::Signal {
                doc,
                peer: pa,
                payload: b"answer".to_vec(),
            },
        )
        .unwrap();
        let events = relay.round(now, &mut a, &mut b);
        assert!(events.contains(&Event::Signal {
            doc,
            peer: pb,
            payload: b"answer".to_vec()
        }));

        // A replayed frame is dropped without an event.
        let replay = relay.seen[before].clone();
        b.handle(
            now,
            Input::Received {
                link: LINK,
                bytes: replay,
            },
        )
        .unwrap();
        assert!(
            !core::iter::from_fn(|| b.poll())
                .any(|o| matches!(o, Output::Event(Event::Signal { .. })))
        );

        // Unknown peer, oversized payload, unknown document: typed errors.
        let stranger = node(9).peer_id();
        let signal = |peer, payload| Input::Signal { doc, peer, payload };
        assert_eq!(
            a.handle(now, signal(stranger, vec![1])),
            Err(NodeError::NoRouteTo(stranger))
        );
        assert!(matches!(
            a.handle(now, signal(pb, vec![0; MAX_SIGNAL + 1])),
            Err(NodeError::Wire(WireError::TooLarge { .. }))
        ));
        assert_eq!(
            a.handle(
                now,
                Input::Signal {
                    doc: DocId([0; 16]),
                    peer: pb,
                    payload: vec![1]
                }
            ),
            Err(NodeError::UnknownDoc(DocId([0; 16])))
        );
    }

    #[test]
    fn a_forged_or_misaddressed_signal_is_refused() {
        let doc = DocId([5; 16]);
        let key = DocKey::from_bytes([6; 32]);
        let (mut a, mut b, _relay) = via_relay(doc, &key);
        let (pa, pb) = (a.peer_id(), b.peer_id());
        let room = crate::crypto::room_id(&key, &doc);
        let transport = transport_cipher(&doc, &room);
        let eve = Identity::generate(&mut Rng::from_seed([42; 32]));
        let mut rng = Rng::from_seed([43; 32]);
        let now = Timestamp(10);
        // As the relay would deliver a sync message from tag 1 (a) to b.
        let mut deliver_to_b = |msg: &SyncMessage| {
            let sealed = seal_transport(&transport, &room, &encode_frame(msg), &mut rng);
            let ev = RelayEvent::Message {
                room,
                from: PeerTag(1),
                payload: ByteVec::from(sealed),
            };
            let r = b.handle(
                now,
                Input::Received {
                    link: LINK,
                    bytes: encode_frame(&ev),
                },
            );
            let got = core::iter::from_fn(|| b.poll())
                .any(|o| matches!(o, Output::Event(Event::Signal { .. })));
            (r, got)
        };
        let signed = |id: &Identity, from: PeerId, to: PeerId, payload: &[u8]| {
            let seq = 7;
            let sig = sign_digest(id, &signal_digest(&room, &from, &to, seq, payload));
            SyncMessage::Signal {
                from,
                to,
                seq,
                payload: ByteVec::from(payload.to_vec()),
                signature: ByteVec::from(sig.to_vec()),
            }
        };
        // Eve signs as herself but claims to be a: bad signature.
        let forged = signed(&eve, pa, pb, b"offer");
        let (r, got) = deliver_to_b(&forged);
        assert_eq!(r, Err(NodeError::Crypto(CryptoError::BadSignature)));
        assert!(!got);
        // Eve's own signal with an altered payload: bad signature.
        let SyncMessage::Signal {
            from,
            to,
            seq,
            signature,
            ..
        } = signed(&eve, eve.peer_id(), pb, b"offer")
        else {
            unreachable!()
        };
        let altered = SyncMessage::Signal {
            from,
            to,
            seq,
            payload: ByteVec::from(b"0ffer".to_vec()),
            signature,
        };
        assert_eq!(
            deliver_to_b(&altered),
            (Err(NodeError::Crypto(CryptoError::BadSignature)), false)
        );
        // Addressed to someone else: ignored.
        let elsewhere = signed(&eve, eve.peer_id(), pa, b"offer");
        assert_eq!(deliver_to_b(&elsewhere), (Ok(()), false));
        // Well formed: accepted.
        let fine = signed(&eve, eve.peer_id(), pb, b"offer");
        assert_eq!(deliver_to_b(&fine), (Ok(()), true));
        let _ = a.poll();
    }

    #[test]
    fn a_direct_link_carries_sync_and_the_relay_takes_over_when_it_fails() {
        let doc = DocId([5; 16]);
        let key = DocKey::from_bytes([6; 32]);
        let (mut a, mut b, mut relay) = via_relay(doc, &key);
        let mut now = Timestamp(10);
        let change = |n: &mut Node, now, bytes: &[u8]| {
            n.handle(
                now,
                Input::LocalChange {
                    doc,
                    change: bytes.to_vec(),
                },
            )
            .unwrap()
        };
        // Through the relay while there is no direct link.
        change(&mut a, now, b"one");
        for _ in 0..3 {
            relay.round(now, &mut a, &mut b);
        }
        assert_eq!(relay.applied[1], vec![b"one".to_vec()]);

        // A direct link comes up: after the first exchanges on it, sync
        // uses it alone (the relay forwards nothing), in both directions.
        for n in [&mut a, &mut b] {
            n.handle(
                now,
                Input::LinkUp {
                    link: DIRECT,
                    kind: LinkKind::Direct,
                },
            )
            .unwrap();
        }
        for _ in 0..3 {
            relay.round(now, &mut a, &mut b);
        }
        let (relayed, direct) = (relay.seen.len(), relay.direct_frames);
        let relay_bytes = a.stats().bytes_out_relay;
        change(&mut a, now, b"two");
        change(&mut b, now, b"from b");
        // Anti-entropy rounds go direct too.
        now = now.plus(SyncConfig::default().anti_entropy_ms);
        a.handle(now, Input::Tick).unwrap();
        b.handle(now, Input::Tick).unwrap();
        for _ in 0..3 {
            relay.round(now, &mut a, &mut b);
        }
        assert_eq!(relay.applied[1], vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(relay.applied[0], vec![b"from b".to_vec()]);
        assert_eq!(relay.seen.len(), relayed, "nothing through the relay");
        assert!(relay.direct_frames > direct);
        assert_eq!(a.stats().bytes_out_relay, relay_bytes);
        assert!(a.stats().bytes_out_direct > 0);
        // Per peer: b is linked directly, and most of what a sent it went there.
        let t = a.traffic(doc).unwrap();
        assert_eq!(t.peers.len(), 1);
        assert_eq!(t.peers[0].peer, b.peer_id());
        assert!(t.peers[0].direct);
        assert!(t.peers[0].bytes_direct > t.peers[0].bytes_relay);
        // One peer, though reached both ways (two sessions).
        assert_eq!(a.peers(doc).len(), 1);
        assert_eq!(a.sync_status(doc).len(), 1);
        assert!(a.sync_status(doc)[0].synced());

        // The link fails with a change in flight on it (lost): the relay
        // path takes over at once and nothing is lost.
        relay.cut = true;
        change(&mut a, now, b"three");
        relay.round(now, &mut a, &mut b);
        for n in [&mut a, &mut b] {
            n.handle(now, Input::LinkDown { link: DIRECT }).unwrap();
        }
        relay.cut = false;
        change(&mut a, now, b"four");
        for _ in 0..4 {
            relay.round(now, &mut a, &mut b);
        }
        assert_eq!(
            relay.applied[1],
            vec![
                b"one".to_vec(),
                b"two".to_vec(),
                b"three".to_vec(),
                b"four".to_vec()
            ]
        );
        assert!(relay.seen.len() > relayed);
    }
}

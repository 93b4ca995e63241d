//! Gossip: membership and dissemination for a swarm (DESIGN §6). Being built.

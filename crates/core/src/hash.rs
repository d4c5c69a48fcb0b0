//! The hash for keys a client chose or looks up (a bulk call's repeats, the route trie's
//! segments, the verified-token cache, user ids and API-key digests in the snapshot): foldhash's
//! fast hasher, seeded at random per map, so a client cannot pick colliding keys.
//! (Record ids have their own keyed hash, in [`crate::records`], specialised for their forms.)

/// A fast hash keyed at random per instance.
pub(crate) type KeyedState = foldhash::fast::RandomState;

//! Interned permissions and the bitsets of them, and the role id rule: the leaf types the
//! catalogue, scopes and record ids share (none of them needs the catalogue for these).

/// Most permissions a catalogue may hold (the bitset's width).
pub const MAX_PERMISSIONS: usize = 512;
const WORDS: usize = MAX_PERMISSIONS / 64;

/// An interned permission: its index in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermId(pub(crate) u16);

impl PermId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermSet([u64; WORDS]);

impl PermSet {
    pub fn insert(&mut self, p: PermId) {
        self.0[p.index() / 64] |= 1 << (p.index() % 64);
    }

    pub fn contains(&self, p: PermId) -> bool {
        self.0[p.index() / 64] & (1 << (p.index() % 64)) != 0
    }

    pub fn union_with(&mut self, other: &PermSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = PermId> + '_ {
        (0..MAX_PERMISSIONS)
            .filter(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| PermId(i as u16))
    }
}

impl std::fmt::Debug for PermSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(|p| p.0)).finish()
    }
}

/// Is `s` a valid role id: like a permission id but a single word, `-` allowed.
pub fn is_valid_role_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

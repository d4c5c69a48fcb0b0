//! The manager hierarchy, precomputed so that "is X my report, at any depth" is one interval
//! test, whatever the depth.
//!
//! # Layout
//!
//! - [`Hierarchy`]: an Euler tour of the manager forest. Each user gets the interval
//!   `[tin, tout)` of the preorder numbers of their subtree; X is at or below me iff
//!   `tin[me] <= tin[X] < tout[me]`. Built in O(users), iteratively (no recursion, so a
//!   100 000-deep chain cannot overflow the stack); 8 bytes per user.
//! - An incremental change that only adds entries without a manager, or takes a manager away
//!   from an entry without reports, keeps the numbering: each such entry gets an interval of
//!   its own past every other ([`Hierarchy::with_new_roots`]), in O(users) copying instead of
//!   a new tour. Its old number stays unused inside its old managers' intervals, which the
//!   interval test never reads (only a report's own number is tested).

/// In [`Hierarchy::build_flat`]'s input: no manager.
pub const NO_MANAGER: u32 = u32::MAX;

/// The manager forest as preorder intervals.
#[derive(Debug, Clone, Default)]
pub struct Hierarchy {
    tin: Box<[u32]>,
    tout: Box<[u32]>,
    /// The next unused preorder number (every interval lies below it).
    end: u32,
}

impl Hierarchy {
    /// Build from each user's manager (an index into the same slice). The snapshot has already
    /// refused cycles; should one remain, the users on it are treated as roots rather than
    /// looping, so the build always ends.
    pub fn build(managers: &[Option<u32>]) -> Hierarchy {
        Self::build_flat(
            &managers
                .iter()
                .map(|m| m.unwrap_or(NO_MANAGER))
                .collect::<Vec<_>>(),
        )
    }

    /// [`Hierarchy::build`] from managers as plain indices, [`NO_MANAGER`] for none (the form
    /// the snapshot keeps, so an incremental change rebuilds without gathering them).
    pub fn build_flat(managers: &[u32]) -> Hierarchy {
        Self::build_flat_reaching(managers).0
    }

    /// [`Hierarchy::build_flat`], and whether the tour from the entries without a manager
    /// reached every entry: it does exactly when the managers form a forest (an entry not
    /// reached has a chain of managers that never ends at a root, so it runs into a loop).
    pub fn build_flat_reaching(managers: &[u32]) -> (Hierarchy, bool) {
        let n = managers.len();
        // Children in CSR form: counts, offsets, then fill.
        let mut start = vec![0u32; n + 1];
        for m in managers {
            if (*m as usize) < n {
                start[*m as usize + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut children = vec![0u32; start[n] as usize];
        for (u, m) in managers.iter().enumerate() {
            if (*m as usize) < n {
                children[fill[*m as usize] as usize] = u as u32;
                fill[*m as usize] += 1;
            }
        }
        const UNSEEN: u32 = u32::MAX;
        let mut tin = vec![UNSEEN; n];
        let mut tout = vec![0u32; n];
        let mut clock = 0u32;
        // (node, next child position)
        let mut stack: Vec<(u32, u32)> = Vec::new();
        let mut visit =
            |root: usize, tin: &mut Vec<u32>, tout: &mut Vec<u32>, stack: &mut Vec<(u32, u32)>| {
                tin[root] = clock;
                clock += 1;
                stack.push((root as u32, start[root]));
                while let Some(top) = stack.last_mut() {
                    let (node, next) = *top;
                    if next < start[node as usize + 1] {
                        top.1 += 1;
                        let child = children[next as usize] as usize;
                        if tin[child] == UNSEEN {
                            tin[child] = clock;
                            clock += 1;
                            stack.push((child as u32, start[child]));
                        }
                    } else {
                        tout[node as usize] = clock;
                        stack.pop();
                    }
                }
            };
        for (u, m) in managers.iter().enumerate() {
            if *m as usize >= n {
                visit(u, &mut tin, &mut tout, &mut stack);
            }
        }
        // Anything unreached sits on a cycle (never in a validated snapshot): its own root.
        let mut forest = true;
        for u in 0..n {
            if tin[u] == UNSEEN {
                forest = false;
                visit(u, &mut tin, &mut tout, &mut stack);
            }
        }
        (
            Hierarchy {
                tin: tin.into_boxed_slice(),
                tout: tout.into_boxed_slice(),
                end: clock,
            },
            forest,
        )
    }

    /// The hierarchy of `managers`, which differ from those `self` was built from only at the
    /// entries listed in `changed` and in the new entries past `self`'s (`managers` may be
    /// longer), when each of those has no manager and no report: every one gets an interval of
    /// its own past every other (module docs). `None` when that does not hold (an entry gets a
    /// manager, or one with reports loses its own; the caller builds anew), or when the
    /// numbers would run out.
    pub fn with_new_roots(&self, managers: &[u32], changed: &[u32]) -> Option<Hierarchy> {
        let old = self.tin.len();
        let n = managers.len();
        if n < old {
            return None;
        }
        // No entry gets a manager (so none gets a report); an existing one that lost its
        // manager has no report in `self` (and none now: no changed entry names it).
        let mut moved: Vec<u32> = Vec::with_capacity(changed.len());
        for &k in changed {
            let ku = k as usize;
            if ku >= old {
                continue; // counted with the new entries below
            }
            if managers.get(ku) != Some(&NO_MANAGER) || !self.is_leaf(k) {
                return None;
            }
            moved.push(k);
        }
        if managers[old..].iter().any(|m| *m != NO_MANAGER) {
            return None;
        }
        moved.sort_unstable();
        moved.dedup();
        let fresh = moved.len() + (n - old);
        let end = u32::try_from(self.end as usize + fresh)
            .ok()
            .filter(|e| *e < u32::MAX)?;
        let mut tin = Vec::with_capacity(n);
        tin.extend_from_slice(&self.tin);
        tin.resize(n, 0);
        let mut tout = Vec::with_capacity(n);
        tout.extend_from_slice(&self.tout);
        tout.resize(n, 0);
        let mut clock = self.end;
        for k in moved.into_iter().map(|k| k as usize).chain(old..n) {
            tin[k] = clock;
            tout[k] = clock + 1;
            clock += 1;
        }
        debug_assert_eq!(clock, end);
        Some(Hierarchy {
            tin: tin.into_boxed_slice(),
            tout: tout.into_boxed_slice(),
            end,
        })
    }

    /// Has `boss` no report (their interval holds only their own number)? `false` for an
    /// unknown entry.
    pub fn is_leaf(&self, boss: u32) -> bool {
        match (self.tin.get(boss as usize), self.tout.get(boss as usize)) {
            (Some(lo), Some(hi)) => hi.checked_sub(*lo) == Some(1),
            _ => false,
        }
    }

    /// Is `x` the user `boss` or one of their reports, at any depth? O(1).
    pub fn is_at_or_below(&self, boss: u32, x: u32) -> bool {
        match (
            self.tin.get(boss as usize),
            self.tout.get(boss as usize),
            self.tin.get(x as usize),
        ) {
            (Some(lo), Some(hi), Some(t)) => lo <= t && t < hi,
            _ => false,
        }
    }

    /// How many reports `boss` has, at any depth; after [`Hierarchy::with_new_roots`], at
    /// most that many (the numbers of reports that left still count).
    pub fn report_count(&self, boss: u32) -> usize {
        match (self.tin.get(boss as usize), self.tout.get(boss as usize)) {
            (Some(lo), Some(hi)) => (hi - lo).saturating_sub(1) as usize,
            _ => 0,
        }
    }

    /// Bytes held (for the snapshot's size report).
    pub fn heap_bytes(&self) -> usize {
        (self.tin.len() + self.tout.len()) * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive answer: walk up the manager chain from `x`.
    fn naive(managers: &[Option<u32>], boss: u32, x: u32) -> bool {
        let mut cur = Some(x);
        let mut steps = 0;
        while let Some(c) = cur {
            if c == boss {
                return true;
            }
            steps += 1;
            if steps > managers.len() {
                return false;
            }
            cur = managers[c as usize];
        }
        false
    }

    /// A random forest: each user's manager is an earlier user (or none), then the users are
    /// shuffled so managers are not always before their reports.
    fn forest() -> impl Strategy<Value = Vec<Option<u32>>> {
        (1usize..60)
            .prop_flat_map(|n| {
                (
                    proptest::collection::vec(proptest::option::weighted(0.8, any::<u32>()), n),
                    Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                )
            })
            .prop_map(|(raw, perm)| {
                let n = raw.len();
                let mut managers = vec![None; n];
                for (i, r) in raw.iter().enumerate() {
                    // The user at position i reports to one at an earlier position.
                    let parent = if i == 0 {
                        None
                    } else {
                        r.map(|v| v as usize % i)
                    };
                    managers[perm[i]] = parent.map(|p| perm[p] as u32);
                }
                managers
            })
    }

    proptest! {
        /// The interval test equals a walk up the manager chain, for every pair of users.
        #[test]
        fn interval_test_equals_walking_up(managers in forest()) {
            let h = Hierarchy::build(&managers);
            let n = managers.len() as u32;
            for boss in 0..n {
                let mut reports = 0;
                for x in 0..n {
                    let want = naive(&managers, boss, x);
                    prop_assert_eq!(h.is_at_or_below(boss, x), want, "boss {} x {} {:?}", boss, x, managers);
                    if want && x != boss {
                        reports += 1;
                    }
                }
                prop_assert_eq!(h.report_count(boss), reports);
            }
        }
    }

    proptest! {
        /// Entries added without a manager and leaves that lose theirs, applied over one or
        /// more versions: the interval test still equals a walk up the new managers, and any
        /// other change is declined.
        #[test]
        fn new_roots_keep_the_interval_test(
            managers in forest(),
            rounds in proptest::collection::vec(
                (0usize..4, proptest::collection::vec(any::<u32>(), 0..6), any::<u32>()),
                1..4,
            ),
        ) {
            let mut flat: Vec<u32> =
                managers.iter().map(|m| m.unwrap_or(NO_MANAGER)).collect();
            let mut h = Hierarchy::build_flat(&flat);
            for (added, picks, other) in rounds {
                let n = flat.len();
                let mut next = flat.clone();
                let mut changed = Vec::new();
                for p in &picks {
                    let k = *p as usize % n;
                    // No report (a boss whose reports all left still has their numbers:
                    // not a leaf to the hierarchy, which then declines).
                    let leaf = h.is_leaf(k as u32);
                    prop_assert!(!leaf || !flat.contains(&(k as u32)));
                    if leaf && next[k] != NO_MANAGER {
                        next[k] = NO_MANAGER;
                        changed.push(k as u32);
                    }
                }
                next.extend(std::iter::repeat_n(NO_MANAGER, added));
                let got = h.with_new_roots(&next, &changed);
                prop_assert!(got.is_some());
                let Some(g) = got else { break };
                let as_options: Vec<Option<u32>> = next
                    .iter()
                    .map(|m| (*m != NO_MANAGER).then_some(*m))
                    .collect();
                for boss in 0..next.len() as u32 {
                    for x in 0..next.len() as u32 {
                        prop_assert_eq!(
                            g.is_at_or_below(boss, x),
                            naive(&as_options, boss, x),
                            "boss {} x {} {:?}", boss, x, next
                        );
                    }
                }
                // Declined: an entry given a manager, a new entry with one, a boss losing hers.
                let k = other as usize % next.len();
                let mut worse = next.clone();
                worse[k] = ((k + 1) % next.len()) as u32;
                prop_assert!(h.with_new_roots(&worse, &[k as u32]).is_none());
                let mut grown = next.clone();
                grown.push(0);
                prop_assert!(h.with_new_roots(&grown, &changed).is_none());
                if let Some(b) = (0..n).find(|b| next.contains(&(*b as u32)) && next[*b] != NO_MANAGER) {
                    let mut lost = next.clone();
                    lost[b] = NO_MANAGER;
                    let mut ch = changed.clone();
                    ch.push(b as u32);
                    prop_assert!(h.with_new_roots(&lost, &ch).is_none());
                }
                h = g;
                flat = next;
            }
        }
    }

    #[test]
    fn deep_chain_and_out_of_range() {
        // 200 000 levels: iterative, no stack overflow.
        let n = 200_000u32;
        let managers: Vec<Option<u32>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let h = Hierarchy::build(&managers);
        assert!(h.is_at_or_below(0, n - 1));
        assert!(!h.is_at_or_below(n - 1, 0));
        assert!(h.is_at_or_below(5, 5));
        assert!(!h.is_at_or_below(0, n));
        assert!(!h.is_at_or_below(n, 0));
        assert_eq!(h.report_count(0), n as usize - 1);
        assert!(Hierarchy::build_flat_reaching(&[NO_MANAGER, 0, 1, 0]).1);
        // A cycle (never in a validated snapshot) still builds, terminates and is told.
        assert!(!Hierarchy::build_flat_reaching(&[1, 0, NO_MANAGER]).1);
        assert!(!Hierarchy::build_flat_reaching(&[NO_MANAGER, 2, 1]).1);
        assert!(!Hierarchy::build_flat_reaching(&[0]).1);
        let h = Hierarchy::build(&[Some(1), Some(0), None]);
        assert!(h.is_at_or_below(2, 2));
        assert!(!h.is_at_or_below(2, 0));
    }
}

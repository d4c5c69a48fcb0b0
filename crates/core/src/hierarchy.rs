//! The manager hierarchy, precomputed so that "is X my report, at any depth" is one interval
//! test, whatever the depth.
//!
//! # Layout
//!
//! - [`Hierarchy`]: an Euler tour of the manager forest. Each user gets the interval
//!   `[tin, tout)` of the preorder numbers of their subtree; X is at or below me iff
//!   `tin[me] <= tin[X] < tout[me]`. Built in O(users), iteratively (no recursion, so a
//!   100 000-deep chain cannot overflow the stack); 8 bytes per user.

/// In [`Hierarchy::build_flat`]'s input: no manager.
pub const NO_MANAGER: u32 = u32::MAX;

/// The manager forest as preorder intervals.
#[derive(Debug, Clone, Default)]
pub struct Hierarchy {
    tin: Box<[u32]>,
    tout: Box<[u32]>,
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
        for u in 0..n {
            if tin[u] == UNSEEN {
                visit(u, &mut tin, &mut tout, &mut stack);
            }
        }
        Hierarchy {
            tin: tin.into_boxed_slice(),
            tout: tout.into_boxed_slice(),
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

    /// How many reports `boss` has, at any depth.
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
        // A cycle (never in a validated snapshot) still builds and terminates.
        let h = Hierarchy::build(&[Some(1), Some(0), None]);
        assert!(h.is_at_or_below(2, 2));
        assert!(!h.is_at_or_below(2, 0));
    }
}

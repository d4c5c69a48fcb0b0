//! A vector in fixed-size chunks behind `Arc`s: cloning it copies one pointer per chunk, and a
//! write copies only the chunk it lands in (copy on write). Successive snapshot versions share
//! every chunk an incremental change did not touch, so a batch of changes costs what it
//! touches, not the size of the snapshot. A read is two indexed loads.

use std::sync::Arc;

/// `2^SHIFT` elements per chunk.
#[derive(Debug)]
pub struct Chunked<T, const SHIFT: u32> {
    chunks: Vec<Arc<[T]>>,
    len: usize,
}

impl<T, const SHIFT: u32> Clone for Chunked<T, SHIFT> {
    fn clone(&self) -> Self {
        Chunked {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T, const SHIFT: u32> Default for Chunked<T, SHIFT> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone, const SHIFT: u32> Chunked<T, SHIFT> {
    const SIZE: usize = 1 << SHIFT;
    const MASK: usize = (1 << SHIFT) - 1;

    /// Take a vector's elements, in order.
    pub fn from_vec(v: Vec<T>) -> Self {
        let len = v.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(Self::SIZE));
        let mut it = v.into_iter();
        loop {
            let chunk: Arc<[T]> = it.by_ref().take(Self::SIZE).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        Chunked { chunks, len }
    }

    /// Each element of `src` mapped by `f`, in order: written straight into the chunks (no
    /// vector of the whole first, then copied).
    pub fn map_slice<S>(src: &[S], mut f: impl FnMut(&S) -> T) -> Self {
        let chunks = src
            .chunks(Self::SIZE)
            .map(|c| c.iter().map(&mut f).collect::<Arc<[T]>>())
            .collect();
        Chunked {
            chunks,
            len: src.len(),
        }
    }

    /// `n` copies of `value`. The full chunks all share one allocation until written (copy on
    /// write, as between versions), so a large table costs its memory, and its first touch,
    /// where and when it is filled: on whichever thread writes it.
    pub fn filled(value: T, n: usize) -> Self {
        let mut chunks = Vec::with_capacity(n.div_ceil(Self::SIZE));
        let full: Option<Arc<[T]>> =
            (n >= Self::SIZE).then(|| std::iter::repeat_n(value.clone(), Self::SIZE).collect());
        let mut left = n;
        while left > 0 {
            let k = left.min(Self::SIZE);
            match &full {
                Some(f) if k == Self::SIZE => chunks.push(Arc::clone(f)),
                _ => chunks.push(std::iter::repeat_n(value.clone(), k).collect()),
            }
            left -= k;
        }
        Chunked { chunks, len: n }
    }

    /// The chunks, for writers that split a vector by chunk ranges (each chunk written through
    /// `Arc::make_mut`, so one shared with another version is copied first).
    pub fn chunks_mut(&mut self) -> &mut [Arc<[T]>] {
        &mut self.chunks
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> SHIFT)?.get(i & Self::MASK)
    }

    /// The element at `i`, for writing: its chunk is copied first if another version shares it.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let chunk = self.chunks.get_mut(i >> SHIFT)?;
        Arc::make_mut(chunk).get_mut(i & Self::MASK)
    }

    /// Append (the last chunk is copied if shared and not full).
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < Self::SIZE => {
                let mut v: Vec<T> = Vec::with_capacity(last.len() + 1);
                v.extend_from_slice(last);
                v.push(value);
                *last = v.into();
            }
            _ => self.chunks.push(Arc::from(vec![value])),
        }
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Chunks shared with `other` (the same allocation), for tests and figures.
    pub fn shared_chunks(&self, other: &Self) -> usize {
        self.chunks
            .iter()
            .zip(&other.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes of element storage (not counting what the elements own).
    pub fn heap_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>() + self.chunks.len() * (8 + 16)
    }
}

impl<T: Clone, const SHIFT: u32> std::ops::Index<usize> for Chunked<T, SHIFT> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> SHIFT][i & Self::MASK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write_shares_untouched_chunks() {
        let a: Chunked<u32, 2> = Chunked::from_vec((0..10).collect());
        assert_eq!(a.len(), 10);
        assert_eq!(a.chunk_count(), 3);
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let mut b = a.clone();
        *b.get_mut(5).unwrap() = 50;
        b.push(10);
        b.push(11);
        assert_eq!(a[5], 5, "the old version is untouched");
        assert_eq!(b[5], 50);
        assert_eq!(b.len(), 12);
        assert_eq!(b[11], 11);
        assert_eq!(
            b.shared_chunks(&a),
            1,
            "only the first chunk is still shared"
        );
        assert!(b.get(12).is_none());
        let f: Chunked<u8, 3> = Chunked::filled(7, 20);
        assert_eq!(f.len(), 20);
        assert_eq!(f.chunk_count(), 3);
        assert!(f.iter().all(|x| *x == 7));
        let mut g = f.clone();
        *g.get_mut(9).unwrap() = 9;
        assert_eq!(
            (f[9], g[9], g[1], g[17]),
            (7, 9, 7, 7),
            "a write copies its chunk only"
        );
        assert_eq!(g.shared_chunks(&f), 2);
        let e: Chunked<u8, 3> = Chunked::from_vec(Vec::new());
        assert!(e.is_empty() && e.get(0).is_none());
    }

    #[test]
    fn a_mapped_slice_is_the_mapped_vector() {
        for n in [0usize, 1, 3, 4, 5, 9] {
            let src: Vec<u32> = (0..n as u32).collect();
            let m: Chunked<u64, 2> = Chunked::map_slice(&src, |x| u64::from(*x) * 3 + 1);
            let v: Chunked<u64, 2> =
                Chunked::from_vec(src.iter().map(|x| u64::from(*x) * 3 + 1).collect());
            assert_eq!(m.len(), n);
            assert_eq!(m.chunk_count(), n.div_ceil(4));
            assert_eq!(
                m.iter().collect::<Vec<_>>(),
                v.iter().collect::<Vec<_>>(),
                "{n} elements"
            );
        }
    }
}

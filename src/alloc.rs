//! The addon's allocator: the system's, except that large blocks come straight from the
//! kernel (anonymous `mmap`) and go straight back (`munmap`).
//!
//! Why: every embedded tunnel's UDP receiver allocates a 25 MiB zeroed block (gotatun's
//! `RecvManyBuf`: 100 GRO buffers of 256 KiB) and frees it when the tunnel stops. glibc serves
//! the first such block with `mmap` (zero pages, nothing touched), but freeing an mmapped block
//! raises glibc's mmap threshold to its size, so from the second tunnel of a process on the
//! block comes from the heap and `calloc` clears all 25 MiB by hand: ~6,400 page faults,
//! 10-15 ms inside the receive task, which delays the node's handshake reply by as much on
//! every reconnect (measured: handshake step 9-15 ms; 3.5-4 ms with glibc's threshold pinned).
//! A process-wide `mallopt` would change the host Node process's allocator; this only covers
//! the addon's own (Rust) allocations. musl always maps large blocks; the same code serves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// From this size on, a block is its own mapping. Far above anything on a hot path but the
/// receive buffers; below glibc's largest dynamic threshold (32 MiB).
const LARGE: usize = 1 << 20;
/// The alignment every mapping has (pages are at least 4 KiB on every Linux target).
const MAP_ALIGN: usize = 4096;

pub struct Allocator;

/// The one rule both directions follow: which blocks are mappings. It depends only on the
/// layout, which Rust hands back unchanged on `dealloc` and `realloc`.
fn mapped(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= MAP_ALIGN
}

unsafe fn map(size: usize) -> *mut u8 {
    let p = libc::mmap(
        ptr::null_mut(),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    /// A fresh anonymous mapping is zero already: nothing is touched until it is used.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if mapped(&layout) {
            libc::munmap(p.cast(), layout.size());
        } else {
            System.dealloc(p, layout)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        if !mapped(&layout) && !mapped(&new) {
            return System.realloc(p, layout, new_size);
        }
        // Into, out of or between mappings: rare (a Vec crossing 1 MiB); move the bytes.
        let q = self.alloc(new);
        if !q.is_null() {
            ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
            self.dealloc(p, layout);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cross_the_threshold_both_ways_with_their_bytes() {
        let a = Allocator;
        unsafe {
            let small = Layout::from_size_align(1000, 8).unwrap();
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            // up into a mapping, then back down: the bytes travel along
            let q = a.realloc(p, small, 3 << 20);
            assert!(!q.is_null() && (q as usize).is_multiple_of(MAP_ALIGN));
            assert!((0..1000).all(|i| *q.add(i) == i as u8));
            *q.add((3 << 20) - 1) = 7;
            let big = Layout::from_size_align(3 << 20, 8).unwrap();
            let r = a.realloc(q, big, 500);
            assert!((0..500).all(|i| *r.add(i) == i as u8));
            a.dealloc(r, Layout::from_size_align(500, 8).unwrap());
        }
    }

    #[test]
    fn a_large_zeroed_block_reads_zero_and_a_vec_of_it_works() {
        let v = vec![0u8; 25 << 20];
        assert!(v.iter().step_by(4096).all(|&b| b == 0));
        let mut w = v;
        w[12345] = 1;
        assert_eq!(w.iter().map(|&b| b as usize).sum::<usize>(), 1);
    }
}

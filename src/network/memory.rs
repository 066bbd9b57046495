//! Memory for a connection's receive and send buffers, mapped on demand: a page costs memory only once data
//! touches it. Buffers can then be large enough for a wide TCP window while an idle connection costs little,
//! and an emptied send buffer can be handed back to the kernel.

use std::io;
use std::ptr::NonNull;

pub struct LazyMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// The mapping is owned by one connection and only touched by the thread that owns that connection.
unsafe impl Send for LazyMemory {}

impl LazyMemory {
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Where transparent huge pages are on for every mapping, the first byte written to a buffer of 2 MiB or
        // more could commit a whole huge page. Advice only: a kernel without THP refuses it, which is fine.
        // SAFETY: the range is the mapping just created.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE);
        }
        Ok(LazyMemory {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    /// The memory as two slices, `[..at]` and `[at..]`.
    ///
    /// # Safety
    /// The slices alias the mapping: they must be dropped before `self` is dropped or handed to a
    /// `MemoryPool`, and before `split` is called again.
    pub unsafe fn split(&mut self, at: usize) -> (&'static mut [u8], &'static mut [u8]) {
        assert!(at <= self.len);
        let all = std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        all.split_at_mut(at)
    }

    /// Gives back the pages of the bytes `[from..to)` of a stream that goes round a ring buffer at
    /// `[base..base + ring]` of the mapping, its byte `x` at `base + x % ring`. Only for bytes whose contents
    /// are no longer needed, and whose pages no live byte shares.
    pub fn release_ring(&self, base: usize, ring: usize, from: u64, to: u64) {
        let mut at = from;
        while at < to {
            let offset = (at % ring as u64) as usize;
            let len = ((to - at) as usize).min(ring - offset);
            self.release(base + offset, len);
            at += len as u64;
        }
    }

    /// Gives the pages of `[offset..offset + len]` back to the kernel; they read as zeros afterwards. Only for a
    /// range whose contents are no longer needed.
    pub fn release(&self, offset: usize, len: usize) {
        assert!(offset + len <= self.len);
        let page = 4096;
        let start = offset.div_ceil(page) * page;
        let end = (offset + len) / page * page;
        if end > start {
            // SAFETY: the range lies inside the mapping; its contents are dead (see above).
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().add(start).cast(),
                    end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

#[cfg(test)]
impl LazyMemory {
    /// How many bytes of `[offset..offset + len]` (page-aligned) are committed.
    pub fn resident(&self, offset: usize, len: usize) -> usize {
        let page = 4096;
        let mut pages = vec![0u8; len.div_ceil(page)];
        // SAFETY: the range lies inside the mapping; `pages` has a byte for each of its pages.
        let rc = unsafe {
            libc::mincore(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                pages.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        pages.iter().filter(|p| *p & 1 == 1).count() * page
    }
}

impl Drop for LazyMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Mappings of connections that ended, kept for the next ones: mapping and unmapping cost system calls, page
/// faults and, in a threaded process, a TLB flush on every core, which made them a tenth of the cost of a short
/// connection. At most `keep` are kept, with whatever pages they had committed: a bounded amount of memory.
pub struct MemoryPool {
    free: Vec<LazyMemory>,
    len: usize,
    keep: usize,
}

impl MemoryPool {
    pub fn new(len: usize, keep: usize) -> Self {
        MemoryPool {
            free: Vec::new(),
            len,
            keep,
        }
    }

    /// Memory of `len` bytes, all zeros.
    pub fn take(&mut self) -> io::Result<LazyMemory> {
        match self.free.pop() {
            Some(memory) => Ok(memory),
            None => LazyMemory::new(self.len),
        }
    }

    /// Memory that nothing refers to any more (see `LazyMemory::split`). Its pages go back to the kernel
    /// (which zeroes them) before it waits for the next connection: one connection's data never shows through
    /// in another's buffers, and a pooled mapping costs no memory.
    pub fn give(&mut self, memory: LazyMemory) {
        if self.free.len() < self.keep && memory.len == self.len {
            memory.release(0, memory.len);
            self.free.push(memory);
        }
    }
}

#[cfg(test)]
impl MemoryPool {
    /// Panics unless the pool keeps at most `keep` mappings, each of its length.
    pub fn check(&self) {
        assert!(
            self.free.len() <= self.keep,
            "{} pooled > {}",
            self.free.len(),
            self.keep
        );
        assert!(self.free.iter().all(|m| m.len == self.len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_kb() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn pages_are_committed_when_touched_and_released_on_request() {
        let mut memory = LazyMemory::new(64 << 20).unwrap();
        let (a, b) = unsafe { memory.split(32 << 20) };
        assert_eq!((a.len(), b.len()), (32 << 20, 32 << 20));
        let before = resident_kb();
        a.iter_mut().step_by(4096).for_each(|x| *x = 1);
        let touched = resident_kb();
        assert!(touched >= before + 30_000, "{before} -> {touched}");
        memory.release(0, 32 << 20);
        let released = resident_kb();
        assert!(released + 30_000 <= touched, "{touched} -> {released}");
        assert!(a.iter().all(|x| *x == 0));
    }

    #[test]
    fn the_pool_hands_back_what_it_was_given_up_to_its_limit() {
        let mut pool = MemoryPool::new(1 << 16, 2);
        let taken: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        let addresses: Vec<_> = taken.iter().map(|m| m.ptr).collect();
        for memory in taken {
            pool.give(memory);
        }
        assert_eq!(pool.free.len(), 2, "the third one was unmapped");
        let again = pool.take().unwrap();
        assert!(addresses.contains(&again.ptr));
        assert_eq!(again.len, 1 << 16);
    }

    #[test]
    fn memory_from_the_pool_holds_nothing_of_its_last_user() {
        let mut pool = MemoryPool::new(1 << 16, 1);
        let mut memory = pool.take().unwrap();
        let (a, b) = unsafe { memory.split(1 << 15) };
        a.fill(0xAA);
        b[..100].fill(0xBB);
        pool.give(memory);
        let mut again = pool.take().unwrap();
        let (a, b) = unsafe { again.split(1 << 15) };
        assert!(a.iter().chain(b.iter()).all(|x| *x == 0));
    }
}

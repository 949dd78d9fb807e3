//! Large stored bodies live in sealed memory files, so that a cache hit over plain HTTP
//! can hand the kernel the file's pages (`sendfile`) instead of copying the body into the
//! socket: nginx serves its disk cache that way, and on a 100 KiB hit the copy was about
//! a third of our CPU per request.
//!
//! The body is written once, sealed against any further change, and mapped: the mapping
//! is the variant's `Bytes` (for TLS, HTTP/2, ranges and compression), so the body is held
//! once, in the file's pages. A sealed file cannot change under a page the kernel is still
//! sending, even after the entry is evicted and the file closed.
//!
//! Each file is a descriptor, and descriptors are shared with client connections: at most
//! a quarter of the process's limit is spent on bodies, and past that (or if the kernel
//! refuses) a body stays on the heap and is written as before.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;

/// Bodies at least this large get a file; below it a copy costs less than the file.
pub const MIN_FILE_BYTES: usize = 32 * 1024;

/// A stored body's sealed memory file.
#[derive(Debug)]
pub struct BodyFile {
    file: File,
    len: usize,
}

static OPEN_FILES: AtomicUsize = AtomicUsize::new(0);

/// How many body files may be open at once: a quarter of the descriptor limit.
fn file_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        usize::try_from(soft / 4).unwrap_or(usize::MAX)
    })
}

impl BodyFile {
    /// `data` in a new sealed file, and the file's mapping as `Bytes`; `None` when the
    /// body is small, the file budget is spent, or the kernel refuses (the caller keeps
    /// `data` as it is).
    pub fn store(data: &[u8]) -> Option<(Bytes, std::sync::Arc<BodyFile>)> {
        if data.len() < MIN_FILE_BYTES {
            return None;
        }
        let taken = OPEN_FILES.fetch_add(1, Ordering::Relaxed);
        if taken >= file_budget() {
            OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match Self::create(data) {
            Ok(made) => Some(made),
            Err(e) => {
                OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "cached body kept in memory: no sealed file");
                None
            }
        }
    }

    fn create(data: &[u8]) -> io::Result<(Bytes, std::sync::Arc<BodyFile>)> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "geoedge-cached-body",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = File::from(fd);
        file.write_all(data)?;
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        // SAFETY: the file is sealed against writes, shrinking and growing, and the seals
        // themselves are sealed, so the mapped bytes can never change or vanish.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        if map.len() != data.len() {
            return Err(io::Error::other("sealed body file has the wrong length"));
        }
        let body = BodyFile {
            file,
            len: data.len(),
        };
        Ok((Bytes::from_owner(map), std::sync::Arc::new(body)))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn large_bodies_are_mapped_from_a_sealed_file_small_ones_stay() {
        assert!(BodyFile::store(&[7u8; MIN_FILE_BYTES - 1]).is_none());
        let data: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        let (bytes, file) = BodyFile::store(&data).expect("a sealed file");
        assert_eq!(&bytes[..], &data[..]);
        assert_eq!(file.len(), data.len());
        // The file says the same, and refuses to change.
        let mut read_back = Vec::new();
        let mut f = file.file().try_clone().expect("dup");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut read_back).expect("read");
        assert_eq!(read_back, data);
        assert!(f.write_all(b"x").is_err());
        assert!(rustix::fs::ftruncate(file.file().as_fd(), 1).is_err());
        // The mapping outlives the file handle it came from.
        drop(file);
        drop(f);
        assert_eq!(&bytes[..16], &data[..16]);
    }
}

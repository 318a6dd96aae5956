//! [`ResidentMemory`]: how much of a process's memory is resident (its RSS), as the kernel
//! counts it in `/proc/self/statm`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// This process's `/proc/self/statm`, held open: each reading is one `pread`.
#[derive(Debug)]
pub(crate) struct ResidentMemory {
    statm: File,
    page: u64,
}

impl ResidentMemory {
    /// Opens this process's `statm`.
    pub(crate) fn open() -> io::Result<ResidentMemory> {
        Ok(ResidentMemory {
            statm: File::open("/proc/self/statm")?,
            page: super::overflow::page_size() as u64,
        })
    }

    /// The bytes of this process's memory resident now.
    pub(crate) fn bytes(&self) -> io::Result<u64> {
        // Seven numbers of pages at most, each under 20 digits.
        let mut buf = [0u8; 192];
        let n = self.statm.read_at(&mut buf, 0)?;
        let pages = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "/proc/self/statm reads {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                )
            })?;
        Ok(pages.saturating_mul(self.page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_touched_is_counted_resident() {
        let resident = ResidentMemory::open().unwrap();
        let before = resident.bytes().unwrap();
        // Far more than other tests running beside this one could free meanwhile.
        let touched = vec![1u8; 256 << 20];
        let after = resident.bytes().unwrap();
        assert!(
            after >= before + (128 << 20),
            "256 MiB touched: {before} bytes resident before, {after} after"
        );
        drop(touched);
    }
}

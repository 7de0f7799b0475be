//! The entries of a zip archive as `torch.save` writes them: stored (uncompressed), zip64
//! when the archive passes 4 GiB. Only the central directory and local headers are read;
//! each entry is a byte range of the (memory-mapped) file.

use std::ops::Range;

/// One stored entry: its name and where its bytes lie in the archive.
#[derive(Clone, Debug)]
pub struct ZipEntry {
    pub name: String,
    pub data: Range<usize>,
}

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| format!("truncated at byte {at}"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or_else(|| format!("truncated at byte {at}"))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap())).ok_or_else(|| format!("truncated at byte {at}"))
}
fn to_usize(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("offset {v} does not fit this machine's address space"))
}

/// Does the file start like a zip archive?
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32_at(bytes, 0).ok() == Some(LOCAL)
}

/// Every entry of the archive, in central-directory order. Compressed entries are refused
/// (torch never writes them).
pub fn stored_entries(bytes: &[u8]) -> Result<Vec<ZipEntry>, String> {
    // the end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB
    let lowest = bytes.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lowest..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(bytes, i).ok() == Some(EOCD))
        .ok_or("no end-of-central-directory record (truncated, or not a zip archive)")?;
    let mut count = u16_at(bytes, eocd + 10)? as u64;
    let mut offset = u32_at(bytes, eocd + 16)? as u64;
    if count == 0xFFFF || offset == 0xFFFF_FFFF {
        let loc = eocd.checked_sub(20).filter(|&l| u32_at(bytes, l).ok() == Some(ZIP64_LOCATOR)).ok_or("zip64 archive without its locator")?;
        let z = to_usize(u64_at(bytes, loc + 8)?)?;
        if u32_at(bytes, z)? != ZIP64_EOCD {
            return Err("zip64 end-of-central-directory record not where its locator says".into());
        }
        count = u64_at(bytes, z + 32)?;
        offset = u64_at(bytes, z + 48)?;
    }
    let mut at = to_usize(offset)?;
    let mut entries = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        if u32_at(bytes, at)? != CENTRAL {
            return Err(format!("central directory entry expected at byte {at}"));
        }
        let method = u16_at(bytes, at + 10)?;
        let mut compressed = u32_at(bytes, at + 20)? as u64;
        let mut size = u32_at(bytes, at + 24)? as u64;
        let (name_len, extra_len, comment_len) = (u16_at(bytes, at + 28)? as usize, u16_at(bytes, at + 30)? as usize, u16_at(bytes, at + 32)? as usize);
        let mut local = u32_at(bytes, at + 42)? as u64;
        let name_bytes = bytes.get(at + 46..at + 46 + name_len).ok_or("truncated central directory")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // zip64 extra field: the 8-byte values of the fields saturated above, in this order
        let mut e = at + 46 + name_len;
        let extra_end = e + extra_len;
        while e + 4 <= extra_end {
            let (id, len) = (u16_at(bytes, e)?, u16_at(bytes, e + 2)? as usize);
            if id == 0x0001 {
                let mut f = e + 4;
                for v in [&mut size, &mut compressed, &mut local] {
                    if *v == 0xFFFF_FFFF && f + 8 <= e + 4 + len {
                        *v = u64_at(bytes, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 || compressed != size {
            return Err(format!("entry {name} is compressed (method {method}); torch.save writes stored entries"));
        }
        let l = to_usize(local)?;
        if u32_at(bytes, l)? != LOCAL {
            return Err(format!("entry {name}: local header expected at byte {l}"));
        }
        let start = l + 30 + u16_at(bytes, l + 26)? as usize + u16_at(bytes, l + 28)? as usize;
        let end = start.checked_add(to_usize(size)?).filter(|&end| end <= bytes.len()).ok_or_else(|| format!("entry {name} runs past the end of the file (truncated?)"))?;
        entries.push(ZipEntry { name, data: start..end });
        at = extra_end + comment_len;
    }
    Ok(entries)
}

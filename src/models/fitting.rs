//! Work that shrinks when the device runs out of memory: `n` items run in consecutive
//! parts of at most `limit`, and a part of several that runs out of memory is halved — for
//! the parts that follow too, `limit` being shared (by a run's batches, its devices) — and
//! run again. For work whose result does not depend on how it is split, up to rounding:
//! VAE passes, sampling batches, groups of DDIM inversions.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::weights::Result;

/// Runs `part` on consecutive ranges of `0..n` of at most `limit` items and returns its
/// results in order. A part of more than one item that fails out of memory is run again
/// halved, where `splittable()` allows it (nothing of the failed part is kept, e.g. no
/// node recorded on a tape), after `on_halve(from, to)` when that lowered `limit`.
pub fn in_fitting_parts<T>(n: usize, limit: &AtomicUsize, splittable: &dyn Fn() -> bool, on_halve: &mut dyn FnMut(usize, usize), mut part: impl FnMut(Range<usize>) -> Result<T>) -> Result<Vec<T>> {
    let (mut parts, mut start) = (Vec::new(), 0);
    while start < n {
        let len = limit.load(Relaxed).clamp(1, n - start);
        match part(start..start + len) {
            Ok(p) => {
                parts.push(p);
                start += len;
            }
            Err(e) if e.is_out_of_memory() && len > 1 && splittable() => {
                if limit.fetch_min(len / 2, Relaxed) > len / 2 {
                    on_halve(len, len / 2);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(parts)
}

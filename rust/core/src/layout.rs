//! Shape, strides (in elements) and offset of a tensor inside its storage, and the
//! shape arithmetic shared by the ops: broadcasting and axis normalisation.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub offset: usize,
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    /// Row-major and gap-free, so the data is `storage[offset..offset+numel]` in order.
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            // No data to lay out. (Counting the zero-length axis made a fresh (2, 0) tensor
            // "non-contiguous", and reshape then copied it into the same layout forever.)
            return true;
        }
        let mut expected = 1isize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d as isize;
        }
        true
    }
    /// One past the last storage index the layout reaches (the buffer length it needs), or
    /// None when a stride is negative or the index overflows. 0 when it has no elements.
    pub fn end(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        self.shape.iter().zip(&self.strides).try_fold(self.offset.checked_add(1)?, |end, (&d, &s)| {
            let s = usize::try_from(s).ok()?;
            end.checked_add((d - 1).checked_mul(s)?)
        })
    }
    /// Whether distinct indices reach distinct elements (no broadcast axis, no axes folded
    /// onto each other), so a write to one element writes it once. Checked as numpy's
    /// `may_share_memory` does cheaply: each axis, by increasing stride, steps past all that
    /// the smaller ones reach. Negative strides fail.
    pub fn is_non_overlapping(&self) -> bool {
        let mut axes: Vec<(isize, usize)> = self.strides.iter().copied().zip(self.shape.iter().copied()).filter(|&(_, d)| d > 1).collect();
        axes.sort_unstable();
        let mut reach = 0isize; // the largest index the smaller axes reach
        for (s, d) in axes {
            if s <= reach {
                return false;
            }
            match (d as isize - 1).checked_mul(s).and_then(|r| r.checked_add(reach)) {
                Some(r) => reach = r,
                None => return false,
            }
        }
        true
    }
}

/// Checks that a tensor of `shape` is addressable: the product of its axes (zero-length ones
/// counted as 1, as strides count them) times the largest item size must fit an `isize`, as
/// numpy and pointer offsets need. Returns the element count.
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    let span = shape.iter().try_fold(8usize, |acc, &d| acc.checked_mul(d.max(1)));
    match span {
        Some(b) if b <= isize::MAX as usize => Ok(shape.iter().product()),
        _ => Err(Error::Shape { op, msg: format!("shape {shape:?} has too many elements to address") }),
    }
}

/// Refuses a result of `n` elements of `item` bytes that cannot fit in this machine's memory,
/// with an error instead of the abort (or the OOM kill) an allocation of it would bring.
pub fn check_alloc(op: &'static str, n: usize, item: usize) -> Result<()> {
    let bytes = n.saturating_mul(item);
    let total = physical_memory();
    if bytes > total {
        return Err(Error::Memory {
            op,
            msg: format!("the result needs {:.1} GiB, more than this machine's {:.1} GiB of memory", bytes as f64 / 1073741824.0, total as f64 / 1073741824.0),
        });
    }
    Ok(())
}

/// Bytes of physical memory (Linux: /proc/meminfo), read once; unlimited where unknown.
fn physical_memory() -> usize {
    static TOTAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok()))
            .map_or(usize::MAX, |kb| kb.saturating_mul(1024))
    })
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1) as isize;
    }
    strides
}

/// numpy broadcasting of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::Shape { op, msg: format!("shapes {a:?} and {b:?} cannot be broadcast together (dimension {i}: {da} vs {db})") });
        };
    }
    Ok(out)
}

/// Turn a possibly negative axis into an index, or fail naming the op.
pub fn normalize_axis(op: &'static str, axis: isize, ndim: usize) -> Result<usize> {
    let a = if axis < 0 { axis + ndim as isize } else { axis };
    if a < 0 || a >= ndim as isize {
        return Err(Error::Axis { op, axis, ndim });
    }
    Ok(a as usize)
}

/// Normalise a list of axes (None = all), sorted and without repeats.
pub fn normalize_axes(op: &'static str, axes: Option<&[isize]>, ndim: usize) -> Result<Vec<usize>> {
    let mut out = match axes {
        None => (0..ndim).collect::<Vec<_>>(),
        Some(ax) => ax.iter().map(|&a| normalize_axis(op, a, ndim)).collect::<Result<Vec<_>>>()?,
    };
    out.sort_unstable();
    let before = out.len();
    out.dedup();
    if out.len() != before {
        return Err(Error::Value { op, msg: format!("repeated axis in {axes:?}") });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes("t", &[3, 1, 5], &[4, 1]).unwrap(), vec![3, 4, 5]);
        assert_eq!(broadcast_shapes("t", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert!(broadcast_shapes("t", &[3], &[4]).is_err());
    }
    #[test]
    fn contiguity() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.is_contiguous());
        let t = Layout { shape: vec![3, 2], strides: vec![1, 3], offset: 0 };
        assert!(!t.is_contiguous());
        assert_eq!(normalize_axis("t", -1, 3).unwrap(), 2);
        assert!(normalize_axis("t", 3, 3).is_err());
    }
    #[test]
    fn end_is_one_past_the_furthest_element() {
        assert_eq!(Layout::contiguous(&[2, 3]).end(), Some(6));
        assert_eq!(Layout::contiguous(&[]).end(), Some(1));
        assert_eq!(Layout::contiguous(&[4, 0]).end(), Some(0));
        // columns ::2 of rows 1.. of a (4, 5): the last is element 3 * 5 + 4 = 19
        assert_eq!(Layout { shape: vec![3, 3], strides: vec![5, 2], offset: 5 }.end(), Some(20));
        assert_eq!(Layout { shape: vec![3], strides: vec![-1], offset: 2 }.end(), None);
        assert_eq!(Layout { shape: vec![2, usize::MAX], strides: vec![1, 2], offset: 0 }.end(), None);
    }
    #[test]
    fn overlap_is_found_by_stride() {
        let l = |shape: &[usize], strides: &[isize]| Layout { shape: shape.to_vec(), strides: strides.to_vec(), offset: 0 };
        assert!(l(&[2, 3], &[3, 1]).is_non_overlapping());
        assert!(l(&[3, 2], &[1, 3]).is_non_overlapping()); // a transpose
        assert!(l(&[2, 2], &[10, 2]).is_non_overlapping()); // a strided slice
        assert!(l(&[1, 3], &[0, 1]).is_non_overlapping()); // a length-1 axis steps nowhere
        assert!(!l(&[3, 2], &[0, 1]).is_non_overlapping()); // broadcast
        assert!(!l(&[2, 3], &[2, 1]).is_non_overlapping()); // rows overlap by one element
        assert!(!l(&[3], &[-1]).is_non_overlapping());
    }
}

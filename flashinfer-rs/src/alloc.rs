//! Fallible host allocation: every buffer whose size comes from a caller is reserved with
//! `try_reserve_exact`, so a size no machine can give is [`Error::HostAllocation`] instead of
//! an abort (Rust's infallible `Vec` growth aborts the process on a refused allocation, and
//! panics when the byte count overflows).

use crate::error::{Error, Result};

/// The error for `n` elements of `T` that could not be had.
fn refused<T>(what: &'static str, n: usize) -> Error {
    Error::HostAllocation {
        what,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    }
}

/// An empty vector with room for exactly `n` elements.
pub(crate) fn with_capacity<T>(what: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| refused::<T>(what, n))?;
    Ok(v)
}

/// `n` copies of `value` (`vec![value; n]`, fallibly).
pub(crate) fn filled<T: Clone>(what: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = with_capacity(what, n)?;
    v.resize(n, value);
    Ok(v)
}

/// Makes room in `v` for `len` elements in all (capacity only: its contents do not change,
/// so a caller can take every buffer a change needs before it changes anything).
pub(crate) fn reserve<T>(what: &'static str, v: &mut Vec<T>, len: usize) -> Result<()> {
    v.try_reserve_exact(len.saturating_sub(v.len()))
        .map_err(|_| refused::<T>(what, len))
}

/// `a * b`, or [`Error::InvalidArgument`] on `arg` when the product overflows `usize`.
pub(crate) fn product(arg: &'static str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| {
            Error::invalid(
                arg,
                format!(
                    "{} overflows usize",
                    factors
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(" x ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_no_machine_has_are_errors_not_aborts() {
        // Over isize::MAX bytes: refused by the allocator's layout check.
        let e = with_capacity::<u64>("ids", usize::MAX / 4).unwrap_err();
        assert!(
            matches!(e, Error::HostAllocation { what: "ids", .. }),
            "{e}"
        );
        // A petabyte fits the layout rules but no machine: refused by the system allocator.
        let e = filled("ids", 1usize << 50, 0u8).unwrap_err();
        assert_eq!(
            e,
            Error::HostAllocation {
                what: "ids",
                bytes: 1 << 50
            }
        );
        let mut v = vec![1u16; 3];
        assert!(reserve("ids", &mut v, usize::MAX).is_err());
        assert!(reserve("ids", &mut v, 1 << 50).is_err());
        assert_eq!(
            v,
            [1, 1, 1],
            "a refused reservation leaves the vector as it was"
        );
        reserve("ids", &mut v, 5).unwrap();
        assert!(v.capacity() >= 5);
        assert_eq!(v, [1, 1, 1]);
    }

    #[test]
    fn products_that_wrap_are_refused() {
        assert_eq!(product("n", &[3, 4, 5]).unwrap(), 60);
        assert_eq!(product("n", &[]).unwrap(), 1);
        let e = product("n", &[1 << 33, 1 << 33]).unwrap_err();
        assert!(
            e.to_string().contains("8589934592 x 8589934592 overflows"),
            "{e}"
        );
    }
}

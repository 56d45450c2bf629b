//! Host-side weight preparation for [`CutlassMoe`](super::CutlassMoe): GEMM 1's weights
//! from the layouts checkpoints and other servers keep them in.
//!
//! The layer reads `fc1` as `[experts, 2 * intermediate, hidden]` with each expert's linear
//! (up) rows first, then its gate rows (SwiGLU computes `silu(gate) * up`), and `fc2` as
//! `[experts, hidden, intermediate]`, which is the checkpoints' `down_proj` stacked as is.
//! Hugging Face checkpoints keep `gate_proj` and `up_proj` apart (`[intermediate, hidden]`
//! each); vLLM and SGLang fuse them as `w13` with the gate rows first.

use crate::alloc;
use crate::error::{ensure, ensure_nonzero, Result};

/// `fc1` from each expert's `gate_proj` and `up_proj` (`[experts, intermediate, hidden]`
/// each, experts stacked): `[experts, 2 * intermediate, hidden]`, up rows first.
pub fn fc1_from_gate_up<T: Copy>(
    gate: &[T],
    up: &[T],
    experts: usize,
    intermediate: usize,
    hidden: usize,
) -> Result<Vec<T>> {
    let rows = expert_block(experts, intermediate, hidden)?;
    for (name, v) in [("gate", gate), ("up", up)] {
        ensure(v.len() == experts * rows, name, || {
            format!(
                "holds {} elements, [experts {experts}, intermediate {intermediate}, hidden \
                 {hidden}] is {}",
                v.len(),
                experts * rows
            )
        })?;
    }
    // The loop runs over the data (`experts` chunks of the checked lengths), never over a
    // count the caller gave alone.
    let mut out = alloc::with_capacity("fc1", 2 * experts * rows)?;
    for (up, gate) in up.chunks_exact(rows).zip(gate.chunks_exact(rows)) {
        out.extend_from_slice(up);
        out.extend_from_slice(gate);
    }
    Ok(out)
}

/// `fc1` from a fused `w13` with the gate rows first (vLLM's and SGLang's layout,
/// `[experts, 2 * intermediate, hidden]`): the same tensor with each expert's halves swapped.
pub fn fc1_from_gate_first_w13<T: Copy>(
    w13: &[T],
    experts: usize,
    intermediate: usize,
    hidden: usize,
) -> Result<Vec<T>> {
    let rows = expert_block(experts, intermediate, hidden)?;
    ensure(w13.len() == 2 * experts * rows, "w13", || {
        format!(
            "holds {} elements, [experts {experts}, 2 x intermediate {intermediate}, hidden \
             {hidden}] is {}",
            w13.len(),
            2 * experts * rows
        )
    })?;
    let mut out = alloc::with_capacity("fc1", w13.len())?;
    for expert in w13.chunks_exact(2 * rows) {
        out.extend_from_slice(&expert[rows..]);
        out.extend_from_slice(&expert[..rows]);
    }
    Ok(out)
}

/// Elements of one expert's `[intermediate, hidden]` half (> 0), the whole tensor's size
/// checked against overflow. Zero sizes are refused: a layer of them is no layer, and with an
/// empty half a huge `experts` would otherwise pass every length check.
fn expert_block(experts: usize, intermediate: usize, hidden: usize) -> Result<usize> {
    ensure_nonzero(&[
        ("experts", experts),
        ("intermediate", intermediate),
        ("hidden", hidden),
    ])?;
    let rows = intermediate.checked_mul(hidden);
    let total = rows
        .and_then(|r| r.checked_mul(experts))
        .and_then(|n| n.checked_mul(2));
    ensure(total.is_some(), "fc1", || {
        format!("[{experts}, 2 x {intermediate}, {hidden}] overflows usize")
    })?;
    Ok(rows.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_and_up_stack_up_first_per_expert() {
        // 2 experts, intermediate 2, hidden 1: gate rows g, up rows u.
        let gate = [10, 11, 20, 21];
        let up = [1, 2, 3, 4];
        assert_eq!(
            fc1_from_gate_up(&gate, &up, 2, 2, 1).unwrap(),
            [1, 2, 10, 11, 3, 4, 20, 21]
        );
        let w13 = [10, 11, 1, 2, 20, 21, 3, 4];
        assert_eq!(
            fc1_from_gate_first_w13(&w13, 2, 2, 1).unwrap(),
            fc1_from_gate_up(&gate, &up, 2, 2, 1).unwrap()
        );
    }

    #[test]
    fn wrong_lengths_and_overflowing_shapes_are_refused() {
        assert!(fc1_from_gate_up(&[0u8; 3], &[0u8; 4], 2, 2, 1).is_err());
        assert!(fc1_from_gate_first_w13(&[0u8; 7], 2, 2, 1).is_err());
        assert!(fc1_from_gate_up::<u8>(&[], &[], usize::MAX, 2, 2).is_err());
    }

    /// Zero sizes with a huge expert count: every length check passes with empty slices, so
    /// these used to loop ~2^64 times.
    #[test]
    fn zero_sizes_are_refused_at_once_whatever_the_expert_count() {
        for (experts, intermediate, hidden) in [
            (usize::MAX, 0, 2),
            (usize::MAX, 2, 0),
            (usize::MAX, 0, 0),
            (0, 2, 2),
            (1, 0, 1),
        ] {
            let e = fc1_from_gate_up::<u8>(&[], &[], experts, intermediate, hidden).unwrap_err();
            assert!(e.to_string().contains("must be > 0"), "{e}");
            let e = fc1_from_gate_first_w13::<u8>(&[], experts, intermediate, hidden).unwrap_err();
            assert!(e.to_string().contains("must be > 0"), "{e}");
        }
    }
}

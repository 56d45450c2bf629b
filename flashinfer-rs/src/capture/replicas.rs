//! Replicated experts (EPLB and the like): the kernels route to *physical* experts, of which
//! several may serve one *logical* expert; trainers replay logical ids. An [`ExpertMap`] is the
//! server's table from one to the other, applied on the host as rows enter an
//! [`Assembler`](super::Assembler), so that every export holds logical ids.

use super::export::{check_ids, MAX_EXPORT_EXPERTS, UNKNOWN};
use crate::error::{ensure, Result};

/// A physical-to-logical expert table: entry `p` is the logical expert physical expert `p`
/// serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertMap {
    to_logical: Vec<i16>,
    num_logical: u32,
}

impl ExpertMap {
    /// `physical_to_logical[p]` for every physical expert `p` (1..=[`MAX_EXPORT_EXPERTS`] of
    /// them), each in `[0, num_logical)`; `num_logical` at most the physical count.
    pub fn new(physical_to_logical: &[u32], num_logical: u32) -> Result<ExpertMap> {
        let physical = physical_to_logical.len();
        ensure(
            (1..=MAX_EXPORT_EXPERTS as usize).contains(&physical),
            "physical_to_logical",
            || format!("maps {physical} physical experts, must be 1..={MAX_EXPORT_EXPERTS}"),
        )?;
        ensure(
            num_logical >= 1 && num_logical as usize <= physical,
            "num_logical",
            || format!("must be in 1..={physical} (the physical experts), got {num_logical}"),
        )?;
        if let Some(p) = physical_to_logical.iter().position(|&l| l >= num_logical) {
            return Err(crate::Error::invalid(
                "physical_to_logical",
                format!(
                    "physical expert {p} maps to {}, not a logical expert in [0, {num_logical})",
                    physical_to_logical[p]
                ),
            ));
        }
        Ok(ExpertMap {
            // Each entry is < num_logical <= MAX_EXPORT_EXPERTS: it fits an i16.
            to_logical: physical_to_logical.iter().map(|&l| l as i16).collect(),
            num_logical,
        })
    }

    /// Physical experts (the ids the kernels write).
    pub fn num_physical(&self) -> u32 {
        self.to_logical.len() as u32
    }

    /// Logical experts (the ids exports hold).
    pub fn num_logical(&self) -> u32 {
        self.num_logical
    }

    /// The logical id of each physical id in `ids` ([`UNKNOWN`] stays unknown). The ids must
    /// have passed `check_ids` against [`num_physical`](Self::num_physical).
    pub(crate) fn to_logical(&self, ids: &mut [i16]) {
        debug_assert!(check_ids(ids, self.num_physical()).is_ok());
        for id in ids {
            if *id != UNKNOWN {
                *id = self.to_logical[*id as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests;

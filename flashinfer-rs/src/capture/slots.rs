//! Routed experts kept on the host by KV-cache slot (`block_id * block_size + offset`), so a
//! request whose prompt hits the prefix cache can still return the routing of the cached
//! prefix, which this step never computed.
//!
//! Bounded: the store holds exactly one row per KV slot, sized once (and refused above a
//! memory budget), narrowed to one byte per id when the model has fewer than 256 experts.
//! A slot's routing is unknown until a step that computed it is recorded, and becomes unknown
//! again when its KV block is freed ([`SlotStore::invalidate`]); a lookup of an unknown slot
//! answers `None`, never a made-up row.
//!
//! Ordering rule for the serving loop: record a step's rows (after [`CaptureStore::collect`]
//! hands them over) *before* freeing any block that step wrote, and invalidate a block when it
//! is freed. Then a reused block never shows a previous request's routing.
//!
//! [`CaptureStore::collect`]: super::CaptureStore::collect

use std::ops::Range;

use super::assemble::StepRows;
use crate::error::{ensure, Error, Result};

enum Ids {
    /// Fewer than 256 experts: `u8::MAX` marks an unknown slot.
    U8(Vec<u8>),
    /// Up to 65,535 experts: `u16::MAX` marks an unknown slot.
    U16(Vec<u16>),
}

/// Host routing store indexed by KV slot.
pub struct SlotStore {
    layers: usize,
    top_k: usize,
    num_slots: usize,
    ids: Ids,
}

impl std::fmt::Debug for SlotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStore")
            .field("num_slots", &self.num_slots)
            .field("layers", &self.layers)
            .field("top_k", &self.top_k)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl SlotStore {
    /// A store for `num_slots` KV slots of a model with `layers` MoE layers, `top_k` and
    /// `num_experts`; refused when it would take more than `max_bytes`.
    pub fn new(
        num_slots: usize,
        layers: usize,
        top_k: usize,
        num_experts: u32,
        max_bytes: usize,
    ) -> Result<SlotStore> {
        ensure(layers > 0 && top_k > 0, "layers", || {
            "layers and top_k must be > 0".into()
        })?;
        ensure(
            num_experts > 0 && num_experts < u16::MAX as u32,
            "num_experts",
            || format!("must be in 1..{}, got {num_experts}", u16::MAX),
        )?;
        let elems = num_slots
            .checked_mul(layers * top_k)
            .ok_or_else(|| Error::invalid("num_slots", "num_slots x layers x top_k overflows"))?;
        let elem = if num_experts < u8::MAX as u32 { 1 } else { 2 };
        ensure(elems.saturating_mul(elem) <= max_bytes, "max_bytes", || {
            format!("{num_slots} slots x {layers} layers x top_k {top_k} need {} bytes, over the budget of {max_bytes}", elems * elem)
        })?;
        let ids = if elem == 1 {
            Ids::U8(vec![u8::MAX; elems])
        } else {
            Ids::U16(vec![u16::MAX; elems])
        };
        Ok(SlotStore {
            layers,
            top_k,
            num_slots,
            ids,
        })
    }

    /// Host memory held.
    pub fn bytes(&self) -> usize {
        match &self.ids {
            Ids::U8(v) => v.len(),
            Ids::U16(v) => v.len() * 2,
        }
    }

    fn row(&self) -> usize {
        self.layers * self.top_k
    }

    /// Records a collected step: row `r` was computed for KV slot `slots[r]` (`None` for
    /// padding or rows of other ranks).
    pub fn record(&mut self, slots: &[Option<usize>], step: &StepRows) -> Result<()> {
        let row = self.row();
        ensure(
            step.layers == self.layers && step.top_k == self.top_k,
            "step",
            || {
                format!(
                    "has {} layers x top_k {}, the store {} x {}",
                    step.layers, step.top_k, self.layers, self.top_k
                )
            },
        )?;
        ensure(
            slots.len() == step.tokens && step.ids.len() == step.tokens * row,
            "slots",
            || format!("names {} rows, the step has {}", slots.len(), step.tokens),
        )?;
        if let Some(bad) = slots.iter().flatten().find(|&&s| s >= self.num_slots) {
            return Err(Error::invalid(
                "slots",
                format!("slot {bad} >= num_slots ({})", self.num_slots),
            ));
        }
        for (r, slot) in slots.iter().enumerate() {
            let Some(slot) = *slot else { continue };
            let src = &step.ids[r * row..(r + 1) * row];
            let dst = slot * row..(slot + 1) * row;
            match &mut self.ids {
                Ids::U8(v) => v[dst].iter_mut().zip(src).for_each(|(d, &s)| *d = s as u8),
                Ids::U16(v) => v[dst].iter_mut().zip(src).for_each(|(d, &s)| *d = s as u16),
            }
        }
        Ok(())
    }

    /// The routing of one slot (`layers * top_k` ids), or `None` when unknown.
    pub fn lookup(&self, slot: usize) -> Option<Vec<i16>> {
        if slot >= self.num_slots {
            return None;
        }
        let at = slot * self.row()..(slot + 1) * self.row();
        let row: Vec<i16> = match &self.ids {
            Ids::U8(v) => {
                if v[at.start] == u8::MAX {
                    return None;
                }
                v[at].iter().map(|&x| x as i16).collect()
            }
            Ids::U16(v) => {
                if v[at.start] == u16::MAX {
                    return None;
                }
                v[at].iter().map(|&x| x as i16).collect()
            }
        };
        Some(row)
    }

    /// Forgets the routing of `slots` (a freed or reassigned KV block).
    pub fn invalidate(&mut self, slots: Range<usize>) {
        let row = self.row();
        let r = slots.start.min(self.num_slots) * row..slots.end.min(self.num_slots) * row;
        match &mut self.ids {
            Ids::U8(v) => v[r].fill(u8::MAX),
            Ids::U16(v) => v[r].fill(u16::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rows: usize, base: i16) -> StepRows {
        StepRows {
            tokens: rows,
            layers: 2,
            top_k: 3,
            ids: (0..rows).flat_map(|r| [base + r as i16; 6]).collect(),
        }
    }

    #[test]
    fn recorded_slots_are_found_and_others_are_unknown() {
        let mut s = SlotStore::new(16, 2, 3, 64, 1 << 20).unwrap();
        assert_eq!(s.bytes(), 16 * 6, "one byte per id below 256 experts");
        s.record(&[Some(5), None, Some(9)], &step(3, 40)).unwrap();
        assert_eq!(s.lookup(5), Some(vec![40; 6]));
        assert_eq!(s.lookup(9), Some(vec![42; 6]));
        assert_eq!(s.lookup(6), None, "never recorded");
        assert_eq!(s.lookup(99), None, "out of range");
    }

    #[test]
    fn freed_blocks_forget_their_routing() {
        let mut s = SlotStore::new(16, 2, 3, 64, 1 << 20).unwrap();
        s.record(&[Some(4), Some(5)], &step(2, 1)).unwrap();
        s.invalidate(4..5);
        assert_eq!((s.lookup(4), s.lookup(5)), (None, Some(vec![2; 6])));
        s.invalidate(0..1000); // clamped
        assert_eq!(s.lookup(5), None);
    }

    #[test]
    fn large_models_use_two_bytes_and_keep_every_expert_id() {
        let mut s = SlotStore::new(4, 2, 3, 384, 1 << 20).unwrap();
        assert_eq!(s.bytes(), 4 * 6 * 2);
        s.record(&[Some(0)], &step(1, 383)).unwrap();
        assert_eq!(s.lookup(0), Some(vec![383; 6]));
        // Expert 255 is a real id with 256 experts: stored in two bytes, not mistaken for unknown.
        let mut s = SlotStore::new(4, 2, 3, 256, 1 << 20).unwrap();
        s.record(&[Some(1)], &step(1, 255)).unwrap();
        assert_eq!(s.lookup(1), Some(vec![255; 6]));
    }

    #[test]
    fn the_memory_budget_and_slot_range_are_enforced() {
        assert!(matches!(
            SlotStore::new(1 << 20, 61, 8, 256, 100 << 20),
            Err(Error::InvalidArgument {
                arg: "max_bytes",
                ..
            })
        ));
        let mut s = SlotStore::new(4, 2, 3, 64, 1 << 20).unwrap();
        assert!(s.record(&[Some(4)], &step(1, 0)).is_err());
        assert!(s.record(&[Some(0), Some(1)], &step(1, 0)).is_err());
    }
}

//! Routed experts kept on the host by KV-cache slot (`block_id * block_size + offset`), so a
//! request whose prompt hits the prefix cache can still return the routing of the cached
//! prefix, which this step never computed.

use std::ops::Range;

use super::assemble::StepRows;
use super::export::{check_ids, MAX_EXPORT_EXPERTS, UNKNOWN};
use crate::alloc;
use crate::error::{ensure, Error, Result};

enum Ids {
    /// Fewer than 255 experts: `u8::MAX` stands for [`UNKNOWN`].
    U8(Vec<u8>),
    /// Up to [`MAX_EXPORT_EXPERTS`] experts: `u16::MAX` stands for [`UNKNOWN`].
    U16(Vec<u16>),
}

/// The shape and memory budget of a [`SlotStore`]. Made with [`SlotStoreConfig::new`]
/// (non-exhaustive: a field added later breaks no caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotStoreConfig {
    /// KV-cache slots (`num_blocks * block_size`; > 0).
    pub num_slots: usize,
    /// MoE layers per row (> 0).
    pub layers: usize,
    /// Experts per layer (> 0).
    pub top_k: usize,
    /// Experts in the model (1..=[`MAX_EXPORT_EXPERTS`]): every id recorded must be below it
    /// or [`UNKNOWN`].
    pub num_experts: u32,
    /// The most host memory the store may take; a larger one is refused.
    pub max_bytes: usize,
}

impl SlotStoreConfig {
    /// `num_slots` KV slots of `layers` x `top_k` ids below `num_experts`, in at most
    /// `max_bytes` of host memory (checked by [`SlotStore::new`]).
    pub fn new(
        num_slots: usize,
        layers: usize,
        top_k: usize,
        num_experts: u32,
        max_bytes: usize,
    ) -> Self {
        SlotStoreConfig {
            num_slots,
            layers,
            top_k,
            num_experts,
            max_bytes,
        }
    }
}

/// Host routing store indexed by KV slot.
///
/// Bounded: the store holds exactly one row per KV slot, sized once (and refused above a
/// memory budget), narrowed to one byte per id when the model has fewer than 255 experts.
/// A slot's routing is unknown until a step that computed it is recorded, and becomes unknown
/// again when its KV block is freed ([`SlotStore::invalidate`]); a lookup of an unknown slot
/// answers `None`, never a made-up row.
///
/// Ordering rule for the serving loop: record a step's rows (after [`CaptureStore::collect`](super::CaptureStore::collect)
/// hands them over) *before* freeing any block that step wrote, and invalidate a block when it
/// is freed. Then a reused block never shows a previous request's routing.
pub struct SlotStore {
    config: SlotStoreConfig,
    /// `layers * top_k`.
    row: usize,
    ids: Ids,
}

impl std::fmt::Debug for SlotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStore")
            .field("config", &self.config)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl SlotStore {
    /// A store for `config`: zero sizes, an expert count the ids cannot carry, sizes that
    /// overflow and stores over `max_bytes` are refused ([`Error::InvalidArgument`]); a store
    /// within the budget that the machine cannot give is [`Error::HostAllocation`] (the
    /// memory is taken fallibly, so a typo in a server's config is an error, not an abort).
    pub fn new(config: SlotStoreConfig) -> Result<SlotStore> {
        let SlotStoreConfig {
            num_slots,
            layers,
            top_k,
            num_experts,
            max_bytes,
        } = config;
        ensure(num_slots > 0, "num_slots", || "must be > 0".into())?;
        ensure(layers > 0, "layers", || "must be > 0".into())?;
        ensure(top_k > 0, "top_k", || "must be > 0".into())?;
        ensure(
            (1..=MAX_EXPORT_EXPERTS).contains(&num_experts),
            "num_experts",
            || format!("must be in 1..={MAX_EXPORT_EXPERTS}, got {num_experts}"),
        )?;
        // One byte per id while every expert id and the UNKNOWN mark fit below u8::MAX.
        let elem = if num_experts < u8::MAX as u32 { 1 } else { 2 };
        let row = layers.checked_mul(top_k);
        let bytes = row
            .and_then(|row| row.checked_mul(num_slots))
            .and_then(|elems| elems.checked_mul(elem));
        let (Some(row), Some(bytes)) = (row, bytes) else {
            return Err(Error::invalid(
                "num_slots",
                format!("{num_slots} slots x {layers} layers x top_k {top_k} overflows"),
            ));
        };
        ensure(bytes <= max_bytes, "max_bytes", || {
            format!("{num_slots} slots x {layers} layers x top_k {top_k} need {bytes} bytes, over the budget of {max_bytes}")
        })?;
        let elems = bytes / elem;
        let ids = if elem == 1 {
            Ids::U8(alloc::filled("slots", elems, u8::MAX)?)
        } else {
            Ids::U16(alloc::filled("slots", elems, u16::MAX)?)
        };
        Ok(SlotStore { config, row, ids })
    }

    /// What this store was built with.
    pub fn config(&self) -> &SlotStoreConfig {
        &self.config
    }

    /// Host memory held.
    pub fn bytes(&self) -> usize {
        match &self.ids {
            Ids::U8(v) => v.len(),
            Ids::U16(v) => v.len() * 2,
        }
    }

    /// Records a collected step: row `r` was computed for KV slot `slots[r]` (`None` for
    /// padding or rows of other ranks). The whole step is checked first (shape, slots below
    /// `num_slots`, ids experts of the model or [`UNKNOWN`]); a refused step changes nothing.
    pub fn record(&mut self, slots: &[Option<usize>], step: &StepRows) -> Result<()> {
        let (row, c) = (self.row, &self.config);
        ensure(
            step.layers == c.layers && step.top_k == c.top_k,
            "step",
            || {
                format!(
                    "has {} layers x top_k {}, the store {} x {}",
                    step.layers, step.top_k, c.layers, c.top_k
                )
            },
        )?;
        ensure(
            slots.len() == step.tokens && step.tokens.checked_mul(row) == Some(step.ids.len()),
            "slots",
            || format!("names {} rows, the step has {}", slots.len(), step.tokens),
        )?;
        if let Some(bad) = slots.iter().flatten().find(|&&s| s >= c.num_slots) {
            return Err(Error::invalid(
                "slots",
                format!("slot {bad} >= num_slots ({})", c.num_slots),
            ));
        }
        check_ids(&step.ids, c.num_experts)?;
        for (r, slot) in slots.iter().enumerate() {
            let Some(slot) = *slot else { continue };
            let src = &step.ids[r * row..(r + 1) * row];
            let dst = slot * row..(slot + 1) * row;
            // UNKNOWN (-1) becomes the type's MAX, which no expert id reaches.
            match &mut self.ids {
                Ids::U8(v) => v[dst].iter_mut().zip(src).for_each(|(d, &s)| *d = s as u8),
                Ids::U16(v) => v[dst].iter_mut().zip(src).for_each(|(d, &s)| *d = s as u16),
            }
        }
        Ok(())
    }

    /// The routing of one slot (`layers * top_k` ids, [`UNKNOWN`] where a recorded row had
    /// it), or `None` when the slot was never recorded, was invalidated, or is out of range.
    pub fn lookup(&self, slot: usize) -> Option<Vec<i16>> {
        if slot >= self.config.num_slots {
            return None;
        }
        let at = slot * self.row..(slot + 1) * self.row;
        let row: Vec<i16> = match &self.ids {
            Ids::U8(v) => v[at]
                .iter()
                .map(|&x| if x == u8::MAX { UNKNOWN } else { x as i16 })
                .collect(),
            Ids::U16(v) => v[at]
                .iter()
                .map(|&x| if x == u16::MAX { UNKNOWN } else { x as i16 })
                .collect(),
        };
        // A row of nothing but UNKNOWN says nothing: the same as never recorded.
        row.iter().any(|&x| x != UNKNOWN).then_some(row)
    }

    /// Forgets the routing of `slots` (a freed or reassigned KV block); the range must lie
    /// in `[0, num_slots]` with `start <= end`.
    pub fn invalidate(&mut self, slots: Range<usize>) -> Result<()> {
        let n = self.config.num_slots;
        ensure(slots.start <= slots.end && slots.end <= n, "slots", || {
            format!("{slots:?} is not a range inside [0, num_slots = {n}]")
        })?;
        let r = slots.start * self.row..slots.end * self.row;
        match &mut self.ids {
            Ids::U8(v) => v[r].fill(u8::MAX),
            Ids::U16(v) => v[r].fill(u16::MAX),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Per-request export of routed experts in the wire formats trainers read:
//! vLLM's base64 `.npy` and SGLang-style flat bytes with a dtype tag.

use base64::Engine as _;

use crate::error::{ensure, Error, Result};

/// Element type of an exported routing array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ExportDtype {
    /// `uint8`: at most 256 experts, no unknown rows.
    U8,
    /// `uint16`: at most 65,536 experts, no unknown rows.
    U16,
    /// `int16`: unknown rows present, marked -1.
    I16,
}

/// Expert id of an unknown row in signed output.
pub const UNKNOWN: i16 = -1;

/// Every id is an expert in `[0, num_experts)` or [`UNKNOWN`]; the first that is not is
/// named. The one rule for ids entering the assembler, the KV-slot store and the exports.
pub(crate) fn check_ids(ids: &[i16], num_experts: u32) -> Result<()> {
    match ids
        .iter()
        .position(|&i| i != UNKNOWN && (i < 0 || i as u32 >= num_experts))
    {
        None => Ok(()),
        Some(at) => Err(Error::invalid(
            "ids",
            format!(
                "id {} at index {at} is neither an expert in [0, {num_experts}) nor UNKNOWN (-1)",
                ids[at]
            ),
        )),
    }
}

impl ExportDtype {
    /// The narrowest type that represents `ids` (`UNKNOWN` marks unknown entries) for a model
    /// with `num_experts` experts.
    pub fn for_rows(ids: &[i16], num_experts: u32) -> ExportDtype {
        if ids.contains(&UNKNOWN) {
            ExportDtype::I16
        } else if num_experts <= 256 {
            ExportDtype::U8
        } else if num_experts <= 65_536 {
            ExportDtype::U16
        } else {
            ExportDtype::I16
        }
    }

    /// numpy's `descr` (little-endian).
    pub fn npy_descr(self) -> &'static str {
        match self {
            ExportDtype::U8 => "|u1",
            ExportDtype::U16 => "<u2",
            ExportDtype::I16 => "<i2",
        }
    }

    /// The dtype tag of the flat-bytes format (numpy names).
    pub fn tag(self) -> &'static str {
        match self {
            ExportDtype::U8 => "uint8",
            ExportDtype::U16 => "uint16",
            ExportDtype::I16 => "int16",
        }
    }

    fn encode(self, ids: &[i16]) -> Vec<u8> {
        match self {
            ExportDtype::U8 => ids.iter().map(|&i| i as u8).collect(),
            ExportDtype::U16 => ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect(),
            ExportDtype::I16 => ids.iter().flat_map(|&i| i.to_le_bytes()).collect(),
        }
    }
}

/// Largest expert count the exports take: ids are `i16` (and `-1` is [`UNKNOWN`]).
pub const MAX_EXPORT_EXPERTS: u32 = i16::MAX as u32 + 1;

/// A request's routed experts, `(tokens, layers, top_k)` token-major, ready to export.
///
/// Built only through [`RoutedExperts::new`] (or an [`Assembler`](super::Assembler)), which
/// checks that every id is an expert of the model or [`UNKNOWN`]: the narrow export types
/// then never truncate an id.
///
/// The element type is chosen per request ([`ExportDtype::for_rows`]): `uint8` when every row
/// is known and the model has at most 256 experts, `uint16` above that (ids are `int16`, so at most
/// 32,768 experts: [`MAX_EXPORT_EXPERTS`]), and `int16`
/// as soon as any row is unknown, with **-1 marking unknown rows** (a row the kernels never
/// wrote, for example a prefix-cache hit whose routing was not kept). A fake expert 0 is never
/// emitted for an unknown row.
///
/// With weights capture, a request also carries each id's fp32 routing weight (NaN for an
/// unknown row), exported as a sibling array of the same shape: a second `.npy` (`<f4`,
/// [`RoutedExperts::to_weights_npy`]) or flat bytes tagged `float32`
/// ([`RoutedExperts::to_flat_weights_base64`]).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RoutedExperts {
    tokens: usize,
    layers: usize,
    top_k: usize,
    ids: Vec<i16>,
    num_experts: u32,
    /// With weights capture: one fp32 weight per id.
    weights: Option<Vec<f32>>,
}

impl RoutedExperts {
    /// `tokens * layers * top_k` ids of a model with `num_experts` experts (at most
    /// [`MAX_EXPORT_EXPERTS`]); each must be in `[0, num_experts)` or [`UNKNOWN`].
    pub fn new(
        tokens: usize,
        layers: usize,
        top_k: usize,
        ids: Vec<i16>,
        num_experts: u32,
    ) -> Result<RoutedExperts> {
        ensure(layers > 0 && top_k > 0, "layers", || {
            format!("layers ({layers}) and top_k ({top_k}) must be > 0")
        })?;
        ensure(
            (1..=MAX_EXPORT_EXPERTS).contains(&num_experts),
            "num_experts",
            || format!("must be in 1..={MAX_EXPORT_EXPERTS}, got {num_experts}"),
        )?;
        let want = tokens
            .checked_mul(layers)
            .and_then(|n| n.checked_mul(top_k));
        ensure(want == Some(ids.len()), "ids", || {
            format!(
                "holds {} ids, not tokens ({tokens}) x layers ({layers}) x top_k ({top_k})",
                ids.len()
            )
        })?;
        check_ids(&ids, num_experts)?;
        Ok(RoutedExperts {
            tokens,
            layers,
            top_k,
            ids,
            num_experts,
            weights: None,
        })
    }

    /// The same rows with each id's routing weight (`weights[i]` of `ids()[i]`; NaN where
    /// unknown): exactly one per id.
    pub fn with_weights(self, weights: Vec<f32>) -> Result<RoutedExperts> {
        ensure(weights.len() == self.ids.len(), "weights", || {
            format!(
                "holds {}, one per id needs {}",
                weights.len(),
                self.ids.len()
            )
        })?;
        Ok(RoutedExperts {
            weights: Some(weights),
            ..self
        })
    }

    /// The routing weights, one per id, when captured.
    pub fn weights(&self) -> Option<&[f32]> {
        self.weights.as_deref()
    }

    /// Tokens (rows).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// MoE layers per row.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Experts per layer.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// `tokens * layers * top_k` ids; [`UNKNOWN`] where unknown.
    pub fn ids(&self) -> &[i16] {
        &self.ids
    }

    /// Experts in the model (decides the narrow dtype).
    pub fn num_experts(&self) -> u32 {
        self.num_experts
    }

    /// The element type this export will use.
    pub fn dtype(&self) -> ExportDtype {
        ExportDtype::for_rows(&self.ids, self.num_experts)
    }

    /// A `.npy` (format 1.0) file of shape `(tokens, layers, top_k)`.
    pub fn to_npy(&self) -> Vec<u8> {
        let dtype = self.dtype();
        self.npy(dtype.npy_descr(), dtype.encode(&self.ids))
    }

    /// The weights' `.npy` (`<f4`, the ids' shape), when captured: the sibling of
    /// [`to_npy`](Self::to_npy).
    pub fn to_weights_npy(&self) -> Option<Vec<u8>> {
        self.weights
            .as_ref()
            .map(|w| self.npy("<f4", w.iter().flat_map(|x| x.to_le_bytes()).collect()))
    }

    /// A `.npy` file of shape `(tokens, layers, top_k)` holding `payload` of type `descr`.
    fn npy(&self, descr: &str, payload: Vec<u8>) -> Vec<u8> {
        let header = format!(
            "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
            self.tokens, self.layers, self.top_k
        );
        // magic(6) + version(2) + header length(2) + header, padded with spaces to a multiple
        // of 64 and ended by a newline, as the format asks.
        let unpadded = 10 + header.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let header_len = header.len() + pad + 1;
        let mut out = Vec::with_capacity(10 + header_len + payload.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(b' ', pad));
        out.push(b'\n');
        out.extend(payload);
        out
    }

    /// vLLM's `routed_experts`: base64 of the `.npy` bytes.
    pub fn to_vllm_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_npy())
    }

    /// SGLang-style: base64 of the flat little-endian elements, and their dtype tag.
    pub fn to_flat_base64(&self) -> (String, &'static str) {
        let dtype = self.dtype();
        (
            base64::engine::general_purpose::STANDARD.encode(dtype.encode(&self.ids)),
            dtype.tag(),
        )
    }

    /// The weights as flat little-endian fp32, base64, tagged `float32` (the second tag of the
    /// flat format), when captured.
    pub fn to_flat_weights_base64(&self) -> Option<(String, &'static str)> {
        self.weights.as_ref().map(|w| {
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                "float32",
            )
        })
    }
}

#[cfg(test)]
mod tests;

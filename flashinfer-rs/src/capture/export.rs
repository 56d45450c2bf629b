//! Per-request export of routed experts in the wire formats trainers read:
//! vLLM's base64 `.npy` and SGLang-style flat bytes with a dtype tag.
//!
//! The element type is chosen per request ([`ExportDtype::for_rows`]): `uint8` when every row
//! is known and the model has at most 256 experts, `uint16` up to 65,536 experts, and `int16`
//! as soon as any row is unknown, with **-1 marking unknown rows** (a row the kernels never
//! wrote, for example a prefix-cache hit whose routing was not kept). A fake expert 0 is never
//! emitted for an unknown row.

use base64::Engine as _;

/// Element type of an exported routing array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A request's routed experts, `(tokens, layers, top_k)` token-major, ready to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedExperts {
    /// Tokens (rows).
    pub tokens: usize,
    /// MoE layers per row.
    pub layers: usize,
    /// Experts per layer.
    pub top_k: usize,
    /// `tokens * layers * top_k` ids; [`UNKNOWN`] where unknown.
    pub ids: Vec<i16>,
    /// Experts in the model (decides the narrow dtype).
    pub num_experts: u32,
}

impl RoutedExperts {
    /// The element type this export will use.
    pub fn dtype(&self) -> ExportDtype {
        ExportDtype::for_rows(&self.ids, self.num_experts)
    }

    /// A `.npy` (format 1.0) file of shape `(tokens, layers, top_k)`.
    pub fn to_npy(&self) -> Vec<u8> {
        let dtype = self.dtype();
        let header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
            dtype.npy_descr(),
            self.tokens,
            self.layers,
            self.top_k
        );
        // magic(6) + version(2) + header length(2) + header, padded with spaces to a multiple
        // of 64 and ended by a newline, as the format asks.
        let unpadded = 10 + header.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let header_len = header.len() + pad + 1;
        let mut out = Vec::with_capacity(10 + header_len + self.ids.len() * 2);
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(b' ', pad));
        out.push(b'\n');
        out.extend(dtype.encode(&self.ids));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ids: Vec<i16>, num_experts: u32) -> RoutedExperts {
        RoutedExperts {
            tokens: 2,
            layers: 3,
            top_k: 2,
            ids,
            num_experts,
        }
    }

    #[test]
    fn dtype_is_the_narrowest_that_holds_the_ids_and_signed_when_rows_are_unknown() {
        let known: Vec<i16> = (0..12).collect();
        assert_eq!(ExportDtype::for_rows(&known, 256), ExportDtype::U8);
        assert_eq!(ExportDtype::for_rows(&known, 257), ExportDtype::U16);
        let mut unknown = known.clone();
        unknown[5] = UNKNOWN;
        assert_eq!(ExportDtype::for_rows(&unknown, 8), ExportDtype::I16);
    }

    #[test]
    fn npy_decodes_with_an_independent_reader_to_the_right_shape_dtype_and_values() {
        for (ids, experts, descr) in [
            ((0..12).map(|i| i * 21).collect::<Vec<i16>>(), 256, "|u1"),
            ((0..12).map(|i| 300 + i).collect::<Vec<i16>>(), 384, "<u2"),
            (
                (0..12)
                    .map(|i| if i == 4 { UNKNOWN } else { i })
                    .collect::<Vec<i16>>(),
                256,
                "<i2",
            ),
        ] {
            let r = sample(ids.clone(), experts);
            let bytes = r.to_npy();
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "data starts 64-byte aligned");
            let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
            assert_eq!(npy.shape(), &[2, 3, 2]);
            assert_eq!(npy.header().dtype().descr().trim_matches('\''), descr);
            let decoded: Vec<i64> = match descr {
                "|u1" => npy
                    .into_vec::<u8>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                "<u2" => npy
                    .into_vec::<u16>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                _ => npy
                    .into_vec::<i16>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            };
            assert_eq!(
                decoded,
                ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn vllm_base64_is_the_npy_and_flat_bytes_carry_their_tag() {
        let r = sample((0..12).collect(), 64);
        let engine = base64::engine::general_purpose::STANDARD;
        assert_eq!(engine.decode(r.to_vllm_base64()).unwrap(), r.to_npy());
        let (b64, tag) = r.to_flat_base64();
        assert_eq!(tag, "uint8");
        assert_eq!(engine.decode(b64).unwrap(), (0u8..12).collect::<Vec<_>>());
        let r = sample(
            (0..12).map(|i| if i == 0 { UNKNOWN } else { i }).collect(),
            64,
        );
        let (b64, tag) = r.to_flat_base64();
        assert_eq!(tag, "int16");
        let bytes = engine.decode(b64).unwrap();
        assert_eq!(i16::from_le_bytes([bytes[0], bytes[1]]), -1);
        assert_eq!(bytes.len(), 24);
    }
}

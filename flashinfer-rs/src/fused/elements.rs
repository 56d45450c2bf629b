//! Element types of the quantised fused MoE that `half` does not have, as byte newtypes a
//! `CudaSlice` can hold, so a call's signature says which bytes it expects.
//!
//! Host conversions are exact where the format allows and round to nearest-even otherwise;
//! they are what the CPU reference MoE ([`super::oracle`]) and test data use.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// One fp8 e4m3fn value (bias 7, no infinities, 0x7f/0xff are NaN, max 448).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct E4m3(pub u8);

/// Two fp4 e2m1 values in one byte: the element with the lower index in the low nibble.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct E2m1x2(pub u8);

/// One ue8m0 block scale: the power of two `2^(bits - 127)` (MX formats).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ue8m0(pub u8);

// SAFETY: each is a transparent u8; every bit pattern (including zero) is a valid value.
unsafe impl DeviceRepr for E4m3 {}
unsafe impl ValidAsZeroBits for E4m3 {}
unsafe impl DeviceRepr for E2m1x2 {}
unsafe impl ValidAsZeroBits for E2m1x2 {}
unsafe impl DeviceRepr for Ue8m0 {}
unsafe impl ValidAsZeroBits for Ue8m0 {}

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest e2m1 value.
pub const E2M1_MAX: f32 = 6.0;

/// The eight non-negative e2m1 values, by code.
const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// The smallest normal e4m3fn magnitude, `2^-6`; below it the codes are multiples of `2^-9`.
const E4M3_MIN_NORMAL: f32 = 0.015625;

impl E4m3 {
    /// The value this byte encodes.
    pub fn to_f32(self) -> f32 {
        let b = u32::from(self.0);
        let (exp, man) = ((b >> 3) & 0xf, b & 0x7);
        if exp == 0xf && man == 0x7 {
            return f32::NAN;
        }
        let magnitude = if exp == 0 {
            man as f32 / 512.0
        } else {
            // (1 + man / 8) * 2^(exp - 7): f32's biased exponent is exp - 7 + 127.
            f32::from_bits(((exp + 120) << 23) | (man << 20))
        };
        f32::from_bits(magnitude.to_bits() | ((b & 0x80) << 24))
    }

    /// Nearest e4m3fn (ties to even), saturating to ±448 as PyTorch's cast does not but
    /// every quantiser in practice wants; NaN stays NaN. Bit arithmetic, a few instructions a
    /// value: checkpoints' experts are tens of billions of them.
    pub fn from_f32(x: f32) -> E4m3 {
        if x.is_nan() {
            return E4m3(0x7f);
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs().min(E4M3_MAX);
        let code = if a < E4M3_MIN_NORMAL {
            // Subnormal codes 0..=7 are multiples of 2^-9, exact in f32 times 512; 8 is 2^-6,
            // the first normal code.
            (a * 512.0).round_ties_even() as u8
        } else {
            // f32's exponent and top 3 mantissa bits, rounded to nearest even on the 20 bits
            // below (a carry moves into the exponent); the exponent rebiased from 127 to 7.
            // a <= 448, which is a code, so no rounding passes it.
            let bits = a.to_bits();
            let rounded = bits + 0x7_ffff + ((bits >> 20) & 1);
            ((rounded >> 20) - (120 << 3)) as u8
        };
        E4m3(sign | code)
    }
}

/// The value of a 4-bit e2m1 code.
pub fn e2m1_to_f32(code: u8) -> f32 {
    let v = E2M1_VALUES[(code & 0x7) as usize];
    if code & 0x8 != 0 {
        -v
    } else {
        v
    }
}

/// Nearest e2m1 code of `x` (ties to even code), saturating to ±6.
pub fn e2m1_from_f32(x: f32) -> u8 {
    let a = x.abs().min(E2M1_MAX);
    let mut best = 0u8;
    let mut best_err = f32::INFINITY;
    for (code, v) in E2M1_VALUES.iter().enumerate() {
        let err = (v - a).abs();
        if err < best_err || (err == best_err && code % 2 == 0) {
            best = code as u8;
            best_err = err;
        }
    }
    if x.is_sign_negative() && best != 0 {
        best | 0x8
    } else {
        best
    }
}

impl E2m1x2 {
    /// Packs two e2m1 codes (`first` goes to the low nibble).
    pub fn pack(first: u8, second: u8) -> E2m1x2 {
        E2m1x2((first & 0xf) | ((second & 0xf) << 4))
    }
    /// The two values, lower index first.
    pub fn to_f32(self) -> [f32; 2] {
        [e2m1_to_f32(self.0 & 0xf), e2m1_to_f32(self.0 >> 4)]
    }
}

impl Ue8m0 {
    /// `2^(bits - 127)`; 0xff is NaN.
    pub fn to_f32(self) -> f32 {
        if self.0 == 0xff {
            f32::NAN
        } else {
            2f32.powi(self.0 as i32 - 127)
        }
    }
    /// The smallest power of two `>= x` (x > 0), as MX quantisers choose block scales.
    pub fn ceil_from_f32(x: f32) -> Ue8m0 {
        if x.is_nan() || x <= 0.0 {
            return Ue8m0(0);
        }
        let e = x.log2().ceil() as i32;
        Ue8m0((e + 127).clamp(0, 254) as u8)
    }
}

/// The `float8` crate's e4m3fn (what candle's fp8 tensors hold) and this crate's [`E4m3`]: the
/// same encoding, byte for byte (feature `float8`).
#[cfg(feature = "float8")]
mod float8_interop {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::E4m3;

    impl From<float8::F8E4M3> for E4m3 {
        fn from(x: float8::F8E4M3) -> E4m3 {
            E4m3(x.to_bits())
        }
    }

    impl From<E4m3> for float8::F8E4M3 {
        fn from(x: E4m3) -> float8::F8E4M3 {
            float8::F8E4M3::from_bits(x.0)
        }
    }

    /// Host `float8` values as [`E4m3`], no copy.
    pub fn as_e4m3(values: &[float8::F8E4M3]) -> &[E4m3] {
        // SAFETY: both are `repr(transparent)` over one u8 with the same encoding, and every
        // bit pattern is a valid value of both: same size, alignment and validity.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<E4m3>(), values.len()) }
    }

    /// Device memory of `float8` values (e.g. a candle fp8 tensor's) as [`E4m3`], no copy.
    pub fn e4m3_view<'a>(view: &'a CudaView<'_, float8::F8E4M3>) -> CudaView<'a, E4m3> {
        // SAFETY: the same bytes read as the same encoding (see `as_e4m3`). `transmute`
        // answers None only when the new view would be longer than the memory, and it has
        // exactly as many one-byte elements.
        match unsafe { view.transmute::<E4m3>(view.len()) } {
            Some(v) => v,
            None => unreachable!("a view of as many one-byte elements fits its memory"),
        }
    }

    /// Writable device memory of `float8` values as [`E4m3`], no copy.
    pub fn e4m3_view_mut<'a>(
        view: &'a mut CudaViewMut<'_, float8::F8E4M3>,
    ) -> CudaViewMut<'a, E4m3> {
        let len = view.len();
        // SAFETY: as for `e4m3_view`; writes of E4m3 bytes are valid float8 values.
        match unsafe { view.transmute_mut::<E4m3>(len) } {
            Some(v) => v,
            None => unreachable!("a view of as many one-byte elements fits its memory"),
        }
    }
}

#[cfg(feature = "float8")]
pub use float8_interop::{as_e4m3, e4m3_view, e4m3_view_mut};

#[cfg(test)]
mod tests;

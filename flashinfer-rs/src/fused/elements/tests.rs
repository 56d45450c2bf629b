use super::*;

#[test]
fn e4m3_round_trips_every_finite_code() {
    for code in 0u8..=0xff {
        let v = E4m3(code).to_f32();
        if v.is_nan() {
            assert!(code & 0x7f == 0x7f, "{code:#x}");
            continue;
        }
        let back = E4m3::from_f32(v);
        // +0 and -0 both come back as themselves.
        assert_eq!(back.0, code, "{code:#x} = {v}");
    }
    assert_eq!(E4m3(0x7e).to_f32(), 448.0);
    assert_eq!(E4m3(0x01).to_f32(), 2f32.powi(-9));
    assert_eq!(E4m3::from_f32(1000.0).to_f32(), 448.0);
    assert_eq!(E4m3::from_f32(-1000.0).to_f32(), -448.0);
    // 1.0625 lies halfway between 1.0 (even code 0x38) and 1.125 (0x39).
    assert_eq!(E4m3::from_f32(1.0625).0, 0x38);
}

/// The nearest code by search over the 127 non-negative finite codes (ties to the even one):
/// the definition `from_f32`'s bit arithmetic must equal.
fn nearest_by_search(x: f32) -> E4m3 {
    if x.is_nan() {
        return E4m3(0x7f);
    }
    let a = x.abs().min(E4M3_MAX);
    let mut best = 0u8;
    let mut best_err = f32::INFINITY;
    for code in 0u8..=0x7e {
        let err = (E4m3(code).to_f32() - a).abs();
        if err < best_err || (err == best_err && code % 2 == 0) {
            best = code;
            best_err = err;
        }
    }
    E4m3(if x.is_sign_negative() { 0x80 } else { 0 } | best)
}

/// `from_f32` equals the nearest-code search on every value near a rounding decision (each
/// code, each midpoint between neighbours and the f32 values either side of both), on every
/// bf16 value, on magnitudes across f32's range, and on a million pseudo-random values.
#[test]
fn e4m3_from_f32_is_the_nearest_code() {
    let check = |x: f32| {
        assert_eq!(
            E4m3::from_f32(x),
            nearest_by_search(x),
            "{x:e} ({:#x})",
            x.to_bits()
        );
    };
    let near = |v: f32| {
        let b = v.to_bits();
        [b.wrapping_sub(2), b.wrapping_sub(1), b, b + 1, b + 2].map(f32::from_bits)
    };
    for code in 0u8..=0x7e {
        let v = E4m3(code).to_f32();
        let next = if code < 0x7e {
            E4m3(code + 1).to_f32()
        } else {
            464.0
        };
        for x in near(v).into_iter().chain(near((v + next) / 2.0)) {
            check(x);
            check(-x);
        }
    }
    for b in 0u16..=u16::MAX {
        check(f32::from_bits(u32::from(b) << 16));
    }
    for e in -149..=127 {
        for m in [1.0f32, 1.3, 1.5, 1.999] {
            check(m * 2f32.powi(e));
        }
    }
    let mut rng = crate::routing::oracle::SplitMix64(29);
    for _ in 0..1_000_000 {
        let x = (rng.unit() as f32 * 2.0 - 1.0) * 2f32.powi((rng.unit() * 40.0) as i32 - 20);
        check(x);
    }
    for x in [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
    ] {
        check(x);
    }
}

#[test]
fn e2m1_codes_and_packing() {
    for code in 0u8..16 {
        let v = e2m1_to_f32(code);
        let back = e2m1_from_f32(v);
        // -0 (code 8) comes back as +0.
        assert_eq!(back, if code == 8 { 0 } else { code }, "{code}");
    }
    assert_eq!(e2m1_from_f32(2.5), 4); // halfway 2.0 (code 4) / 3.0 (code 5): even
    assert_eq!(e2m1_from_f32(100.0), 7);
    let p = E2m1x2::pack(0x2, 0xf);
    assert_eq!(p.0, 0xf2);
    assert_eq!(p.to_f32(), [1.0, -6.0]);
}

#[test]
fn ue8m0_scales() {
    assert_eq!(Ue8m0(127).to_f32(), 1.0);
    assert_eq!(Ue8m0(130).to_f32(), 8.0);
    assert_eq!(Ue8m0::ceil_from_f32(5.0), Ue8m0(130));
    assert_eq!(Ue8m0::ceil_from_f32(4.0), Ue8m0(129));
    assert!(Ue8m0(0xff).to_f32().is_nan());
}

/// Every e4m3fn byte means the same value here and in the `float8` crate (candle's fp8), and
/// converts to the same byte both ways.
#[cfg(feature = "float8")]
#[test]
fn e4m3_is_float8s_e4m3fn_byte_for_byte() {
    for b in 0..=255u8 {
        let ours = E4m3(b);
        let theirs = float8::F8E4M3::from_bits(b);
        let (a, t) = (ours.to_f32(), theirs.to_f32());
        assert!(a == t || (a.is_nan() && t.is_nan()), "{b:#04x}: {a} vs {t}");
        assert_eq!(E4m3::from(theirs), ours);
        assert_eq!(float8::F8E4M3::from(ours).to_bits(), b);
    }
    let host = [
        float8::F8E4M3::from_bits(0x38),
        float8::F8E4M3::from_bits(0xb8),
    ];
    assert_eq!(super::as_e4m3(&host), &[E4m3(0x38), E4m3(0xb8)]);
}

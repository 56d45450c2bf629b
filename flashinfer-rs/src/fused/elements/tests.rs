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

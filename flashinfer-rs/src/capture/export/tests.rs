use super::*;

fn sample(ids: Vec<i16>, num_experts: u32) -> RoutedExperts {
    RoutedExperts::new(2, 3, 2, ids, num_experts).unwrap()
}

#[test]
fn ids_outside_the_model_are_refused_and_unknown_survives() {
    let mut ids: Vec<i16> = (0..12).collect();
    ids[3] = 300;
    let e = RoutedExperts::new(2, 3, 2, ids.clone(), 256).unwrap_err();
    assert!(e.to_string().contains("id 300 at index 3"), "{e}");
    ids[3] = -2;
    assert!(RoutedExperts::new(2, 3, 2, ids.clone(), 256).is_err());
    ids[3] = UNKNOWN;
    let r = RoutedExperts::new(2, 3, 2, ids, 256).unwrap();
    assert_eq!(
        r.dtype(),
        ExportDtype::I16,
        "-1 is exported signed, never as 255"
    );
    for (tokens, layers, top_k, n, experts) in [
        (2, 0, 2, 0, 64),
        (2, 3, 0, 0, 64),
        (2, 3, 2, 11, 64),
        (usize::MAX, 3, 2, 12, 64),
        (2, 3, 2, 12, 0),
        (2, 3, 2, 12, MAX_EXPORT_EXPERTS + 1),
    ] {
        assert!(
            RoutedExperts::new(tokens, layers, top_k, vec![0; n], experts).is_err(),
            "{tokens} x {layers} x {top_k}, {n} ids, {experts} experts"
        );
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

#[test]
fn weights_export_as_a_sibling_npy_and_a_float32_flat_array() {
    let r = RoutedExperts::new(1, 1, 2, vec![3, 1], 8).unwrap();
    assert!(r.to_weights_npy().is_none() && r.to_flat_weights_base64().is_none());
    assert!(r.clone().with_weights(vec![0.5]).is_err());
    let r = r.with_weights(vec![0.75, 0.25]).unwrap();
    let npy = r.to_weights_npy().unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (1, 1, 2)"));
    assert_eq!((10 + header_len) % 64, 0);
    let body = &npy[10 + header_len..];
    assert_eq!(
        body,
        [0.75f32.to_le_bytes(), 0.25f32.to_le_bytes()].concat()
    );
    let (b64, tag) = r.to_flat_weights_base64().unwrap();
    assert_eq!(tag, "float32");
    let flat = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(flat, body);
    // The ids' own exports are unchanged by the weights.
    assert_eq!(
        r.to_npy(),
        RoutedExperts::new(1, 1, 2, vec![3, 1], 8).unwrap().to_npy()
    );
}

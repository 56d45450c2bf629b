//! See tests/candle_tensor.rs.

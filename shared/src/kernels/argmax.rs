//! Index of the largest element; the first one on ties (as numpy and TFLite do).

/// `None` for an empty slice.
pub fn argmax_s8(values: &[i8]) -> Option<usize> {
    let mut best: Option<(usize, i8)> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}
